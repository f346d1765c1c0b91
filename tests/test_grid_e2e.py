"""The paper's grid in miniature on a tiny random Llama: three training sets (NQ-open,
BioASQ, and Mult = both) in their native formats (the local NQ-open / EntityQuestions
fixtures of test_experiment_e2e.py, a crafted BioASQ Task B JSON), Long-QA and Short-QA,
SE and R-Tuning under the paper protocol with 2 taus and 2 seeds. Table 1 has every cell
filled, the run count is what the protocol predicts, a partly done grid says what is
missing, and a rerun after losing work redoes only that work and writes the same Table 1."""
from __future__ import annotations

import shutil
from pathlib import Path

import jax

from bioasq_fixture import write_bioasq
from configs import tiny
from se_jax.config.schema import RunConfig
from se_jax.pipeline import experiment, grid
from se_jax.pipeline.layout import DONE
from se_jax.pipeline.plan import Sweep
from test_experiment_e2e import write_tiny_data

SETS = [("nq_open", "nq_open", ("bioasq", "entity_questions_ood")),
        ("bioasq", "bioasq", ("nq_open", "entity_questions_ood")),
        ("mult", ("nq_open", "bioasq"), ("entity_questions_ood",))]


def _points(model_dir, data_dir, root) -> list[grid.Point]:
    points = []
    for name, ind, ood in SETS:
        c = tiny.get_config()
        c.model.path, c.data.source_dir = str(model_dir), str(data_dir)
        c.workdir = str(root / name)
        c.mesh.num_devices = 1
        c.data.in_distribution, c.data.out_of_distribution = ind, ood
        c.data.train_size, c.data.val_size, c.data.test_size, c.data.ood_size = 4, 2, 2, 2
        c.sampling.num_samples, c.sampling.max_new_tokens = 3, 4
        c.evaluation.max_new_tokens, c.evaluation.bootstrap_samples = 3, 10
        ex = c.experiment
        ex.methods, ex.taus, ex.seeds = ("se_lexical", "rtuning"), (0.5, 1.0), (0, 1)
        ex.arms, ex.slick_breakdown = (), False
        ex.settings, ex.protocol = ("sentence", "short"), "paper"
        c.training.batch_size = 4
        points.append(grid.Point(name, RunConfig.from_configdict(c)))
    return points


def _done_files(points):
    return {str(f): f.stat().st_mtime_ns for pt in points
            for f in Path(pt.config.workdir).glob(f"*/train/**/{DONE}")}


def test_grid_in_miniature(tmp_path):
    from tiny_models import write_tiny_llama_dir
    model_dir = write_tiny_llama_dir(tmp_path / "model")
    data_dir = write_bioasq(write_tiny_data(tmp_path / "data"))
    points = _points(model_dir, data_dir, tmp_path / "grid")
    jax.clear_caches()
    experiment.run_grid([p.config for p in points])
    out = grid.write_grid_report(points, tmp_path / "grid" / "report")
    text = out.read_text()
    # Table 1: four rows (Long-/Short-QA x in-/out-of-distribution), every cell filled.
    cells = grid.table1_cells(points)
    assert list(cells) == [(s, part) for s in ("Long-QA", "Short-QA")
                           for part in ("In-Distribution", "Out-of-Distribution")]
    for row in cells.values():
        assert set(row) >= {"original", "se_lexical", "rtuning"}
    rows = [line for line in text.splitlines() if line.startswith(("| Long-QA", "| Short-QA"))]
    assert len(rows) == 4
    for line in rows:   # every cell filled; SE and R-Tuning carry a std over 2 seeds
        row_cells = [c.strip() for c in line.strip("|").split("|")]
        assert all(row_cells) and "—" not in row_cells and line.count("±") >= 2, line
    assert "Mult (nq_open + bioasq)" in text and "paper (Best-Threshold" in text
    assert (out.parent / "adaptation_short.png").read_bytes()[:4] == b"\x89PNG"
    # Run count: per setting 1 method with tau x (2 taus + 1 more seed) + 1 without x 2.
    sweep = Sweep.from_config(points[0].config)
    assert sweep.num_trainings == 5
    for p in points:
        for style, st in grid.status(p).items():
            assert st == dict(report=True, runs_done=5, runs_planned=5), (p.name, style)
    assert "Every training set and setting is reported." in text

    # Lose work as a kill would: one setting's report and a final run at seed 1.
    before = _done_files(points)
    lost = points[1].layout("sentence")
    shutil.rmtree(lost.report_dir)
    victim = next(lost.root.glob("train/rtuning/seed_1"))
    shutil.rmtree(victim)
    for d in lost.root.glob("evaluate/*/rtuning/seed_1"):
        shutil.rmtree(d)
    partial = grid.write_grid_report(points, tmp_path / "partial").read_text()
    assert "Missing: bioasq Long-QA" in partial and "| bioasq | Long-QA | missing | 4 / 5 |" in partial

    experiment.run_grid([p.config for p in points])
    again = grid.write_grid_report(points, tmp_path / "grid" / "report").read_text()
    after = _done_files(points)
    redone = {k for k in after if after[k] != before.get(k)}
    assert redone == {str(victim / DONE)}          # only the lost run trained again
    assert again.split("## What is done")[0] == text.split("## What is done")[0]
    assert grid.table1_cells(points) == cells
