"""benchmarks/accelerator_report.py cannot rot: its --quick run (every section at toy sizes,
3-5 minutes on a loaded 2-core CPU) writes a report.json of the documented schema with every
section present and every share of a roofline in (0, 1.2]; and the GPU settings of
se_jax/io/runtime.py set nothing where the backend is the CPU."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import accelerator_report
from se_jax.io import runtime
from se_jax.io import throughput

REPO = Path(__file__).resolve().parents[1]


def test_quick_report(tmp_path):
    """3-5 min on the 2-core reference CPU under others' load (docs/benchmarks.md)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)   # one CPU device, as a user runs it (conftest simulates 8)
    out = subprocess.run([sys.executable, "-m", "benchmarks.accelerator_report",
                          f"--out={tmp_path}", "--quick", "--budget_s=1000"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["quick"] and doc["backend"] == "cpu"
    assert not doc["skipped"], doc["skipped"]
    figures = doc["figures"]
    for f in figures:
        assert set(f) == set(accelerator_report.SCHEMA), sorted(f)
        assert f["device_kind"] == doc["device_kind"] and f["backend"] == "cpu"
        if f["share"] is not None:
            assert 0 < f["share"] <= 1.2, f
            assert f["roofline"] in ("compute", "bandwidth") and f["roofline_value"] > 0
    assert {f["section"] for f in figures} == set(accelerator_report.SECTIONS)
    for section in ("model", "train", "sampler", "nli", "judge"):
        ours = [f for f in figures if f["section"] == section and f["side"] == "se_jax"]
        assert ours and all(f["share"] is not None for f in ours), section
        assert all(f["vs_torch"] for f in ours), section     # torch is installed here
        assert any(f["side"] == "torch" for f in figures if f["section"] == section)
    assert any(f["name"].startswith("phase: ") for f in figures if f["section"] == "job")
    md = (tmp_path / "report.md").read_text()
    assert "| section | figure |" in md and "Skipped: nothing" in md
    assert "| section | figure |" in out.stdout
    # each roofline is the best of its first reading and those beside every kernel
    roofs = [f for f in figures if f["section"] == "roofline"]
    assert len(roofs) == 3 and all("readings beside the kernels" in f["note"] for f in roofs)


def test_bfloat16_is_bounded_by_the_faster_peak():
    peaks = {"float32": 180.0, "bfloat16": 120.0}   # a CPU without AVX512-BF16
    assert accelerator_report.peak_for(peaks, "bfloat16") == 180.0
    assert accelerator_report.peak_for(peaks, "float32") == 180.0
    peaks = {"float32": 180.0, "bfloat16": 350.0}
    assert accelerator_report.peak_for(peaks, "bfloat16") == 350.0
    assert accelerator_report.peak_for(peaks, "float32") == 180.0


def test_budget_skips_what_would_overrun_and_says_why():
    budget = accelerator_report.Budget(total=5.0, quick=True)
    assert budget.run("roofline", lambda: "ran", force=True) == "ran"
    assert budget.run("job", lambda: "ran") is None           # 61 s estimated > 5 s
    assert budget.skipped[0]["part"] == "job" and "left" in budget.skipped[0]["reason"]
    # a failing part is reported, not fatal
    budget.total = 1e6
    assert budget.run("nli", lambda: 1 / 0) is None
    assert "ZeroDivisionError" in budget.skipped[-1]["reason"]


def test_gpu_settings_set_nothing_on_cpu():
    env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    assert runtime.gpu_settings(env) == {}
    assert env == {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    assert not runtime.will_use_gpu({"JAX_PLATFORMS": "cpu,cuda"})
    # this test machine: no GPU, whatever JAX_PLATFORMS says
    if not os.path.exists("/dev/nvidia0"):
        assert runtime.gpu_settings(dict(os.environ, JAX_PLATFORMS="")) == {}


def test_gpu_settings_on_gpu_keep_what_the_user_set():
    env = {"JAX_PLATFORMS": "cuda", "XLA_FLAGS": "--xla_gpu_enable_latency_hiding_scheduler=false",
           "XLA_PYTHON_CLIENT_MEM_FRACTION": ".5"}
    assert runtime.gpu_settings(env) == {}       # both already chosen by the user
    env = {"JAX_PLATFORMS": "cuda"}
    changed = runtime.gpu_settings(env)
    assert env["XLA_FLAGS"] == "--xla_gpu_enable_latency_hiding_scheduler=true"
    assert env["XLA_CLIENT_MEM_FRACTION"] == "0.9" and changed == {
        "XLA_FLAGS": env["XLA_FLAGS"], "XLA_CLIENT_MEM_FRACTION": "0.9"}


def test_throughput_table_round_trip(tmp_path):
    path = tmp_path / "t.json"
    entry = dict(model=dict(matmul_params=100e6), prefill=dict(tokens_per_s=1000.0),
                 decode=dict(tokens_per_s=200.0), train=dict(tokens_per_s=400.0),
                 sample=dict(tokens_per_s=300.0))
    throughput.update("NVIDIA H100 80GB HBM3", entry, path)
    table = throughput.load(path)
    assert throughput.tokens_per_s(table, "NVIDIA H100 80GB HBM3", "train") == 400.0
    # a model with 8x the matmul parameters: 1/8 of the rate
    rate = throughput.tokens_per_s(table, "NVIDIA H100 80GB HBM3", "decode",
                                   matmul_params=800e6)
    assert rate == pytest.approx(25.0)
    assert throughput.device_hours(25.0 * 3600, rate) == pytest.approx(1.0)
    with pytest.raises(KeyError, match="H100"):
        throughput.entry(table, "TPU v5 lite")
    with pytest.raises(ValueError, match="lacks"):
        throughput.update("x", dict(model={}), path)
    assert throughput.load(throughput.TABLE)["version"] == throughput.VERSION
