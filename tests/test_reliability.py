"""Reliability as a hostile but realistic user sees it (issue 13), one case per scenario.

Every case ends in one of two outcomes, asserted: a one-line error naming the culprit (the
field, flag, file:line or tensor) before any compute, or a correct output. Launchers run in
subprocesses (exit status 2, `error: ...` on one line, no traceback, nothing written
outside the workdir); the rest calls the stage functions directly, on the cheapest path
that reaches the check (tiny model, tiny data, no model load where the check precedes it).
tests/test_reliability_checkpoints.py holds the hostile-checkpoint cases.
"""
from __future__ import annotations

import concurrent.futures
import errno
import json
import math
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from configs import base, tiny
from se_jax.pipeline import cli
from se_jax.io import stage_io
from se_jax.config.validation import ConfigError
from se_jax.config.schema import RunConfig
import standalone

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable

# ----------------------------------------------------------------------------- config values

# (dotted field, bad value, text the error must contain). Each was a silent wrong result,
# a ZeroDivisionError or an accepted nonsense value before.
BAD_VALUES = [
    ("sampling.num_samples", 0, ">= 2"), ("sampling.num_samples", -2, ">= 2"),
    ("sampling.num_samples", 1, ">= 2"), ("sampling.num_samples", 2.5, "integer"),
    ("sampling.temperature", math.nan, "finite"), ("sampling.temperature", -1.0, ">= 0"),
    ("sampling.temperature", math.inf, "finite"), ("sampling.low_temperature", -0.1, ">= 0"),
    ("sampling.top_k", -1, ">= 0"), ("sampling.top_p", 0.0, "> 0"),
    ("sampling.top_p", 1.5, "<= 1"), ("sampling.max_new_tokens", 0, ">= 1"),
    ("sampling.batch_size", 0, ">= 1"), ("sampling.buckets", (), "non-empty"),
    ("sampling.buckets", (64, 0), "buckets[1]"),
    ("labels.tau", -1.0, ">= 0"), ("labels.tau", math.nan, "finite"),
    ("labels.method", "sе", "one of"),  # a Cyrillic 'е'
    ("labels.f1_threshold", 2.0, "<= 1"), ("labels.idk_threshold", -0.1, ">= 0"),
    ("labels.judge", "llm", "one of"), ("labels.abstention_phrase", " ", "non-empty"),
    ("training.epochs", -1, ">= 1"), ("training.epochs", 0, ">= 1"),
    ("training.lora.rank", 0, ">= 1"), ("training.lora.top_layers", -1, ">= 0"),
    ("training.batch_size", 0, ">= 1"),
    ("training.grad_accum_steps", 0, ">= 1"), ("training.learning_rate", 0.0, "> 0"),
    ("training.learning_rate", math.nan, "finite"), ("training.warmup_ratio", 2.0, "<= 1"),
    ("training.max_steps", 0, "-1 = no limit"), ("training.lora.dropout", 1.0, "<= 0.999"),
    ("training.loss_chunk_tokens", 0, ">= 1"), ("training.mode", "qlora", "one of"),
    ("evaluation.batch_size", 0, ">= 1"), ("evaluation.max_new_tokens", 0, ">= 1"),
    ("evaluation.bootstrap_samples", 0, ">= 1"), ("evaluation.confidence", 1.0, "<="),
    ("evaluation.judge", "gpt", "one of"),
    ("entropy.batch_size", 0, ">= 1"), ("entropy.questions_per_shard", 0, ">= 1"),
    ("entropy.backend", "nli", "one of"), ("entropy.lexical_threshold", math.nan, "finite"),
    ("entropy.buckets", (0,), "buckets[0]"),
    ("mesh.data", 0, "-1 for the remaining"), ("mesh.tensor", -2, ">= -1"),
    ("mesh.num_devices", -1, ">= 0"),
    ("data.train_size", 0, ">= 1"), ("data.val_size", -1, ">= 0"),
    ("prompt.style", "long", "one of"), ("prompt.chat", "yes", "one of"),
    ("model.max_seq_len", 0, ">= 2"), ("model.dtype", "float16", "one of"),
    ("seed", -1, ">= 0"), ("on_bad_input", "ignore", "one of"),
]


def _set(config, dotted: str, value) -> None:
    *path, leaf = dotted.split(".")
    node = config
    for p in path:
        node = node[p]
    with node.ignore_type():
        node[leaf] = value


@pytest.mark.parametrize("field,value,rule", BAD_VALUES,
                         ids=[f"{f}={v!r}" for f, v, _ in BAD_VALUES])
def test_bad_config_value_is_one_line_naming_the_field(field, value, rule):
    config = base.get_config()
    _set(config, field, value)
    with pytest.raises(ConfigError) as e:
        RunConfig.from_configdict(config)
    message = str(e.value)
    assert message.startswith(f"config.{field}") and rule in message, message
    assert "\n" not in message


def test_two_mesh_axes_of_minus_one_refused():
    config = base.get_config()
    config.mesh.fsdp = -1
    with pytest.raises(ConfigError, match="at most one axis"):
        RunConfig.from_configdict(config)


@pytest.mark.parametrize("name", ["base", "demo", "tiny", "paper_llama3_8b", "sweep"])
def test_shipped_configs_are_valid(name):
    import importlib
    RunConfig.from_configdict(importlib.import_module(f"configs.{name}").get_config())


# ----------------------------------------------------------------------------- launchers

def _sandbox(root: Path) -> dict[str, Path]:
    """A workdir four levels below `root`, so '../../../../x' from it lands in `root`."""
    work = root / "a" / "b" / "c" / "work"
    work.mkdir(parents=True)
    return {"root": root, "work": work}


def _outside(root: Path, work: Path) -> list[str]:
    """Everything under `root` that is not the workdir or its parents."""
    keep = {work, *work.parents}
    return sorted(str(p) for p in root.rglob("*")
                  if p not in keep and work not in p.parents)


TINY = str(REPO / "configs" / "tiny.py")
NON_UTF8 = (b'{"id": "a", "question": "What is 1 plus 1?", "answers": ["2"]}\n'
            b'{"id": "b", "question": "caf\xe9 au lait?", "answers": ["x"]}\n')

# (id, launcher, args ({work}, {model}, {q} substituted), fragments of the error line,
#  whether the case may read the model/tokenizer before failing)
CLI_CASES = [
    ("config_typo", "sample.py", ["--config.sampling.num_sample=5"],
     ["--config.sampling.num_sample", "did you mean 'num_samples'"]),
    ("config_bad_type", "sample.py", ["--config.sampling.num_samples=abc"],
     ["--config.sampling.num_samples=abc"]),
    ("unknown_flag", "sample.py", ["--questoins=q.jsonl"], ["questoins", "Did you mean"]),
    ("missing_config_file", "sample.py", ["--config={work}/nope.py"], ["nope.py"]),
    ("num_samples_0", "sample.py", ["--config.sampling.num_samples=0"],
     ["config.sampling.num_samples=0", ">= 2"]),
    ("num_samples_1", "sample.py", ["--config.sampling.num_samples=1"],
     ["config.sampling.num_samples=1"]),
    ("temperature_nan", "sample.py", ["--config.sampling.temperature=nan"],
     ["config.sampling.temperature=nan", "finite"]),
    ("temperature_negative", "sample.py", ["--config.sampling.temperature=-1"],
     ["config.sampling.temperature=-1"]),
    ("batch_size_0", "sample.py", ["--config.sampling.batch_size=0"],
     ["config.sampling.batch_size=0"]),
    ("tau_negative", "label.py", ["--config.labels.tau=-1"], ["config.labels.tau=-1"]),
    ("tau_nan", "label.py", ["--config.labels.tau=nan"], ["config.labels.tau=nan"]),
    ("entropy_shard_0", "entropy.py", ["--config.entropy.questions_per_shard=0"],
     ["config.entropy.questions_per_shard=0"]),
    ("evaluate_tag_escape", "evaluate.py", ["--tag=../../../../x"], ["--tag='../../../../x'"]),
    ("evaluate_split_escape", "evaluate.py", ["--split=../../x"], ["--split='../../x'"]),
    ("stage_method_escape", "stage.py", ["--stage=label", "--method=../../../../x",
                                         "--tau=1"], ["--method='../../../../x'"]),
    ("stage_arm_escape", "stage.py", ["--stage=run", "--method=se_lexical", "--tau=1",
                                      "--arm=/etc"], ["--arm='/etc'"]),
    ("questions_missing", "sample.py", ["--questions={work}/none.jsonl",
                                        "--config.model.path={model}"], ["none.jsonl"]),
    ("questions_not_utf8", "sample.py", ["--questions={q}", "--config.model.path={model}",
                                         "--config.on_bad_input=error"],
     ["q.jsonl:2: not valid UTF-8", "0xe9"]),
    ("out_dir_under_a_file", "sample.py", ["--questions={q}", "--config.model.path={model}",
                                           "--out={q}/out"], ["q.jsonl"]),
]


def _run_cli(case, tmp: Path, model_dir: str) -> dict:
    name, launcher, args, _ = case
    box = _sandbox(tmp / name)
    q = box["work"] / "q.jsonl"
    q.write_bytes(NON_UTF8)
    subst = {"work": str(box["work"]), "model": model_dir, "q": str(q)}
    argv = [PY, str(REPO / "launch" / launcher), f"--config={TINY}",
            f"--config.workdir={box['work']}", *(a.format(**subst) for a in args)]
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=box["work"], env=env, capture_output=True, text=True,
                          timeout=300)
    return {"seconds": time.perf_counter() - start, "rc": done.returncode,
            "stderr": done.stderr, "stdout": done.stdout,
            "outside": _outside(box["root"], box["work"]),
            "written": sorted(str(p.relative_to(box["work"])) for p in box["work"].rglob("*")
                              if p != q)}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    from tiny_models import make_tiny_llama_dir
    return make_tiny_llama_dir(tmp_path_factory.mktemp("rel_model"), "llama")


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory, tiny_model) -> dict[str, dict]:
    """All launcher cases, run 4 at a time (each one is mostly interpreter start-up)."""
    tmp = tmp_path_factory.mktemp("cli")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = {c[0]: pool.submit(_run_cli, c, tmp, tiny_model) for c in CLI_CASES}
        results = {k: f.result() for k, f in futures.items()}
    print("launcher cases (s):", {k: round(r["seconds"], 1) for k, r in results.items()})
    return results


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_launcher_error_is_one_line_before_any_work(case, cli_results):
    name, _, _, fragments = case
    r = cli_results[name]
    lines = [line for line in r["stderr"].splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert r["rc"] == cli.EXIT_USER_ERROR, r["stderr"][-2000:]
    assert "Traceback" not in r["stderr"], r["stderr"][-2000:]
    assert len(errors) == 1 and errors[0] == lines[-1], lines[-5:]
    for f in fragments:
        assert f in errors[0], errors[0]
    assert r["outside"] == [], r["outside"]          # nothing outside the workdir
    # before any compute: no stage outputs (config.json, shards, splits) were written
    assert not [w for w in r["written"] if w.endswith((".json", ".jsonl"))], r["written"]


def test_verbose_shows_the_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    done = subprocess.run([PY, str(REPO / "launch" / "label.py"), f"--config={TINY}",
                           f"--config.workdir={tmp_path}", "--config.labels.tau=-1",
                           "--verbose"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "Traceback" in done.stderr and "ConfigError: config.labels.tau=-1" in done.stderr


# ----------------------------------------------------------------------------- stage inputs

def _gen_record(i: int, texts: list[str]) -> dict:
    def answer(t, lp):
        return {"text": t, "token_ids": [1], "token_logprobs": [lp], "sum_logprob": lp,
                "mean_logprob": lp}
    return {"id": f"q{i}", "question": f"Capital of country {i}?", "answers": ["Paris"],
            "prompt": "p", "most_likely": answer((texts or [""])[0], -0.1),
            "samples": [answer(t, -0.5 - 0.1 * k) for k, t in enumerate(texts)]}


def _entropy_config(tmp: Path, gen: Path, **top):
    config = base.get_config()
    config.workdir = str(tmp)
    config.mesh.data = -1
    config.entropy.generations, config.entropy.out_dir = str(gen), str(tmp / "entropy")
    config.entropy.backend = "lexical"
    for k, v in top.items():
        config[k] = v
    return config


def _write_lines(path: Path, lines: list) -> Path:
    path.write_bytes(b"".join((x if isinstance(x, bytes) else json.dumps(x).encode()) + b"\n"
                              for x in lines))
    return path


ENTROPY_BAD_LINES = {
    "one_sample": (_gen_record(8, ["Paris"]), "fewer than 2 answers"),
    "no_samples": (_gen_record(8, []), "fewer than 2 answers"),
    "not_utf8": (b'{"id": "q8", "question": "caf\xe9"}', "not valid UTF-8"),
    "not_json": (b'{"id": "q8", ', "not valid JSON"),
    "nan_logprob": ({**_gen_record(8, ["a", "b"]), "samples": [
        {"text": "a", "mean_logprob": float("nan")}, {"text": "b", "mean_logprob": 0.0}]},
        "not a finite number"),
}


@pytest.mark.parametrize("case", sorted(ENTROPY_BAD_LINES))
def test_entropy_bad_record_skipped_with_file_line_or_refused(case, tmp_path):
    bad, reason = ENTROPY_BAD_LINES[case]
    gen = _write_lines(tmp_path / "g.jsonl", [_gen_record(0, ["Paris", "Lyon", "Paris"]), bad])
    path = standalone.entropy(_entropy_config(tmp_path, gen))
    out = stage_io.read_jsonl(path)
    skipped = stage_io.read_jsonl(tmp_path / "entropy" / "skipped.jsonl")
    assert [r["id"] for r in out] == ["q0"] and out[0]["num_clusters"] == 2
    assert len(skipped) == 1 and f"{gen}:2" in skipped[0]["reason"]
    assert reason in skipped[0]["reason"]
    with pytest.raises(ValueError, match=f"{gen}:2.*{reason}"):
        standalone.entropy(_entropy_config(tmp_path / "strict", gen, on_bad_input="error"))


def test_entropy_records_the_true_m_and_refuses_a_changed_input(tmp_path):
    gen = _write_lines(tmp_path / "g.jsonl", [_gen_record(i, ["a", "b", "a"]) for i in range(3)])
    config = _entropy_config(tmp_path, gen)
    assert config.sampling.num_samples == 10
    standalone.entropy(config)
    written = json.loads((tmp_path / "entropy" / "config.json").read_text())
    assert written["sampling"]["num_samples"] == 3
    assert written["inputs"]["generations"]["sha256"] == stage_io.file_sha256(gen)
    standalone.entropy(config)  # same input: resumes (nothing to do)
    _write_lines(gen, [_gen_record(i, ["a", "b", "c"]) for i in range(3)])
    with pytest.raises(stage_io.InputChangedError, match=f"input {gen} .*new output directory"):
        standalone.entropy(config)


def _label_config(tmp: Path, **labels):
    config = base.get_config()
    config.workdir = str(tmp)
    for k, v in labels.items():
        config.labels[k] = v
    return config


def test_label_stage_refuses_changed_generations(tmp_path):
    (tmp_path / "sample" / "train").mkdir(parents=True)   # the stand-alone default input
    gen = _write_lines(tmp_path / "sample" / "train" / "generations.jsonl",
                       [_gen_record(i, ["Paris", "Paris"]) for i in range(2)])
    config = _label_config(tmp_path, method="rtuning")
    sft = stage_io.read_jsonl(standalone.label(config))
    assert [r["label"] for r in sft] == ["answer", "answer"]
    _write_lines(gen, [_gen_record(i, ["Lyon", "Lyon"]) for i in range(2)])
    with pytest.raises(stage_io.InputChangedError, match="generations.jsonl"):
        standalone.label(config)


def test_label_stage_names_a_missing_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="generations file .*generations.jsonl"):
        standalone.label(_label_config(tmp_path, method="idk"))


def _questions(path: Path, lines: list) -> Path:
    return _write_lines(path, lines)


def _sample_config(tmp: Path, model: str, questions: Path):
    config = tiny.get_config()
    config.model.path = model
    config.workdir = str(tmp)
    config.sampling.input = str(questions)
    config.sampling.num_samples, config.sampling.max_new_tokens = 2, 2
    config.sampling.out_dir = str(tmp / "sample")
    return config


def test_sample_rerun_after_the_questions_changed_is_refused(tmp_path, tiny_model):
    """The first run has only bad lines (no model load, no compute); the file then changes."""
    q = _questions(tmp_path / "q.jsonl", [{"id": "a"}, {"id": "b"}])  # no question: skipped
    config = _sample_config(tmp_path, tiny_model, q)
    path = standalone.sample(config)
    assert path.read_text() == "" and len(stage_io.read_jsonl(path.parent / "skipped.jsonl")) == 2
    _questions(q, [{"id": "a", "question": "What is 1 plus 1?", "answers": ["2"]}])
    with pytest.raises(stage_io.InputChangedError, match=f"input {q} \\(questions\\) changed"):
        standalone.sample(config)


def test_second_writer_into_a_sample_dir_is_refused(tmp_path, tiny_model):
    q = _questions(tmp_path / "q.jsonl", [{"id": "a"}])
    config = _sample_config(tmp_path, tiny_model, q)
    other = subprocess.Popen([PY, "-c", "import time; time.sleep(60)"])
    try:
        lock = tmp_path / "sample" / ".writer.lock"
        lock.parent.mkdir(parents=True)
        import socket
        lock.write_text(f"{socket.gethostname()} {other.pid}\n")
        with pytest.raises(stage_io.WriterLockError, match=f"pid|{other.pid}"):
            standalone.sample(config)
        assert sorted(p.name for p in lock.parent.iterdir()) == [".writer.lock"]
    finally:
        other.kill()
        other.wait()
    standalone.sample(config)  # the holder died: its lock is taken over, the run completes
    assert not lock.exists()


def test_sample_non_utf8_line_is_skipped_with_file_line(tmp_path, tiny_model):
    from se_jax.pipeline.stages import sample
    from se_jax.models.loading import load_tokenizer
    q = tmp_path / "q.jsonl"
    q.write_bytes(NON_UTF8)
    questions, bad = sample.read_questions(q, load_tokenizer(tiny_model), prompt_kwargs={},
                                           max_prompt_tokens=100)
    assert [x.id for x in questions] == ["a"]
    column = NON_UTF8.split(b"\n")[1].index(b"\xe9") + 1
    assert bad == [{"line": 2, "id": None,
                    "reason": f"{q}:2: not valid UTF-8 (byte 0xe9 at column {column})"}]


def test_evaluate_stage_refuses_other_questions_in_a_finished_dir(tmp_path, monkeypatch):
    from se_jax.abstention import judges
    from se_jax.pipeline.stages import evaluate
    monkeypatch.setattr(evaluate, "_greedy_fn",
                        lambda *a: lambda p, ids: (["Paris"] * len(p), None))
    monkeypatch.setattr(evaluate, "prompt_texts", lambda tok, qs, c: [q["question"] for q in qs])
    config = base.get_config()
    qs = [{"id": "a", "question": "Capital of France?", "answers": ["Paris"]}]
    metrics = evaluate.evaluate_split(None, None, qs, tmp_path / "ev", config,
                                      judge=judges.string_judge("alias"), model_tag="m")
    assert metrics["correct"] == 1
    other = [{"id": "a", "question": "Capital of Peru?", "answers": ["Lima"]}]
    with pytest.raises(stage_io.InputChangedError, match="questions"):
        evaluate.evaluate_split(None, None, other, tmp_path / "ev", config,
                                judge=judges.string_judge("alias"), model_tag="m")


# ----------------------------------------------------------------------------- paths

UNSAFE_NAMES = ["..", ".", "", "../x", "../../../../x", "/abs", "a/b", "a\\b", "-rf", "~root",
                "x\0y"]


@pytest.mark.parametrize("name", UNSAFE_NAMES, ids=[repr(n) for n in UNSAFE_NAMES])
def test_unsafe_path_component_refused(name, tmp_path):
    with pytest.raises(stage_io.UnsafePathError, match="--tag"):
        stage_io.safe_join(tmp_path, "ok", name, what="--tag")


def test_safe_names_pass():
    for name in ("model_runs_demo", "se_lexical", "tau_1.00", "ood_entity_questions_ood"):
        assert stage_io.safe_component(name, "--tag") == name


# ----------------------------------------------------------------------------- files

@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_files_honour_the_umask(umask, tmp_path):
    old = os.umask(umask)
    try:
        stage_io.atomic_write_text(tmp_path / "config.json", "{}")
        stage_io.write_jsonl(tmp_path / "g.jsonl", [{"a": 1}])
        with stage_io.atomic_path(tmp_path / "model.safetensors") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    for name in ("config.json", "g.jsonl", "model.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_during_atomic_write_leaves_old_file_and_no_tmp(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    stage_io.atomic_write_text(target, "old")
    monkeypatch.setattr(os, "fsync", _enospc)
    with pytest.raises(OSError, match="No space"):
        stage_io.atomic_write_text(target, "new")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == [
        "summary.json"]


def test_disk_full_during_export_leaves_no_tmp(tmp_path, monkeypatch):
    import numpy as np
    from se_jax.models import hf_checkpoint

    def full_disk(tensors, path, metadata=None):
        Path(path).write_bytes(b"partial")
        _enospc()
    monkeypatch.setattr(hf_checkpoint, "save_file", full_disk)
    with pytest.raises(OSError, match="No space"):
        hf_checkpoint.write_hf_checkpoint(str(tmp_path / "merged"), {"model_type": "llama"},
                                          {"w": np.zeros(2, np.float32)})
    assert list((tmp_path / "merged").iterdir()) == []


def test_split_planning_writes_nothing(tmp_path):
    """What the experiment's --dry_run calls: no TFDS build, no directories."""
    from test_experiment_e2e import write_tiny_data
    from se_jax.data import splits
    data = write_tiny_data(tmp_path / "data")
    before = sorted(tmp_path.rglob("*"))
    config = tiny.get_config()
    config.data.source_dir = str(data)
    plan = splits.plan(config.data, tmp_path / "work")
    assert plan.sizes["train"] == 8 and splits.split_names(plan)[-1] == "ood_entity_questions_ood"
    assert sorted(tmp_path.rglob("*")) == before
    config.data.in_distribution = "nq_open:nonexistent"
    from se_jax.data.catalog import DatasetError
    with pytest.raises(DatasetError, match="no split 'nonexistent'.*splits: \\['dev'\\]"):
        splits.plan(config.data, tmp_path / "work")
    assert sorted(tmp_path.rglob("*")) == before


def test_experiment_dry_run_writes_nothing(tmp_path):
    from test_experiment_e2e import write_tiny_data
    data = write_tiny_data(tmp_path / "data")
    box = _sandbox(tmp_path / "box")
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    done = subprocess.run([PY, str(REPO / "launch" / "experiment.py"), f"--config={TINY}",
                           f"--config.workdir={box['work']}", f"--config.data.source_dir={data}",
                           "--dry_run"], cwd=box["work"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "in-distribution: nq_open:dev (train 8" in done.stdout
    assert list(box["work"].iterdir()) == [] and _outside(box["root"], box["work"]) == []


def test_read_only_output_dir_refused_before_the_model_loads(tmp_path, tiny_model, monkeypatch):
    from se_jax.models import loading
    q = _questions(tmp_path / "q.jsonl", [{"id": "a", "question": "1+1?", "answers": ["2"]}])
    config = _sample_config(tmp_path, tiny_model, q)
    (tmp_path / "sample").mkdir()
    monkeypatch.setattr(loading, "load_llama", lambda *a, **k: pytest.fail("model loaded"))

    def read_only(*_a, **_k):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "sample"))
    monkeypatch.setattr(stage_io, "_create_tmp", read_only)
    with pytest.raises(PermissionError):
        standalone.sample(config)
    assert cli.describe(PermissionError(errno.EACCES, "Permission denied", "/x")) == \
        "/x: Permission denied"


# ----------------------------------------------------------------------------- checkpoints

def _safetensors(path: Path, header, data: bytes = bytes(16)) -> Path:
    import struct
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


BAD_SAFETENSORS = {
    "no_data_offsets": ({"w": {"dtype": "F32", "shape": [4]}}, "no 'data_offsets'"),
    "offsets_too_short": ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}},
                          "8 bytes do not hold F32[4]"),
    "negative_shape": ({"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}},
                       "shape [-4]"),
    "offsets_reversed": ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}},
                         "data_offsets [16, 0]"),
    "unknown_dtype": ({"w": {"dtype": "F12", "shape": [4], "data_offsets": [0, 16]}},
                      "unsupported dtype 'F12'"),
    "past_end_of_file": ({"w": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}},
                         "truncated"),
}


@pytest.mark.parametrize("case", sorted(BAD_SAFETENSORS))
def test_malformed_safetensors_named_before_any_read(case, tmp_path):
    """Through the NLI loader (entropy.nli_path) and the decoder's reader alike."""
    from se_jax.models import deberta_loading
    from se_jax.models.safetensors_io import SafetensorsError
    header, fragment = BAD_SAFETENSORS[case]
    _safetensors(tmp_path / "model.safetensors", header)
    with pytest.raises(SafetensorsError) as e:
        deberta_loading.read_state_dict(tmp_path)
    assert "model.safetensors" in str(e.value) and fragment in str(e.value)
    assert "'w'" in str(e.value) or case == "past_end_of_file"


def test_scalar_tensors_round_trip_through_safetensors(tmp_path):
    import numpy as np
    from se_jax.models import safetensors_io
    safetensors_io.save_file({"s": np.array(3.5, np.float32)}, str(tmp_path / "x.safetensors"))
    got = safetensors_io.SafetensorsFile(str(tmp_path / "x.safetensors")).get("s")
    assert got.shape == () and float(got) == 3.5   # was [1] on write, zeros on read


def test_truncated_gguf_named(tmp_path, embedded_gguf):
    from se_jax.models.gguf_checkpoint import GGUFCheckpoint
    cut = tmp_path / "cut.gguf"
    with open(embedded_gguf, "rb") as f:
        cut.write_bytes(f.read(1 << 20))
    with pytest.raises(ValueError, match=f"{cut}: not a readable GGUF"):
        GGUFCheckpoint(str(cut))
