"""The evaluate stage run as 2 local JAX processes (launch/multihost.py, gloo) writes the
same artifacts as 1 process: each process answers its share of the shards, process 0
merges them."""
from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deberta_fixtures import tiny_nli_dirs  # noqa: F401  (fixture)
from test_experiment_e2e import write_tiny_data
from tools import multihost_log

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory):
    from tiny_models import make_tiny_llama_dir
    root = tmp_path_factory.mktemp("multiprocess")
    return make_tiny_llama_dir(root / "model", variant="llama"), write_tiny_data(root / "data")


def _stage_command(model_dir, data_dir, workdir: Path) -> list[str]:
    return [sys.executable, str(REPO / "launch" / "stage.py"), "--config=configs/tiny.py",
            f"--config.model.path={model_dir}", f"--config.data.source_dir={data_dir}",
            f"--config.workdir={workdir}", "--config.evaluation.batch_size=1",
            "--stage=evaluate", "--method=original", "--split=test"]


def _run(cmd: list[str], devices: int | None = None) -> str:
    env = dict(os.environ)
    if devices is not None:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


def test_two_processes_write_the_same_artifacts_as_one(tiny_inputs, tmp_path):
    model_dir, data_dir = tiny_inputs
    one, two = tmp_path / "one", tmp_path / "two"
    _run(_stage_command(model_dir, data_dir, one), devices=1)
    log = _run([sys.executable, str(REPO / "launch" / "multihost.py"), "--num_processes=2",
                "--local_devices=1", "--", *_stage_command(model_dir, data_dir, two)])
    # The 4 shards (one question each) were split between the processes.
    assert "process 0 answered 2 of 4 shards" in log
    assert "process 1 answered 2 of 4 shards" in log
    rel = Path("evaluate") / "f1_0.5" / "original" / "test"
    for name in ("outcomes.jsonl", "metrics.json", "config.json"):
        a, b = (one / rel / name).read_text(), (two / rel / name).read_text()
        assert a == b, name
    assert len((one / rel / "outcomes.jsonl").read_text().splitlines()) == 4
    for split in ("train", "val", "test", "ood_entity_questions_ood"):
        assert (one / "data" / f"{split}.jsonl").read_text() == \
            (two / "data" / f"{split}.jsonl").read_text()
    assert not (two / rel / "outcomes.parts").exists()


def test_two_processes_prepare_splits_sample_and_entropy_work_once(tiny_inputs, tmp_path):
    """Issue 37: `--stage=prepare` (splits, samples and entropies of train and val, the
    original model on val and test) as 2 local processes, each on its own device, gives the
    1-process files byte for byte (same keys, same batches: the sampling guarantee's
    equal case), every sample / entropy shard is computed by exactly one process, and each
    output is merged once (no shard files left)."""
    model_dir, data_dir = tiny_inputs
    one, two = tmp_path / "one", tmp_path / "two"

    def command(workdir):
        cmd = _stage_command(model_dir, data_dir, workdir)[:-3] + ["--stage=prepare"]
        return cmd + ["--config.sampling.batch_size=2", "--config.entropy.questions_per_shard=2"]
    _run(command(one), devices=1)
    log = _run([sys.executable, str(REPO / "launch" / "multihost.py"), "--num_processes=2",
                "--local_devices=1", "--", *command(two)])
    for stage in ("sample", "entropy"):
        found = re.findall(rf"\[p(\d)\].*{stage}: process (\d) computed shards \[([\d, ]*)\] "
                           rf"of (\d+) in (\S+)", log)
        per_dir: dict[str, list] = {}
        for prefix, pid, shards, total, where in found:
            assert prefix == pid
            per_dir.setdefault(where, []).append(
                (int(pid), [int(s) for s in shards.split(",") if s.strip()], int(total)))
        assert per_dir, (stage, log[-3000:])
        for where, computed in per_dir.items():
            # Both processes report once per directory; their shards partition its shards.
            assert sorted(pid for pid, _, _ in computed) == [0, 1], (where, computed)
            merged = sorted(i for _, s, _ in computed for i in s)
            assert merged == list(range(computed[0][2])), (where, computed)
    for rel in ("sample/train/generations.jsonl", "sample/val/generations.jsonl",
                "entropy/lexical/train/uncertainty.jsonl", "entropy/lexical/val/uncertainty.jsonl",
                "evaluate/f1_0.5/original/test/outcomes.jsonl"):
        assert (one / rel).read_text() == (two / rel).read_text(), rel
    assert not list(two.rglob("*.parts/*"))


def test_two_processes_run_the_whole_tiny_experiment_as_one(tiny_inputs, tiny_nli_dirs,  # noqa: F811
                                                           tmp_path):
    """Issue 37: the whole tiny experiment (configs/tiny.py) with DeBERTa (a tiny random NLI
    checkpoint) and LLM-judge (the generator) entropies, and a separate LLM correctness
    judge in its own stage (a tiny judge on a mesh over both processes), as 2 local
    processes each on its own device: every output a result depends on (generations,
    uncertainties, SFT sets, adapters, answers, outcomes, the judge's verdicts, metrics,
    results.csv, sweep.csv) is byte-identical to a 1-process run; each sample / entropy / evaluate shard is computed by one process; each
    fine-tuning run is trained, saved (Orbax's single-process mode: the arrays live on each
    process's own devices) and evaluated by one process, and both processes get runs."""
    from tiny_models import write_tiny_judge_dir
    model_dir, data_dir = tiny_inputs
    one, two = tmp_path / "one", tmp_path / "two"
    judge = write_tiny_judge_dir(tmp_path / "judge", seed=3)

    def command(workdir):
        return [sys.executable, str(REPO / "launch" / "experiment.py"), "--config=configs/tiny.py",
                f"--config.model.path={model_dir}", f"--config.data.source_dir={data_dir}",
                f"--config.workdir={workdir}", f"--config.entropy.nli_path={tiny_nli_dirs['v1']}",
                "--config.entropy.judge_shots=1",   # the prompt fits the tiny model's 256
                "--config.evaluation.judge=llm", f"--config.evaluation.judge_model={judge}",
                "--config.experiment.methods=('se_deberta','se_llm_judge','rtuning_u')"]
    _run(command(one), devices=1)
    log = _run([sys.executable, str(REPO / "launch" / "multihost.py"), "--num_processes=2",
                "--local_devices=1", "--", *command(two)])
    owners = multihost_log.parse(log)
    assert owners.problems() == [], owners.problems()
    assert {stage for stage, _ in owners.shards} == {"sample", "entropy"}
    assert {where.split("/entropy/")[1].split("/")[0] for stage, where in owners.shards
            if stage == "entropy"} == {"deberta", "llm_judge"}
    counts = owners.per_process()
    assert sorted(counts) == [0, 1] and all(c.get("runs") for c in counts.values()), counts
    assert {p for saved in owners.saves.values() for p in saved} == {0, 1}
    steps = [d for d in two.glob("train/**/checkpoints/*") if d.name.isdigit()]
    assert len(steps) >= len(owners.saves)   # each run's last one (twins: linked copies)
    assert all((d / "index.json").is_file() and (d / "arrays.npz").is_file() for d in steps)
    compared = 0
    for path in sorted(one.rglob("*")):
        rel = path.relative_to(one)
        if path.is_file() and (path.suffix in (".jsonl", ".csv", ".safetensors")
                               or path.name == "metrics.json"):
            assert (two / rel).read_bytes() == path.read_bytes(), rel
            compared += 1
    assert compared > 40
    assert not list(two.rglob("*.parts/*"))
    verdicts = [json.loads(line)["correct"] for line in
                next(two.glob("evaluate/*/verdicts.jsonl")).read_text().splitlines()]
    assert True in verdicts and False in verdicts   # the judge's verdicts vary
    # Both processes held the judge, in one stage per step (original, sweep, final + report).
    loads = re.findall(rf"\[p(\d)\].*loaded {re.escape(judge)} ", log)
    assert collections.Counter(loads) == {"0": 3, "1": 3}, loads


def test_two_processes_run_the_probe_methods_as_one(tiny_inputs, tmp_path):
    """The probe methods (sep_flow: the SE subset, the low-temperature-only sample, the
    probe stage on process 0, the probe's labels) as 2 processes give the 1-process
    files byte for byte, hidden states and probes included."""
    model_dir, data_dir = tiny_inputs
    one, two = tmp_path / "one", tmp_path / "two"

    def command(workdir):
        return [sys.executable, str(REPO / "launch" / "experiment.py"), "--config=configs/tiny.py",
                f"--config.model.path={model_dir}", f"--config.data.source_dir={data_dir}",
                f"--config.workdir={workdir}", "--config.experiment.arms=()",
                "--config.experiment.methods=('sep_lexical','sesub_lexical')",
                "--config.probes.layers=(1,2)", "--config.labels.sep.train_size=5"]
    _run(command(one), devices=1)
    _run([sys.executable, str(REPO / "launch" / "multihost.py"), "--num_processes=2",
          "--local_devices=1", "--", *command(two)])
    files = [p.relative_to(one) for p in sorted(one.rglob("*")) if p.is_file() and (
        p.suffix in (".jsonl", ".csv", ".npz") or p.name == "metrics.json")]
    assert any(f.name == "probes.npz" for f in files)
    assert any(f.name == "hidden_states.npz" for f in files)
    for rel in files:
        assert (two / rel).read_bytes() == (one / rel).read_bytes(), rel
