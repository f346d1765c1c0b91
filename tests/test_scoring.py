"""The shared-prefix next-token scorer: parity with unshared scoring and with a plain
forward, padding/bucketing invariance, and sharded == single device (8 simulated devices)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from se_jax.generation import scoring
from se_jax.data import prompts as prompt_lib
from se_jax.parallel.mesh import make_mesh

ITEMS = [dict(question="Capital of France?", a="Paris", b="It is Paris."),
         dict(question="Who wrote Hamlet?", a="Shakespeare", b="Marlowe"),
         dict(question="q?", a="a much longer answer that goes on " * 2, b="x"),
         dict(question="Largest ocean on Earth?", a="the Pacific", b="Pacific Ocean"),
         dict(question="When?", a="1999", b="in 1999"),
         dict(question="Where is Kyoto?", a="Japan", b="Kansai, Japan")]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from tiny_models import make_tiny_llama_dir
    return make_tiny_llama_dir(tmp_path_factory.mktemp("tiny_scoring"), variant="llama")


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    from se_jax.models.loading import load_llama, load_tokenizer
    return load_llama(tiny_dir), load_tokenizer(tiny_dir)


PLAIN_LENGTH = 512   # every test prompt fits


@nnx.jit
def _logits(model, ids):
    return model(ids, jnp.arange(ids.shape[1])[None])[0]


def plain_forward(model, ids, label_ids):
    """Reference: one forward of the whole prompt, log-softmax at its end. Right padding to
    one length (one compilation) leaves the earlier positions as they are: attention is
    causal."""
    padded = np.zeros((1, PLAIN_LENGTH), np.int32)
    padded[0, :len(ids)] = ids
    last = np.asarray(_logits(model, jnp.asarray(padded))[0, len(ids) - 1], np.float64)
    return (last - np.logaddexp.reduce(last))[label_ids]


@pytest.mark.parametrize("chat", [True, False])
def test_shared_prefix_equals_unshared_and_plain_forward(tiny, chat):
    model, tokenizer = tiny
    prompt = prompt_lib.load_judge_prompt("entailment_fewshot", 1)   # fits 256 positions
    base = scoring.NextTokenScorer(model, batch_size=4, bucket=8, pad_id=2)
    shared = scoring.PromptScorer(base, tokenizer, prompt, chat=chat)
    unshared = scoring.PromptScorer(base, tokenizer, prompt, chat=chat, shared=False)
    assert shared.prefix is not None and shared.prefix.length > 80
    assert unshared.prefix is None
    got, want = shared(ITEMS), unshared(ITEMS)
    assert got.shape == (len(ITEMS), 3)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert (got.argmax(1) == want.argmax(1)).all()
    # Token level against an independent plain forward of each whole prompt.
    full = shared.full_ids(ITEMS)
    lp = base.score([f[shared.prefix.length:] for f in full], shared.label_ids, shared.prefix)
    for i, ids in enumerate(full):
        np.testing.assert_allclose(lp[i], plain_forward(model, ids, shared.label_ids),
                                   atol=1e-4)


def test_batch_size_and_order_change_nothing(tiny):
    model, tokenizer = tiny
    prompt = prompt_lib.load_judge_prompt("correctness_fewshot", 2)
    items = [dict(question=d["question"], gold=d["b"], prediction=d["a"]) for d in ITEMS]
    a = scoring.PromptScorer(scoring.NextTokenScorer(model, batch_size=8), tokenizer, prompt)
    b = scoring.PromptScorer(scoring.NextTokenScorer(model, batch_size=1, bucket=32),
                             tokenizer, prompt)
    np.testing.assert_allclose(a(items), b(items), atol=1e-4)
    np.testing.assert_allclose(a(items[::-1])[::-1], a(items), atol=1e-5)


@pytest.mark.parametrize("axes", [dict(data=4, tensor=2), dict(data=2, fsdp=2, tensor=2)])
def test_sharded_equals_single_device(tiny_dir, tiny, axes):
    from se_jax.models.loading import load_llama
    model, tokenizer = tiny
    prompt = prompt_lib.load_judge_prompt("entailment_fewshot", 1)
    one = scoring.PromptScorer(scoring.NextTokenScorer(model, batch_size=8), tokenizer, prompt)
    mesh = make_mesh(axes)
    sharded_model = load_llama(tiny_dir, mesh=mesh)
    eight = scoring.PromptScorer(scoring.NextTokenScorer(sharded_model, mesh=mesh,
                                                         batch_size=8), tokenizer, prompt)
    want, got = one(ITEMS), eight(ITEMS)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert (got.argmax(1) == want.argmax(1)).all()
    # Without a mesh argument the scorer shards over the mesh the model was loaded on.
    assert scoring.NextTokenScorer(sharded_model).mesh is mesh
    assert eight.scorer.batch_size == 8 and eight.scorer.shards == mesh.shape["data"] * mesh.shape["fsdp"]


def test_rejects_labels_that_share_a_first_token(tiny):
    _, tokenizer = tiny
    prompt = prompt_lib.load_judge_prompt("entailment_reference")
    bad = prompt_lib.JudgePrompt(**{**prompt.__dict__, "labels": (("yes", ("yes",)),
                                                                  ("no", ("no", "yes")))})
    with pytest.raises(ValueError, match="share the first token"):
        scoring.label_token_ids(tokenizer, bad, chat=True)


def test_length_batches_and_rows():
    lengths = [5, 17, 3, 16, 40, 9]
    batches = scoring.length_batches(lengths, 2, lambda n: -(-n // 16) * 16)
    seen = np.concatenate([c for c, _ in batches])
    assert sorted(seen.tolist()) == list(range(len(lengths)))
    for chunk, length in batches:
        assert len(chunk) <= 2 and all(lengths[i] <= length for i in chunk)
        assert length % 16 == 0
    assert scoring.padded_rows(3, 2, 16) == 4 and scoring.padded_rows(30, 2, 16) == 16


def test_smollm2_shared_prefix_parity(embedded_gguf):
    """The issue's setting: SmolLM2 judge, the 5-shot prompt, shared == unshared."""
    from se_jax.models.loading import load_llama, load_tokenizer
    model, tokenizer = load_llama("embedded"), load_tokenizer("embedded")
    prompt = prompt_lib.load_judge_prompt("entailment_fewshot", 5)
    base = scoring.NextTokenScorer(model, batch_size=4)
    shared = scoring.PromptScorer(base, tokenizer, prompt)
    unshared = scoring.PromptScorer(base, tokenizer, prompt, shared=False)
    assert shared.prefix.length > 300
    got, want = shared(ITEMS[:4]), unshared(ITEMS[:4])
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert (got.argmax(1) == want.argmax(1)).all()
