"""The sweep engine (se_jax/pipeline/resident.py): runs share one resident base model, compile the
training step and the sampler once per shape, leave the base untouched, and give the same
adapter and answers as the same run trained and evaluated alone."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from configs import tiny
from se_jax.tuning import export
from se_jax.generation import sampling
from se_jax.tuning import sft_data
from se_jax.tuning import training
from se_jax.data import prompts as prompt_lib
from se_jax.parallel.mesh import make_mesh
from se_jax.pipeline.resident import Resident
from se_jax.io.telemetry import Telemetry
from se_jax.config.schema import RunConfig
import standalone

QUESTIONS = [f"What is the capital of country number {i}?" for i in range(16)]
TARGETS = ["I don't know the answer.", "Paris", "The capital is a long name, say Rome."]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tiny_models import make_tiny_llama_dir
    root = tmp_path_factory.mktemp("engine")
    model_dir = make_tiny_llama_dir(root / "model", variant="llama")
    sft = root / "sft.jsonl"
    sft.write_text("".join(json.dumps(dict(id=str(i), question=q, target=TARGETS[i % 3]))
                           + "\n" for i, q in enumerate(QUESTIONS)))
    return model_dir, sft, root


def run_config(model_dir, sft, out_dir, seed: int):
    config = tiny.get_config()
    config.model.path = str(model_dir)
    config.seed = seed
    config.training.sft = str(sft)
    config.training.out_dir = str(out_dir)
    config.training.epochs = 2
    return config


def load_base(model_dir, sft, root) -> Resident:
    return Resident.load(run_config(model_dir, sft, root, 0).model,
                         make_mesh(tiny.get_config().mesh))


def weights(model) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.device_get(jax.tree.leaves(nnx.state(model)))]


def batch_shapes(config, resident) -> set[tuple]:
    """Every (prefix length, batch array shapes) the run's schedule feeds the step."""
    tc, tok = config.training, resident.tokenizer
    records = [json.loads(line) for line in open(config.training.sft)]
    seqs = [sft_data.tokenize_example(tok, r, eos_id=tok.eos_token_id, prompt_kwargs={})
            for r in records]
    layout = training.batch_layout(tc, seqs)
    shapes = set()
    for epoch in range(tc.epochs):
        for batch in sft_data.epoch_batches([len(s.ids) for s in seqs], tc.batch_size,
                                            config.seed, epoch, tc.bucket_batches):
            arrays = layout.batch([seqs[i] for i in batch], tc.batch_size)
            shapes.add((layout.prefix_len,) + tuple(a.shape for a in arrays.values()))
    return shapes


def greedy(model, resident, ids=None):
    prompts = [prompt_lib.format_prompt(resident.tokenizer, q) for q in QUESTIONS[:8]]
    answers = sampling.greedy_answers(model, resident.tokenizer, prompts,
                                      ids or [str(i) for i in range(8)], mesh=resident.mesh,
                                      max_new_tokens=6, batch_size=8)
    return [a.token_ids for a in answers]


def test_runs_share_the_base_and_compile_each_program_once(setup):
    model_dir, sft, root = setup
    clock = Telemetry.install()
    base = load_base(model_dir, sft, root)
    before = weights(base.model)
    base_answers = greedy(base.model, base)

    shapes, step_compiles, sampler_compiles, answers = set(), [], [], []
    for seed in (0, 1, 2):
        config = run_config(model_dir, sft, root / f"run{seed}", seed)
        new_shapes = batch_shapes(config, base) - shapes
        shapes |= new_shapes
        n0 = clock.compile_count("jit(step)")
        trained = standalone.train(config, resident=base)
        step_compiles.append((clock.compile_count("jit(step)") - n0, len(new_shapes)))
        s0 = clock.compile_count("jit(_prefill)") + clock.compile_count("jit(_decode)")
        answers.append(greedy(trained.model, base))
        sampler_compiles.append(clock.compile_count("jit(_prefill)")
                                + clock.compile_count("jit(_decode)") - s0)
        assert trained.summary["finished"] and (root / f"run{seed}" / "adapter").is_dir()
        assert not (root / f"run{seed}" / "merged").exists()   # adapters only by default

    # Each run compiles only batch shapes no earlier run had; the sampler of the tuned
    # models compiles for the first one and never again.
    assert all(n <= new for n, new in step_compiles), step_compiles
    assert step_compiles[0][0] >= 1
    assert sampler_compiles[1:] == [0, 0], sampler_compiles
    # Training never wrote into the resident base: same weights, same answers.
    assert all(np.array_equal(a, b) for a, b in zip(before, weights(base.model)))
    assert greedy(base.model, base) == base_answers
    # The original model as the experiment evaluates it (zero adapters, the runs' graph)
    # answers exactly as the base does.
    assert greedy(base.original_model(run_config(model_dir, sft, root, 0).training),
                  base) == base_answers
    # Different seeds drew different adapters, so the runs are really distinct models.
    a0 = load_file(str(root / "run0" / "adapter" / "adapter_model.safetensors"))
    a1 = load_file(str(root / "run1" / "adapter" / "adapter_model.safetensors"))
    assert any(not np.allclose(a0[k], a1[k]) for k in a0)


def test_engine_run_equals_the_run_alone(setup):
    """The same run (seed 5) trained on a resident base after another run, and trained alone
    by the train stage loading its own model: adapters within 1e-6, identical answers;
    rebuilding it from its checkpoint gives the same answers again."""
    model_dir, sft, root = setup
    base = load_base(model_dir, sft, root)
    standalone.train(run_config(model_dir, sft, root / "other", 4), resident=base)
    engine = standalone.train(run_config(model_dir, sft, root / "engine", 5), resident=base)
    standalone.train(run_config(model_dir, sft, root / "alone", 5))

    ours = load_file(str(root / "engine" / "adapter" / "adapter_model.safetensors"))
    ref = load_file(str(root / "alone" / "adapter" / "adapter_model.safetensors"))
    assert ours.keys() == ref.keys()
    for k in ref:
        np.testing.assert_allclose(ours[k], ref[k], atol=1e-6, err_msg=k)

    # Evaluated like launch/evaluate.py --adapter does: a fresh base plus the PEFT files.
    fresh = load_base(model_dir, sft, root)
    with_adapter = export.load_peft_adapter(nnx.clone(fresh.model), root / "alone" / "adapter")
    assert greedy(engine.model, base) == greedy(with_adapter, fresh)

    # A finished run is not trained again: its record stays, the model comes from Orbax.
    record = (root / "engine" / "summary.json").read_text()
    again = standalone.train(run_config(model_dir, sft, root / "engine", 5), resident=base)
    assert again.model is None and (root / "engine" / "summary.json").read_text() == record
    cfg = run_config(model_dir, sft, root / "engine", 5)
    restored = base.restored_run_model(cfg.training, 5, root / "engine" / "checkpoints")
    assert greedy(restored, base) == greedy(engine.model, base)


def test_load_peft_adapter_refuses_a_mismatched_adapter(setup, tmp_path):
    model_dir, sft, root = setup
    base = load_base(model_dir, sft, root)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 4}))
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight":
               np.zeros((3, 64), np.float32),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight":
               np.zeros((64, 3), np.float32)}, str(adapter / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="q_proj has shapes"):
        export.load_peft_adapter(nnx.clone(base.model), adapter)
    save_file({"base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight":
               np.zeros((2, 64), np.float32)}, str(adapter / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="names no linear"):
        export.load_peft_adapter(nnx.clone(base.model), adapter)


def test_runs_with_the_same_training_input_train_once(tmp_path, monkeypatch):
    """Two sweep runs whose SFT records (what training reads of them), seed and config agree,
    as SE and R-Tuning-U labels do when they coincide at a tau, train once: the second gets
    the first's outputs, model and evaluation outcomes. A run with other targets trains;
    after a restart the adopted run is rebuilt from its own directory without training."""
    from test_experiment_e2e import tiny_config, write_tiny_data
    from tiny_models import make_tiny_llama_dir
    from se_jax.pipeline import experiment
    from se_jax.pipeline.plan import Run

    config = tiny_config(make_tiny_llama_dir(tmp_path / "model", variant="llama"),
                         write_tiny_data(tmp_path / "data"), tmp_path / "run")
    calls = []
    real_train = training.train
    monkeypatch.setattr(training, "train", lambda *a, **k: calls.append(1) or real_train(*a, **k))

    def sft(name: str, targets, reason: str):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(
            json.dumps(dict(id=str(i), question=q, target=targets[i % 3], reason=reason))
            + "\n" for i, q in enumerate(QUESTIONS)))
        return path

    se, rtu, rt = Run("se_lexical", 1.0, 0), Run("rtuning_u", 1.0, 0), Run("rtuning", None, 0)
    job, _ = experiment.start(RunConfig.from_configdict(config))
    first = job.trained_model(se, sft("se", TARGETS, "entropy 0.7"))
    assert len(calls) == 1
    # Same records and targets (another "reason", which training does not read): adopted.
    twin = job.trained_model(rtu, sft("rtu", TARGETS, "exact-string entropy 0.7"))
    assert len(calls) == 1 and twin is first
    se_dir, rtu_dir = job.layout.train(se), job.layout.train(rtu)
    summary = json.loads((rtu_dir / "summary.json").read_text())
    assert summary["finished"] and summary["same_as"] == str(se_dir)
    assert (rtu_dir / "done.json").exists() and (rtu_dir / "config.json").exists()
    adapter = "adapter/adapter_model.safetensors"
    assert (rtu_dir / adapter).read_bytes() == (se_dir / adapter).read_bytes()
    # Its evaluation takes over the first run's outcomes; nothing is answered again.
    from se_jax.pipeline.stages import evaluate
    job.evaluate(se.tag, lambda: first, ["val"])
    answered = []
    real_greedy = evaluate._greedy_fn
    monkeypatch.setattr(evaluate, "_greedy_fn",
                        lambda *a: answered.append(1) or real_greedy(*a))
    metrics = job.evaluate(rtu.tag, lambda: twin, ["val"])["val"]
    assert not answered and metrics["model"] == rtu.tag
    se_val, rtu_val = job.layout.evaluate(se.tag, "val"), job.layout.evaluate(rtu.tag, "val")
    assert ({k: v for k, v in metrics.items() if k != "model"}
            == {k: v for k, v in evaluate.read_metrics(se_val).items() if k != "model"})
    assert evaluate.read_outcomes(rtu_val) == evaluate.read_outcomes(se_val)
    # Other targets: a run of its own.
    other = job.trained_model(rt, sft("rt", TARGETS[::-1], "gold"))
    assert len(calls) == 2 and other is not first
    # A restart: the adopted run comes back from its own checkpoints, untrained, answering
    # as the run it copied.
    job2, _ = experiment.start(RunConfig.from_configdict(config))
    rebuilt = job2.trained_model(rtu, tmp_path / "rtu.jsonl")
    assert len(calls) == 2
    base = job2.resident()
    assert greedy(rebuilt, base) == greedy(first, base)
