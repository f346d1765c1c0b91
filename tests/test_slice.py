"""Issue 37: the paper config on a slice or a GPU node. No method silently becomes another
(item 1); the judges load in the compute dtype and reuse the resident generator (item 4)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from configs import paper_llama3_8b
from se_jax.config.schema import RunConfig
from se_jax.config.validation import ConfigError
from tests.typed_configs import BASE


def _paper(**sections) -> RunConfig:
    return RunConfig.from_configdict(paper_llama3_8b.get_config()).replace(**sections)


# ----------------------------------------------------------------------------- item 1

def test_deberta_backend_without_nli_path_refuses_instead_of_lexical():
    import jax
    from se_jax.parallel.mesh import make_mesh
    from se_jax.semantic import entailment as E
    cfg = BASE.replace(entropy=dict(backend="deberta", nli_path="")).entropy
    with pytest.raises(ConfigError, match="needs entropy.nli_path"):
        E.make_backend(cfg, make_mesh({"data": 1}, jax.devices()[:1]))


def test_paper_config_without_nli_path_stops_before_any_work():
    from se_jax.pipeline import plan
    with pytest.raises(ConfigError, match="^se_deberta needs entropy.nli_path"):
        plan.Sweep.from_config(_paper())


def test_rtuning_u_alone_with_an_unrunnable_default_backend_refuses():
    from se_jax.pipeline import plan
    cfg = BASE.replace(experiment=dict(methods=("rtuning_u",), arms=()),
                       entropy=dict(backend="deberta", nli_path=""))
    with pytest.raises(ConfigError, match="entropy.backend=deberta needs entropy.nli_path"):
        plan.Sweep.from_config(cfg)


def test_what_each_method_uses_is_listed(tmp_path):
    from se_jax.pipeline import plan
    with pytest.raises(ConfigError, match="not an HF DeBERTa NLI directory"):
        plan.method_uses(_paper(entropy=dict(nli_path=str(tmp_path / "nli"))))
    (tmp_path / "nli").mkdir()
    (tmp_path / "nli" / "config.json").write_text("{}")
    cfg = _paper(entropy=dict(nli_path=str(tmp_path / "nli")))
    uses = plan.method_uses(cfg)
    assert str(tmp_path / "nli") in uses["se_deberta"]
    assert "the generator" in uses["se_llm_judge"]
    assert "exact-string" in uses["rtuning_u"]
    assert "judge" in uses and "the generator" in uses["judge"]


# ----------------------------------------------------------------------------- item 4

@dataclasses.dataclass
class _FakeResident:
    path: str = "/models/llama3-8b"
    model: object = "generator"
    tokenizer: object = "tokenizer"
    mesh: object = None


def _job(config: RunConfig, tmp_path: Path):
    from se_jax.io.telemetry import Telemetry
    from se_jax.pipeline import experiment
    from se_jax.pipeline.layout import Layout
    res = _FakeResident()
    return experiment.Job(config, Layout.from_config(config), {}, Telemetry.install(),
                          lambda: res, {})


@pytest.fixture
def spies(monkeypatch):
    from se_jax.pipeline import experiment
    calls = {"load": [], "judge": []}
    monkeypatch.setattr(experiment, "load_llama",
                        lambda path, **kw: calls["load"].append((path, kw)) or "judge-model")
    monkeypatch.setattr(experiment, "load_tokenizer", lambda path: "judge-tokenizer")
    monkeypatch.setattr(experiment.judges, "make_judge",
                        lambda ev, model=None, tok=None, **kw: calls["judge"].append(model)
                        or "judge")
    return calls


def test_llm_judge_that_is_the_generator_reuses_the_resident_model(tmp_path, spies):
    cfg = _paper(workdir=str(tmp_path), model=dict(path="/models/llama3-8b"),
                 evaluation=dict(judge="llm", judge_model="/models/llama3-8b/"))
    _job(cfg, tmp_path).judge()
    assert spies["load"] == [] and spies["judge"] == ["generator"]


def test_a_separate_llm_judge_loads_in_the_compute_dtype(tmp_path, spies):
    cfg = _paper(workdir=str(tmp_path), model=dict(path="/models/llama3-8b"),
                 evaluation=dict(judge="llm", judge_model="/models/llama3-70b"))
    _job(cfg, tmp_path).judge()
    (path, kw), = spies["load"]
    assert path == "/models/llama3-70b"
    assert kw.get("dtype") == "bfloat16" and kw.get("param_dtype") == "bfloat16"


def test_entropy_llm_judge_reuses_the_resident_generator(tmp_path, monkeypatch):
    from se_jax.pipeline.stages import entropy
    loads = []
    monkeypatch.setattr(entropy, "load_llama", lambda *a, **kw: loads.append(a) or "m")
    monkeypatch.setattr(entropy, "load_tokenizer", lambda p: "t")
    got = {}
    monkeypatch.setattr(entropy.entailment, "make_backend",
                        lambda ec, mesh, decoder=None, **kw: got.setdefault("d", decoder)
                        or ("backend", None))
    cfg = _paper(model=dict(path="/models/llama3-8b"),
                 entropy=dict(backend="llm_judge", judge_model=""))
    entropy._load_backend(cfg, resident=_FakeResident())
    assert loads == [] and got["d"] == "generator"


# ----------------------------------------------------------------------------- item 7

def test_scan_layers_is_set_from_the_config(tmp_path):
    import jax
    from se_jax.parallel.mesh import make_mesh
    from se_jax.pipeline.resident import Resident
    from tiny_models import write_tiny_llama_dir
    path = write_tiny_llama_dir(tmp_path / "model")
    for scan in (False, True):
        mc = BASE.replace(model=dict(path=str(path), scan_layers=scan)).model
        base = Resident.load(mc, make_mesh({"data": 1}, jax.devices()[:1]))
        assert base.model.config.scan_layers is scan
    with pytest.raises(ConfigError, match="model.scan_layers"):
        BASE.replace(model=dict(scan_layers="yes"))
