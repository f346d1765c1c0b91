"""End to end on a tiny random model and tiny data: every stage, the table and the plots;
a rerun does no work, and one more tau does only the missing work."""
from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import pytest

from configs import tiny
from se_jax.pipeline import experiment as ex
from se_jax.pipeline import report
from se_jax.pipeline.layout import Layout
from se_jax.pipeline.plan import Run
from se_jax.config.schema import RunConfig


def write_tiny_data(root: Path, extra: int = 0) -> Path:
    """NQ-open-like and EntityQuestions-like files, in the shared data layout; `extra` more
    made-up questions in each (larger workloads: benchmarks/bench_processes.py)."""
    nq = root / "nq_open" / "NQ-open.dev.jsonl"
    nq.parent.mkdir(parents=True, exist_ok=True)
    capitals = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"),
                ("Germany", "Berlin"), ("Japan", "Tokyo"), ("Egypt", "Cairo"),
                ("Peru", "Lima"), ("Chile", "Santiago"), ("Kenya", "Nairobi"),
                ("Canada", "Ottawa"), ("Norway", "Oslo"), ("Poland", "Warsaw"),
                ("Greece", "Athens"), ("Cuba", "Havana"), ("Iran", "Tehran"),
                ("Iraq", "Baghdad"), ("Nepal", "Kathmandu"), ("Mali", "Bamako")]
    capitals += [(f"Country {i}", f"City {i}") for i in range(extra)]
    nq.write_text("".join(json.dumps({"question": f"what is the capital of {c}",
                                      "answer": [a]}) + "\n" for c, a in capitals))
    eq = root / "entity_questions" / "test" / "P50.test.json"
    eq.parent.mkdir(parents=True, exist_ok=True)
    eq.write_text(json.dumps([{"question": f"Who is the author of Book {i}?",
                               "answers": [f"Author {i}"]} for i in range(6 + extra)]))
    return root


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    from tiny_models import write_tiny_llama_dir
    root = tmp_path_factory.mktemp("e2e")
    model_dir = write_tiny_llama_dir(root / "model")
    return model_dir, write_tiny_data(root / "data"), root


def tiny_config(model_dir: str, data_dir: Path, workdir: Path):
    config = tiny.get_config()
    config.model.path = str(model_dir)
    config.data.source_dir = str(data_dir)
    config.workdir = str(workdir)
    config.mesh.num_devices = 1
    return config


METHODS = ("se_lexical", "rtuning", "rtuning_u")   # idk comes later


@pytest.fixture(scope="module")
def first_run(tiny_setup):
    """The experiment run once in this process: (config, result, seconds)."""
    model_dir, data_dir, root = tiny_setup
    config = tiny_config(model_dir, data_dir, root / "run")
    config.experiment.methods = METHODS
    # The report's compile counts are this run's: programs another test of this process
    # compiled for the same tiny shapes (tests/test_sweep_engine.py) must not be reused.
    jax.clear_caches()
    start = time.perf_counter()
    result = ex.run(RunConfig.from_configdict(config))
    seconds = time.perf_counter() - start
    return config, result, seconds


def test_experiment_end_to_end(tiny_setup, first_run):
    model_dir, data_dir, root = tiny_setup
    workdir = root / "run"
    config, result, first = first_run
    out = Path(result.paths["report"]).parent
    methods = ("original", "se_lexical", "rtuning", "rtuning_u", "se_lexical+attention_only",
               "all_abstain", "oracle")   # the last two: reference policies from the original
    # report.md: the AED table with every method and split, the judge, the analyses.
    text = (out / "report.md").read_text()
    for label in ("Original model", "SE (lexical)", "R-Tuning", "R-Tuning-U",
                  "SE (lexical) + attention-only"):
        assert f"| {label} |" in text
    assert "AED test" in text and "AED ood_entity_questions_ood" in text
    assert "f1>=0.5" in text and "AUROC" in text and "SliCK category breakdown" in text
    # The phase table: one load of the base model for the whole sweep.
    assert "Where the time went" in text and "Model loads: 1." in text
    # One decode program per shape (the SE sample set; every evaluation batch): the
    # original, the LoRA runs and the attention-only arm share the evaluation's.
    assert "| `jit(_decode)` | 2 |" in text
    # results.csv: one row per method x split x seed, the contract's columns.
    rows = report.read_results_csv(out / "results.csv")
    assert list(rows[0]) == list(report.RESULT_FIELDS)
    assert sorted((r["method"], r["split"]) for r in rows) == sorted(
        (m, s) for m in methods for s in ("test", "ood_entity_questions_ood"))
    for r in rows:
        n, c, i, a = (int(r[k]) for k in ("n", "correct", "incorrect", "abstained"))
        assert n == 4 and c + i + a == n
        assert float(r["aed"]) == pytest.approx(((i ** 2 + (n - c) ** 2) / (2 * n * n)) ** .5,
                                                abs=1e-3)
    # The sweep on validation, and the picked taus.
    sweep = report.read_results_csv(out / "sweep.csv")
    assert {(r["method"], r["tau"]) for r in sweep} == {
        ("original", ""), ("se_lexical", "1.000"), ("rtuning_u", "1.000"), ("rtuning", ""),
        ("se_lexical+attention_only", "1.000")}
    assert result.picked == {"se_lexical": 1.0, "rtuning_u": 1.0, "rtuning": None}
    # Plots are real PNGs.
    for name in ("adaptation.png", "aed.png", "entropy_hist.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    # Every stage left its artifacts and done marker; the arm trained attention only.
    layout = Layout.from_config(RunConfig.from_configdict(config))
    arm = Run("se_lexical", 1.0, 0, "attention_only")
    for path in (layout.sample("train"), layout.sample("test"),
                 layout.entropy("lexical", "train"), layout.label(arm), layout.train(arm)):
        assert (path / "done.json").exists() and (path / "config.json").exists()
    arm_config = json.loads((layout.train(arm) / "config.json").read_text())
    assert arm_config["training"]["mode"] == "attention"

    # A rerun finds everything done: nothing runs again, no model is loaded.
    marker = layout.train(Run("rtuning", None, 0)) / "done.json"
    stamp = marker.stat().st_mtime_ns
    start = time.perf_counter()
    again = ex.run(RunConfig.from_configdict(config))
    assert time.perf_counter() - start < first / 3
    assert marker.stat().st_mtime_ns == stamp
    assert again.table == result.table

    # One more method: only its label/train/evaluate directories are new.
    before = {p for p in workdir.rglob("done.json")}
    stamps = {p: p.stat().st_mtime_ns for p in before}
    config.experiment.methods = ("se_lexical", "rtuning", "rtuning_u", "idk")
    more = ex.run(RunConfig.from_configdict(config))
    new = {p.parent.relative_to(workdir) for p in workdir.rglob("done.json")} - {
        p.parent.relative_to(workdir) for p in before}
    assert new == {Path("label/idk"), Path("train/idk/seed_0")}
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert {r["method"] for r in more.results} == set(methods) | {"idk"}
