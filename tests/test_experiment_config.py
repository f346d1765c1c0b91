"""Experiment config checks (before any compute), tau choice, sweep plan, launcher errors."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from configs import base, demo, nq_open_smollm, paper_llama3_8b, tiny
from se_jax.pipeline import plan
from se_jax.config.schema import RunConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("field,value,message", [
    ("methods", ("se_lexical", "rtuning_x"), "unknown method 'rtuning_x'"),
    ("methods", ("se_nli",), "unknown entropy backend 'nli'"),
    ("methods", ("original",), "always evaluated"),
    ("methods", ("idk", "idk"), "twice"),
    ("taus", (), "taus must be non-empty"),
    ("seeds", (), "must list at least one seed"),
    ("arms", ("distill",), "unknown arm 'distill'"),
])
def test_validate_config_names_the_bad_field(field, value, message):
    config = tiny.get_config()
    config.experiment[field] = value
    with pytest.raises(plan.ConfigError, match=message):
        plan.validate(RunConfig.from_configdict(config))


def test_validate_config_judge_and_shipped_configs(tmp_path):
    for module in (base, demo, nq_open_smollm, tiny):
        plan.validate(module.get_config())
    paper = paper_llama3_8b.get_config()
    with pytest.raises(plan.ConfigError, match="se_deberta needs entropy.nli_path"):
        plan.validate(paper)
    (tmp_path / "config.json").write_text("{}")
    paper.entropy.nli_path = str(tmp_path)
    plan.validate(paper)
    config = tiny.get_config()
    config.evaluation.judge = "exact"
    with pytest.raises(plan.ConfigError, match="evaluation.judge.*'exact'"):
        plan.validate(RunConfig.from_configdict(config))


def test_sweep_runs_and_tags():
    runs = plan.Sweep(("se_lexical", "rtuning"), (0.5, 1.0), (0, 1), ()).runs
    assert [r.tag for r in runs] == ["se_lexical/tau_0.50/seed_0", "se_lexical/tau_0.50/seed_1",
                                     "se_lexical/tau_1.00/seed_0", "se_lexical/tau_1.00/seed_1",
                                     "rtuning/seed_0", "rtuning/seed_1"]
    arm = plan.Run("se_lexical", 1.0, 0, "self_distill")
    assert arm.tag == "se_lexical+self_distill/tau_1.00/seed_0"
    assert arm.label_tag == "se_lexical/tau_1.00"          # shares the SE labels
    assert plan.backends_needed(["rtuning_u", "idk"], "lexical") == ["lexical"]
    assert plan.backends_needed(["se_deberta", "se_lexical", "rtuning_u"], "x") == [
        "deberta", "lexical"]


def test_paper_protocol_sweeps_taus_at_the_first_seed_only():
    methods = ("se_deberta", "se_llm_judge", "rtuning", "rtuning_u")
    taus = tuple(round(0.25 * k, 2) for k in range(1, 10))
    paper = plan.Sweep(methods, taus, (0, 1, 2), (), "paper")
    grid = plan.Sweep(methods, taus, (0, 1, 2), (), "grid")
    assert {r.seed for r in paper.runs} == {0}
    assert len(paper.runs) == 3 * 9 + 1
    # The final runs at seed 0 are sweep runs; seeds 1, 2 add one run per method.
    final = paper.final_runs({"se_deberta": 0.5, "se_llm_judge": 1.0, "rtuning": None,
                              "rtuning_u": 2.25})
    distinct = {r.tag for r in paper.runs} | {r.tag for r in final}
    assert len(distinct) == paper.num_trainings == 3 * (9 + 2) + 3 == 36
    assert grid.num_trainings == len(grid.runs) == 3 * 9 * 3 + 3 == 84
    assert paper.count_formula().endswith("= 36")
    config = paper_llama3_8b.get_config()
    assert RunConfig.from_configdict(config).experiment.protocol == "paper"
    config.experiment.protocol = "best"
    with pytest.raises(plan.ConfigError, match="experiment.protocol"):
        RunConfig.from_configdict(config)


def test_pick_taus_by_mean_validation_aed():
    rows = [dict(method="se_lexical", tau=0.5, split="val", seed=0, aed=0.40),
            dict(method="se_lexical", tau=0.5, split="val", seed=1, aed=0.30),   # mean .35
            dict(method="se_lexical", tau=1.0, split="val", seed=0, aed=0.36),
            dict(method="se_lexical", tau=1.0, split="val", seed=1, aed=0.36),   # mean .36
            dict(method="se_lexical", tau=1.5, split="test", seed=0, aed=0.01),  # not val
            dict(method="rtuning_u", tau=0.5, split="val", seed=0, aed=0.5),
            dict(method="rtuning_u", tau=2.0, split="val", seed=0, aed=0.5),     # tie
            dict(method="rtuning", tau="", split="val", seed=0, aed=0.6),
            dict(method="idk", tau="", split="val", seed=0, aed=math.nan),
            dict(method="original", tau="", split="val", seed=0, aed=0.1)]
    picked = plan.pick_taus(rows)
    assert picked == {"se_lexical": 0.5, "rtuning_u": 0.5, "rtuning": None, "idk": None}


def _launch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "launch" / "experiment.py"), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def test_launcher_rejects_config_typos_before_compute(tmp_path):
    out = _launch("--config=configs/tiny.py", f"--config.workdir={tmp_path}",
                  "--config.experiment.methodz=('idk',)", "--dry_run")
    assert out.returncode != 0
    assert "methodz" in out.stderr
    out = _launch("--config=configs/tiny.py", f"--config.workdir={tmp_path}",
                  "--config.experiment.methods=('se_lexcal',)", "--dry_run")
    assert out.returncode != 0 and "unknown entropy backend 'lexcal'" in out.stderr
    out = _launch("--config=configs/tiny.py", f"--config.workdir={tmp_path}",
                  "--config.data.in_distribution=nq_closed", "--dry_run")
    assert out.returncode != 0 and "unknown dataset 'nq_closed'" in out.stderr
    assert not (tmp_path / "sample").exists()    # nothing ran


def test_sweep_launcher_prints_the_fan_out(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "launch" / "sweep.py"),
                          "--config=configs/tiny.py", f"--config.workdir={tmp_path}",
                          "--print_only"], capture_output=True, text=True, cwd=REPO,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    prepare = [line for line in lines if "--stage=prepare" in line]
    runs = [line for line in lines if "--stage=run" in line]
    final = [line for line in lines if "launch/experiment.py" in line]
    # tiny: se_lexical and rtuning_u at one tau, rtuning and idk without: 4 jobs.
    assert len(prepare) == 1 and len(final) == 1 and len(runs) == 4
    assert sum("--method=se_lexical" in r and "--tau=1.0" in r for r in runs) == 1
    assert all(f"--config.workdir={tmp_path}" in line for line in lines)


def test_dry_run_counts_adapters_on_the_adapted_layers_only(tmp_path):
    """The cost plan's adapter size follows training.lora.top_layers (2-layer tiny model:
    the top layer holds half the adapters)."""
    from se_jax.pipeline import cost
    from tiny_models import write_tiny_llama_dir
    config = tiny.get_config()
    config.model.path = write_tiny_llama_dir(tmp_path / "model")
    every_layer, total = cost._model_numbers(config)
    config.training.lora.top_layers = 1
    top_layer, same_total = cost._model_numbers(config)
    assert every_layer > 0 and top_layer * 2 == every_layer and same_total == total


LLAMA3_8B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
             "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32,
             "num_key_value_heads": 8, "vocab_size": 128256, "rope_theta": 500000.0,
             "max_position_embeddings": 8192, "rms_norm_eps": 1e-05,
             "tie_word_embeddings": False, "hidden_act": "silu", "bos_token_id": 128000,
             "eos_token_id": 128009}


def test_paper_grid_dry_run_counts_the_grid(tmp_path):
    """configs/paper_grid.py --dry_run on Llama-3-8B's sizes (config only, no weights):
    5 training sets x 2 settings x (3 methods x (9 taus + 2 seeds) + R-Tuning x 3) runs."""
    import json
    model = tmp_path / "llama3_8b"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(LLAMA3_8B))
    (model / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    nli = tmp_path / "deberta_nli"   # se_deberta runs only with an NLI directory named
    nli.mkdir()
    (nli / "config.json").write_text("{}")
    out = subprocess.run([sys.executable, str(REPO / "launch" / "sweep.py"),
                          "--config=configs/paper_grid.py", f"--config.model.path={model}",
                          f"--config.entropy.nli_path={nli}",
                          f"--config.workdir={tmp_path / 'grid'}",
                          f"--config.data.source_dir={tmp_path / 'nodata'}", "--dry_run"],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert f"fine-tuning runs: {5 * 2 * (3 * (9 + 2) + 3)}" in text       # 360
    assert "questions evaluated (greedy): 519,000" in text
    assert "rescaled to 7.50B parameters" in text
    assert "NVIDIA H100/H200): not estimated" in text
    assert text.count("NOT READY") == 5 and not (tmp_path / "grid").exists()   # no data here
    assert text.count("protocol: paper (Best-Threshold") == 5
    assert text.count("3 methods with tau x (9 taus + 2 more seeds) + 1 without x 3 seeds "
                      "= 36") == 5
