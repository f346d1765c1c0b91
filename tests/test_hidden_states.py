"""Hidden states for semantic entropy probes (issue 35), on a tiny random Llama.

The sampler's TBG / SLT equal a separate full forward pass (no cache, no padding, no
shared prompt context) of the prompt (+ the answer's tokens up to the SLT step), which in
turn equals transformers' `output_hidden_states`; the layer scan keeps the same states; off,
the sampler calls its compiled programs exactly as it did before the option existed and the
samples do not change; the sample stage writes `hidden_states.npz` keyed like
generations.jsonl (a row that went to another question fails the check), resumes after a
crash, and the evaluate stage writes the original model's file beside its outcomes.
"""
from __future__ import annotations

import functools
import json

import jax
import numpy as np
import pytest
from flax import nnx

from configs import base
from se_jax.abstention import judges
from se_jax.config.schema import RunConfig
from se_jax.data import prompts as prompt_lib
from se_jax.generation import sampling, stopping
from se_jax.io import hidden_states as hidden_io
from se_jax.models.loading import load_llama
from se_jax.pipeline.stages import evaluate, sample
from tiny_models import load_torch_model
import standalone
# The tiny model, its tokenizer and the questions' prompts: test_sampling's (pytest fixtures).
from test_sampling import IDS, QUESTIONS, model, prompt_ids, tiny_dir, tokenizer  # noqa: F401

LAYERS = (0, 1, 2, -1)          # the tiny model has 2 decoder layers
NEW = 10
# Stop on a few frequent tokens too, so the random model's answers differ in length and
# the SLT step varies across rows (a fixed step would hide a wrong row or step).
SAMPLE_KW = dict(num_samples=2, max_new_tokens=NEW, batch_size=2, seed=3)


@pytest.fixture(scope="module")
def eos_ids(model, tokenizer, prompt_ids) -> tuple[int, ...]:
    """The tokenizer's EOS plus the 3 most frequent tokens of plain greedy answers, so that
    answers stop at different lengths."""
    rows = sampling.generate(model, tokenizer, prompt_ids, IDS, temperatures=(0.0,),
                             max_new_tokens=NEW, eos_ids=(), stop_strings=())
    counts = np.bincount(np.concatenate([r[0].token_ids for r in rows]))
    return tuple(stopping.eos_ids(tokenizer)) + tuple(np.argsort(counts)[-3:].tolist())


@functools.lru_cache(maxsize=None)
def _states_fn(graphdef, layers):
    return jax.jit(lambda state, tokens, positions: nnx.merge(graphdef, state).hidden_states(
        tokens, positions, layers)[2])


def reference_states(model, sequence, layers=LAYERS) -> np.ndarray:
    """float32[L, E]: one unpadded row's residual stream at its last token, no cache."""
    graphdef, state = nnx.split(model)
    tokens = np.asarray([sequence], np.int32)
    positions = np.arange(len(sequence), dtype=np.int32)[None]
    return np.asarray(_states_fn(graphdef, layers)(state, tokens, positions)[0], np.float32)


def slt_sequence(prompt: list[int], answer: sampling.Answer) -> list[int]:
    """The tokens whose last one the SLT step feeds: the prompt, then the answer's first
    `slt_step` tokens."""
    return list(prompt) + answer.token_ids[:sampling.slt_step(len(answer.token_ids))]


def _sample(model, tokenizer, prompt_ids, eos_ids, keep):
    return sampling.sample_answers_and_states(model, tokenizer, prompt_ids, IDS, keep=keep,
                                              eos_ids=eos_ids, **SAMPLE_KW)


def test_slt_step_follows_kossen_et_al():
    # hidden[n_generated - 2]; 1- and 2-token answers take the prefill's (step 0).
    assert [sampling.slt_step(n) for n in (1, 2, 3, 7)] == [0, 0, 1, 5]


def test_sampler_states_equal_a_full_forward_pass(model, tokenizer, prompt_ids, eos_ids):
    keep = sampling.KeepHidden(LAYERS)
    most_likely, _, states = _sample(model, tokenizer, prompt_ids, eos_ids, keep)
    assert states.shape == (len(QUESTIONS), 2, len(LAYERS), model.config.hidden_size)
    assert states.dtype == np.float32
    steps = [sampling.slt_step(len(a.token_ids)) for a in most_likely]
    assert len(set(steps)) >= 3 and max(steps) > 0, steps   # the test sees varied steps
    for i, (prompt, answer) in enumerate(zip(prompt_ids, most_likely)):
        np.testing.assert_allclose(states[i, 0], reference_states(model, prompt),
                                   rtol=1e-4, atol=1e-4, err_msg=f"tbg of {IDS[i]}")
        np.testing.assert_allclose(states[i, 1],
                                   reference_states(model, slt_sequence(prompt, answer)),
                                   rtol=1e-4, atol=1e-4, err_msg=f"slt of {IDS[i]}")
    # Rows are not interchangeable: another prompt's reference is far off.
    assert not np.allclose(states[0, 0], reference_states(model, prompt_ids[1]), atol=1e-2)


def test_reference_equals_transformers_hidden_states(tiny_dir, model, prompt_ids):
    import torch
    hf = load_torch_model(tiny_dir)
    with torch.no_grad():
        out = hf(torch.tensor([prompt_ids[2]]), output_hidden_states=True)
    # HF: hidden_states[0] = embeddings, [i] = layer i's output, the last one normed.
    want = np.stack([out.hidden_states[i][0, -1].numpy() for i in (0, 1, 2)])
    got = reference_states(model, prompt_ids[2], layers=(0, 1, -1))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_only_tbg_and_layer_scan_keep_the_same_states(tiny_dir, model, tokenizer, prompt_ids,
                                                      eos_ids):
    full = _sample(model, tokenizer, prompt_ids, eos_ids, sampling.KeepHidden(LAYERS))[2]
    tbg = _sample(model, tokenizer, prompt_ids, eos_ids,
                  sampling.KeepHidden((-1, 1), positions=("tbg",)))[2]
    np.testing.assert_array_equal(tbg[:, 0], full[:, 0, [3, 1]])
    scanned = load_llama(tiny_dir, scan_layers=True)
    got = _sample(scanned, tokenizer, prompt_ids, eos_ids, sampling.KeepHidden(LAYERS))[2]
    np.testing.assert_allclose(got, full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("axes", [{"data": -1}, {"data": 2, "fsdp": 2, "tensor": 2}])
def test_states_are_the_same_on_a_mesh(tiny_dir, model, tokenizer, prompt_ids, eos_ids, axes):
    """Batch-sharded over 8 devices (and weight-sharded): each prompt's states, fetched with
    its answers, equal the one-device run's (rows of a batch split across devices)."""
    from se_jax.parallel.mesh import make_mesh
    keep = sampling.KeepHidden(LAYERS)
    kwargs = dict(max_new_tokens=NEW, eos_ids=eos_ids, keep=keep)
    ref, want = sampling.greedy_answers_and_states(model, tokenizer, prompt_ids, IDS,
                                                   batch_size=5, **kwargs)
    mesh = make_mesh(axes)
    got, states = sampling.greedy_answers_and_states(
        load_llama(tiny_dir, mesh=mesh), tokenizer, prompt_ids, IDS, batch_size=2, mesh=mesh,
        **kwargs)
    assert [a.token_ids for a in got] == [a.token_ids for a in ref]
    np.testing.assert_allclose(states, want, rtol=1e-4, atol=1e-4)


def test_off_is_the_program_of_before_and_keeping_changes_no_sample(
        model, tokenizer, prompt_ids, eos_ids, monkeypatch):
    calls = []

    def spy(name, fn):
        def run(*args, **kwargs):
            calls.append((name, sorted(kwargs)))
            return fn(*args, **kwargs)
        monkeypatch.setattr(sampling, name, run)
    spy("_prefill", sampling._prefill)
    spy("_decode", sampling._decode)
    plain_ml, plain_s = sampling.sample_answers(model, tokenizer, prompt_ids, IDS,
                                                eos_ids=eos_ids, **SAMPLE_KW)
    # Off: the compiled functions get exactly the static arguments they had before the
    # option existed (so the same programs: the StableHLO hashes were checked equal too).
    assert set(map(tuple, (c[1] for c in calls if c[0] == "_prefill"))) == {
        ("extra_slots", "mesh", "rows_per_prompt", "rules")}
    assert set(map(tuple, (c[1] for c in calls if c[0] == "_decode"))) == {
        ("max_new_tokens", "top_k", "top_p")}
    kept_ml, kept_s, _ = _sample(model, tokenizer, prompt_ids, eos_ids,
                                 sampling.KeepHidden(LAYERS))
    for a, b in zip(plain_ml + sum(plain_s, []), kept_ml + sum(kept_s, [])):
        assert a.token_ids == b.token_ids and a.text == b.text
        np.testing.assert_allclose(a.token_logprobs, b.token_logprobs, rtol=1e-5, atol=1e-5)
    stop = stopping.stop_tables(tokenizer, (), eos_ids, model.config.vocab_size)
    raw = sampling.decode_batch(model, prompt_ids[:2], IDS[:2], temperatures=(0.0,),
                                batch_size=2, max_new_tokens=4, stop=stop)
    assert raw.hidden is None


# ----------------------------------------------------------------------------- stages

def _stage_config(model_dir: str, questions, out, layers=(1, -1)):
    config = base.get_config()
    config.model.path = model_dir
    config.model.max_seq_len = 160
    config.mesh.data = -1
    s = config.sampling
    s.num_samples, s.max_new_tokens, s.batch_size, s.buckets = 2, 6, 2, (64, 96)
    s.input, s.out_dir = str(questions), str(out)
    config.probes.layers = layers
    return config


def _questions(path, n=5):
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": QUESTIONS[i % 5] + f" ({i})",
                                        "answers": ["x"]}) + "\n" for i in range(n)))
    return path


def _check_rows(model, tokenizer, records, states: hidden_io.HiddenStates, layers):
    """Every row is its own question's: ids in order, values = a reference forward."""
    assert list(states.question_ids) == [r["id"] for r in records]
    for r, row in zip(records, states.values):
        prompt = prompt_lib.encode_prompt(tokenizer, r["prompt"])
        answer = sampling.Answer.from_tokens(**{k: r["most_likely"][k] for k in (
            "text", "token_ids")}, logprobs=r["most_likely"]["token_logprobs"])
        np.testing.assert_allclose(row[0], reference_states(model, prompt, layers),
                                   rtol=1e-2, atol=1e-2, err_msg=r["id"])
        np.testing.assert_allclose(row[1], reference_states(model, slt_sequence(prompt, answer),
                                                            layers),
                                   rtol=1e-2, atol=1e-2, err_msg=r["id"])


def test_sample_stage_writes_hidden_states_and_resumes(tiny_dir, model, tokenizer, tmp_path,
                                                       monkeypatch):
    questions = _questions(tmp_path / "q.jsonl")
    path = standalone.sample(_stage_config(tiny_dir, questions, tmp_path / "ref"))
    records = [json.loads(line) for line in path.read_text().splitlines()]
    ref = hidden_io.load(tmp_path / "ref" / hidden_io.FILE_NAME)
    assert ref.values.dtype == np.float16 and ref.layers == (1, -1)
    assert ref.positions == ("tbg", "slt") and ref.values.shape[:3] == (5, 2, 2)
    _check_rows(model, tokenizer, records, ref, (1, -1))
    assert not (tmp_path / "ref" / hidden_io.PARTS_DIR).exists()

    # A crash after the first shard, then a rerun: the same file.
    real, calls = sample.generation_records, []

    def crash_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("crash")
        return real(*args, **kwargs)
    monkeypatch.setattr(sample, "generation_records", crash_on_second)
    config = _stage_config(tiny_dir, questions, tmp_path / "crash")
    with pytest.raises(RuntimeError, match="crash"):
        standalone.sample(config)
    assert [p.name for p in (tmp_path / "crash" / hidden_io.PARTS_DIR).iterdir()] == [
        "000000.npz"]
    monkeypatch.setattr(sample, "generation_records", real)
    standalone.sample(config)
    again = hidden_io.load(tmp_path / "crash" / hidden_io.FILE_NAME)
    assert again.question_ids == ref.question_ids
    np.testing.assert_array_equal(again.values, ref.values)


def test_probes_off_keep_old_directories_valid_and_on_refuses_them(tiny_dir, tmp_path):
    questions = _questions(tmp_path / "q.jsonl", 2)
    out = tmp_path / "out"
    config = _stage_config(tiny_dir, questions, out, layers=())
    standalone.sample(config)
    assert not (out / hidden_io.FILE_NAME).exists()
    # A config.json written before `probes` existed is accepted while they are off ...
    written = json.loads((out / "config.json").read_text())
    del written["probes"]
    (out / "config.json").write_text(json.dumps(written))
    standalone.sample(config)
    # ... and refused once they are on (the directory holds no hidden states).
    with pytest.raises(ValueError, match="probes.layers"):
        standalone.sample(_stage_config(tiny_dir, questions, out, layers=(1,)))
    # A layer the model lacks is refused before any work.
    with pytest.raises(ValueError, match="has 2 decoder layers"):
        standalone.sample(_stage_config(tiny_dir, questions, tmp_path / "new", layers=(3,)))
    assert not (tmp_path / "new").exists()


def test_evaluate_writes_the_original_models_hidden_states(tiny_dir, model, tokenizer,
                                                           tmp_path):
    config = _stage_config(tiny_dir, tmp_path / "unused", tmp_path / "unused")
    config.evaluation.batch_size = 2
    config = RunConfig.from_configdict(config)
    qs = [{"id": f"t{i}", "question": q, "answers": ["x"]} for i, q in enumerate(QUESTIONS)]
    judge = judges.string_judge("alias")
    for tag in ("original", "se_lexical/tau_1.00/seed_0"):
        evaluate.evaluate_split(model, tokenizer, qs, tmp_path / tag, config, judge=judge,
                                model_tag=tag)
    assert not (tmp_path / "se_lexical/tau_1.00/seed_0" / hidden_io.FILE_NAME).exists()
    states = hidden_io.load(tmp_path / "original" / hidden_io.FILE_NAME)
    outcomes = evaluate.read_outcomes(tmp_path / "original")
    assert list(states.question_ids) == [o["id"] for o in outcomes] == [q["id"] for q in qs]
    prompts = evaluate.prompt_texts(tokenizer, qs, config)
    for prompt, row in zip(prompts, states.values):
        np.testing.assert_allclose(
            row[0], reference_states(model, prompt_lib.encode_prompt(tokenizer, prompt),
                                     (1, -1)), rtol=1e-2, atol=1e-2)
