"""Fault trials on tiny inputs (not a test: minutes): SIGTERM at random moments, a dead
peer, duplicate launchers. Reports time-to-exit and whether every final output is
byte-identical to an uninterrupted run's.

    PYTHONPATH=. python -m tools.fault_trials --trials=20 --duplicates=10 --workdir=/tmp/ft

SIGTERM trials rotate over: sample, entropy, train, evaluate (launch/stage.py, original
model), the experiment driver (launch/experiment.py, configs/tiny.py; its results.csv is
compared), and 2-process runs of sample and evaluate via launch/multihost.py. Each
trial signals after a random delay in [0, the uninterrupted run's wall time with the compile
cache warm, as the trials find it], expects exit
75 (or 0 if the run had passed its last boundary) and then reruns the same command to the
end. Dead-peer trials kill -9 process 1 of a 2-process sample run at a random moment
(start-up included) and expect process 0 to exit 76 with one `error:` line.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

REPO = Path(__file__).resolve().parents[1]
_TRIALS = flags.DEFINE_integer("trials", 20, "SIGTERM trials")
_DUPLICATES = flags.DEFINE_integer("duplicates", 10, "duplicate-launcher trials")
_DEAD = flags.DEFINE_integer("dead", 2, "dead-peer trials (2-process sample)")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/fault_trials", "scratch directory")
_SEED = flags.DEFINE_integer("seed", 0, "random moments")
PY = sys.executable


def env(**extra) -> dict:
    e = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", **extra)
    e.pop("XLA_FLAGS", None)
    return e


def setup(root: Path) -> dict:
    sys.path.insert(0, str(REPO / "tests"))
    from test_experiment_e2e import write_tiny_data
    from tiny_models import write_tiny_llama_dir
    root.mkdir(parents=True, exist_ok=True)
    model = root / "model"
    if not (model / "config.json").exists():
        write_tiny_llama_dir(model)
    data = write_tiny_data(root / "data")
    questions = root / "q.jsonl"
    questions.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What is {i} plus {i}?",
                                             "answers": [str(2 * i)]}) + "\n" for i in range(12)))
    sft = root / "sft.jsonl"
    sft.write_text("".join(json.dumps({"id": f"s{i}", "question": f"What is {i} plus {i}?",
                                       "target": str(2 * i) if i % 3 else "I don't know.",
                                       "label": "answer", "reason": {}}) + "\n"
                           for i in range(32)))
    return dict(model=str(model), data=str(data), questions=str(questions), sft=str(sft))


def commands(s: dict, root: Path) -> dict:
    """kind -> (command builder(out dir), the output file to compare, processes)."""
    model = [f"--config.model.path={s['model']}", "--config.model.max_seq_len=160"]
    sample = lambda out, bs=1: [PY, "launch/sample.py", f"--questions={s['questions']}",  # noqa
                                f"--out={out}", *model, "--config.sampling.num_samples=3",
                                "--config.sampling.max_new_tokens=8",
                                f"--config.sampling.batch_size={bs}",
                                "--config.sampling.buckets=(64, 96)"]
    gens = root / "ref_sample" / "generations.jsonl"
    entropy = lambda out: [PY, "launch/entropy.py", f"--generations={gens}", f"--out={out}",  # noqa
                           "--config.entropy.backend=lexical", *model,
                           "--config.entropy.questions_per_shard=1"]
    train = lambda out: [PY, "launch/train.py", *model, f"--config.training.sft={s['sft']}",  # noqa
                         f"--config.training.out_dir={out}", "--config.training.batch_size=4",
                         "--config.training.epochs=2", "--config.training.save_every=1000",
                         "--config.training.async_checkpoint=False",
                         "--config.training.lora.rank=2", "--config.training.export_merged=False"]
    tiny = lambda out, one=True: [  # noqa: E731 (one process: a 1-device mesh)
        "--config=configs/tiny.py", f"--config.model.path={s['model']}",
        f"--config.data.source_dir={s['data']}", f"--config.workdir={out}",
        *(["--config.mesh.num_devices=1"] if one else [])]
    evaluate = lambda out, one=True: [PY, "launch/stage.py", *tiny(out, one),  # noqa
                                      "--stage=evaluate",
                            "--method=original", "--split=test",
                            "--config.evaluation.batch_size=1"]
    experiment = lambda out, one=True: [PY, "launch/experiment.py", *tiny(out, one),  # noqa
                              "--config.experiment.methods=('se_lexical', 'rtuning')",
                              "--config.experiment.arms=()"]
    multi = lambda cmd: [PY, "launch/multihost.py", "--num_processes=2", "--", *cmd]  # noqa
    return {
        "sample": (sample, "generations.jsonl"),
        "entropy": (entropy, "uncertainty.jsonl"),
        "train": (train, "adapter/adapter_model.safetensors"),
        "evaluate": (evaluate, "evaluate/f1_0.5/original/test/outcomes.jsonl"),
        "experiment": (experiment, "report/results.csv"),
        "sample_2proc": (lambda out: multi(sample(out, 2)), "generations.jsonl"),
        # The 2-process experiment driver stops at its first training run (Orbax cannot
        # save the per-process mesh's host-local arrays: not this tool's concern), so the
        # 2-process trials run stages whose 2-process runs work.
        "evaluate_2proc": (lambda out: multi(evaluate(out, one=False)),
                           "evaluate/f1_0.5/original/test/outcomes.jsonl"),
    }


def run(cmd, **extra) -> tuple[int, str, float]:
    t = time.monotonic()
    p = subprocess.run(cmd, cwd=REPO, env=env(**extra), capture_output=True, text=True,
                       timeout=1200)
    return p.returncode, p.stdout + p.stderr, time.monotonic() - t


def signal_after(cmd, delay: float, sig=signal.SIGTERM, child: bool = False, **extra):
    """(returncode, output, seconds from signal to exit or None if it finished first)."""
    p = subprocess.Popen(cmd, cwd=REPO, env=env(**extra), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        p.wait(timeout=delay)
        return p.returncode, p.stdout.read(), None
    except subprocess.TimeoutExpired:
        pass
    target = p.pid
    if child:
        import psutil
        kids = sorted(c.pid for c in psutil.Process(p.pid).children())
        target = kids[-1] if kids else p.pid
    os.kill(target, sig)
    t = time.monotonic()
    out = p.communicate(timeout=1200)[0]
    return p.returncode, out, time.monotonic() - t


def main(argv):
    root = Path(_WORKDIR.value)
    s = setup(root)
    kinds = commands(s, root)
    rng = random.Random(_SEED.value)
    refs, wall = {}, {}
    order = ["sample", "entropy", "train", "evaluate", "experiment", "sample_2proc",
             "evaluate_2proc"]
    for kind in order:          # the uninterrupted references (sample first: entropy reads it)
        out = root / f"ref_{kind}"
        build, name = kinds[kind]
        for _ in range(2):      # the second with the compile cache warm, as the trials run
            shutil.rmtree(out, ignore_errors=True)
            code, log, seconds = run(build(out))
            assert code == 0, f"{kind}: {log[-2000:]}"
        refs[kind], wall[kind] = (out / name).read_bytes(), seconds
        print(f"reference {kind}: {seconds:.1f}s (compile cache warm)", flush=True)
    rows = []
    for i in range(_TRIALS.value):
        kind = order[i % len(order)]
        build, name = kinds[kind]
        out = root / f"trial_{i}_{kind}"
        shutil.rmtree(out, ignore_errors=True)
        delay = rng.uniform(0.0, wall[kind])
        code, log, seconds = signal_after(build(out), delay)
        line = next((x for x in log.splitlines() if "preempted (" in x), "")
        if code not in (0, 75) or (code == 75 and not line):
            print("\n".join(log.splitlines()[-15:]), flush=True)
        reruns = 0
        while True:
            rc, rlog, _ = run(build(out))
            reruns += 1
            if rc == 0 or reruns == 3:
                break
        same = (out / name).exists() and (out / name).read_bytes() == refs[kind]
        rows.append(dict(kind=kind, delay=delay, code=code, exit_s=seconds, line=bool(line),
                         rerun=rc, identical=same))
        print(f"trial {i:2d} {kind:16s} SIGTERM at {delay:5.1f}s -> exit {code} "
              f"in {'-' if seconds is None else f'{seconds:.1f}s'}; one line: {bool(line)}; "
              f"rerun {rc}; identical: {same}", flush=True)
    for i in range(_DEAD.value):
        build, name = kinds["sample_2proc"]
        out = root / f"dead_{i}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = build(out)
        cmd.insert(cmd.index("--"), "--nostop_others")
        code, log, seconds = signal_after(cmd, rng.uniform(0.3, 0.8) * wall["sample_2proc"],
                                          signal.SIGKILL, child=True, SE_JAX_PEER_TIMEOUT="20")
        errors = [x for x in log.splitlines() if x.startswith("[p0] error:")]
        named = any("did not reach" in x or "not every process joined" in x for x in errors)
        if code != 76 or not named:
            print("\n".join(log.splitlines()[-15:]), flush=True)
        rc, _, _ = run(build(out))
        same = (out / name).read_bytes() == refs["sample_2proc"]
        print(f"dead peer {i}: kill -9 of process 1 -> exit {code} in "
              f"{'-' if seconds is None else f'{seconds:.1f}s'} (timeout 20s); one line: {named} "
              f"({errors[0][12:90] if errors else ''}...); rerun {rc}; identical: {same}",
              flush=True)
    dup_ok = 0
    for i in range(_DUPLICATES.value):
        build, name = kinds["sample"]
        out = root / f"dup_{i}"
        shutil.rmtree(out, ignore_errors=True)
        procs = [subprocess.Popen(build(out), cwd=REPO, env=env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        time.sleep(0)
        res = [(p.wait(timeout=600), p.communicate()[1]) for p in procs]
        codes = sorted(c for c, _ in res)
        refused = [e.strip().splitlines()[-1] for c, e in res if c == 2]
        clean = sorted(p.name for p in out.iterdir()) == ["config.json", "generations.jsonl",
                                                          "skipped.jsonl"]
        same = (out / name).read_bytes() == refs["sample"]
        ok = codes in ([0, 0], [0, 2]) and same and clean and all(
            "being written by another process" in r for r in refused)
        dup_ok += ok
        print(f"duplicate {i}: exits {codes}; identical {same}; no stray files {clean}",
              flush=True)
    timed = [r["exit_s"] for r in rows if r["exit_s"] is not None]
    others = [r["code"] for r in rows if r["exit_s"] is not None and r["code"] != 0
              and not (r["code"] == 75 and r["line"])]
    print(f"\nSIGTERM trials: {len(rows)}; signalled before the end: {len(timed)}; "
          f"exit 75 with the line: {sum(r['code'] == 75 and r['line'] for r in rows)}; "
          f"exit 0 (past the last boundary): "
          f"{sum(r['code'] == 0 for r in rows if r['exit_s'] is not None)}; "
          f"other exits: {others}; "
          f"identical after rerun: {sum(r['identical'] for r in rows)}/{len(rows)}")
    if timed:
        print(f"time from SIGTERM to exit: median {statistics.median(timed):.1f}s, "
              f"max {max(timed):.1f}s")
    print(f"duplicate launchers: {dup_ok}/{_DUPLICATES.value} with one identical result")


if __name__ == "__main__":
    app.run(main)
