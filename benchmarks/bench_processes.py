"""Does the wall time fall with processes? The whole tiny experiment (DeBERTa and
LLM-judge entropy, a separate LLM correctness judge in its own stage) as 1 and as 2 local
processes, each process pinned to its own CPU (`launch/multihost.py --cpus_per_process=1`:
hosts with their own cores, as on a slice; without pinning, P processes share this
machine's cores and every process compiles its own programs), on a compile cache that
warm-up runs of both sides filled, with enough questions that the work, not the start-up,
dominates. Both sides must write the same result files.

    python -m benchmarks.bench_processes [--pairs=3] [--extra=120] [--root=/tmp/bench_processes]
    python -m benchmarks.bench_processes --model=embedded --stage=prepare   # SmolLM2-135M:
        # samples, entropies, the original model's evaluation and its judge stage

Prints each pair's wall seconds and, last, `processes_speedup=<median P=1 / median P=2>`.
Figures: docs/benchmarks.md, "Several processes".
"""
from __future__ import annotations

import filecmp
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

REPO = Path(__file__).resolve().parents[1]

_PAIRS = flags.DEFINE_integer("pairs", 3, "A/B pairs (P=1 then P=2) after the warm-up")
_EXTRA = flags.DEFINE_integer("extra", 120, "made-up questions added to the tiny data")
_ROOT = flags.DEFINE_string("root", "/tmp/bench_processes", "fixtures, cache and workdirs")
_MODEL = flags.DEFINE_string("model", "", "the generator (default: the tiny random one; "
                             "'embedded': SmolLM2-135M-Instruct)")
_STAGE = flags.DEFINE_string("stage", "", "'' the whole experiment (launch/experiment.py), "
                             "else a launch/stage.py stage (e.g. prepare)")


def fixtures(root: Path, extra: int, model: str) -> list[str]:
    """The tiny generator, judge, NLI checkpoint and data (written once per root, the data
    once per `extra`); the experiment's arguments."""
    sys.path.insert(0, str(REPO / "tests"))
    from test_experiment_e2e import write_tiny_data
    from tiny_models import write_tiny_judge_dir, write_tiny_llama_dir
    from tools import random_nli
    if not (root / "ready").exists():
        shutil.rmtree(root, ignore_errors=True)
        write_tiny_llama_dir(root / "model")
        write_tiny_judge_dir(root / "judge", seed=3)
        random_nli.save_random_nli(root / "nli", random_nli.TINY["v1"],
                                   random_nli.DEFAULT_SENTENCES, seed=0)
        (root / "ready").touch()
    data = root / f"data_extra{extra}"
    if not data.exists():
        write_tiny_data(data.with_suffix(".tmp"), extra=extra)
        data.with_suffix(".tmp").rename(data)
    sizes = max(extra // 4, 4)
    return ["--config=configs/tiny.py", f"--config.model.path={model or root / 'model'}",
            f"--config.data.source_dir={data}", f"--config.entropy.nli_path={root / 'nli'}",
            "--config.entropy.judge_shots=1", "--config.entropy.questions_per_shard=10",
            "--config.evaluation.judge=llm",
            f"--config.evaluation.judge_model={root / 'judge'}",
            "--config.experiment.methods=('se_deberta','se_llm_judge','rtuning')",
            f"--config.data.train_size={2 * sizes}", f"--config.data.val_size={sizes}",
            f"--config.data.test_size={sizes}", f"--config.data.ood_size={sizes}"]


def run(processes: int, args: list[str], workdir: Path, cache: Path, stage: str) -> float:
    """Wall seconds of the experiment (or `stage`) as `processes` pinned processes, in an
    empty `workdir`."""
    shutil.rmtree(workdir, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=str(REPO), SE_JAX_COMPILE_CACHE=str(cache))
    command = [sys.executable, "launch/multihost.py", f"--num_processes={processes}",
               "--local_devices=1", "--cpus_per_process=1", "--",
               sys.executable, *(["launch/stage.py", f"--stage={stage}"] if stage else
                                 ["launch/experiment.py"]),
               *args, f"--config.workdir={workdir}"]
    start = time.perf_counter()
    out = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode:
        raise RuntimeError(f"P={processes} exited {out.returncode}:\n{out.stdout[-3000:]}")
    (workdir / "log.txt").write_text(out.stdout)
    return seconds


def same_results(a: Path, b: Path) -> int:
    """How many result files the two workdirs share, all equal (else AssertionError)."""
    names = [p.relative_to(a) for p in a.rglob("*") if p.is_file() and (
        p.suffix in (".jsonl", ".csv", ".safetensors") or p.name == "metrics.json")]
    for rel in names:
        assert filecmp.cmp(a / rel, b / rel, shallow=False), f"{rel} differs"
    return len(names)


def main(argv: list[str]) -> None:
    del argv
    root = Path(_ROOT.value)
    args = fixtures(root, _EXTRA.value, _MODEL.value)
    cache = root / "xla_cache"
    for p in (1, 2):                                    # warm-up: fills the compile cache
        print(f"warm-up P={p}: {run(p, args, root / f'warm{p}', cache, _STAGE.value):.1f}s",
              flush=True)
    times: dict[int, list[float]] = {1: [], 2: []}
    for i in range(_PAIRS.value):
        for p in (1, 2):
            times[p].append(run(p, args, root / f"w{p}", cache, _STAGE.value))
        compared = same_results(root / "w1", root / "w2")
        print(f"pair {i}: P=1 {times[1][-1]:.1f}s, P=2 {times[2][-1]:.1f}s; "
              f"{compared} result files equal; load {os.getloadavg()[0]:.2f}", flush=True)
    one, two = statistics.median(times[1]), statistics.median(times[2])
    print(f"median wall: P=1 {one:.1f}s, P=2 {two:.1f}s (each process on its own CPU)")
    print(f"processes_speedup={one / two:.2f}")


if __name__ == "__main__":
    app.run(main)
