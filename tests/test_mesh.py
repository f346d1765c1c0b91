"""Meshes: the sharded forward (8 simulated devices) equals one device; 2 processes run a model."""
from __future__ import annotations

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from se_jax.parallel.mesh import ShardingRules, batch_sharding, make_mesh
from se_jax.models.greedy import greedy_generate
from se_jax.models.llama import KVCache
from se_jax.models.loading import load_llama, load_tokenizer, to_hf_state_dict
from tiny_models import TOKENIZER_VOCAB, make_tiny_llama_dir
from conftest import REPO

PROMPTS = [[1, 9690, 198, 2683, 359], [1, 5356, 5646], [11173, 3365, 42, 7, 8, 9, 10], [4, 5]]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return make_tiny_llama_dir(tmp_path_factory.mktemp("tiny_mesh"), "qwen2")


@pytest.fixture(scope="module")
def single(tiny_dir):
    return load_llama(tiny_dir, mesh=make_mesh({"data": 1}, devices=jax.devices()[:1]))


def test_make_mesh_sizes_and_errors():
    assert dict(make_mesh({"data": -1, "tensor": 2}).shape) == {"data": 4, "fsdp": 1, "tensor": 2}
    assert dict(make_mesh({"data": 2, "fsdp": -1, "tensor": 2}).shape)["fsdp"] == 2
    with pytest.raises(ValueError, match="needs 6 devices"):
        make_mesh({"data": 3, "tensor": 2})
    with pytest.raises(ValueError, match="unknown axes"):
        make_mesh({"model": 8})
    with pytest.raises(ValueError, match="not divisible"):
        make_mesh({"data": -1, "tensor": 3})
    # num_devices: the first N devices only (0 = all).
    two = make_mesh({"data": -1, "tensor": 1, "num_devices": 2})
    assert dict(two.shape)["data"] == 2 and list(two.devices.flat) == jax.devices()[:2]
    assert make_mesh({"data": -1, "num_devices": 0}).size == len(jax.devices())
    with pytest.raises(ValueError, match="only 8 devices"):
        make_mesh({"data": -1, "num_devices": 9})


def test_rules_replicate_dimensions_the_mesh_does_not_divide():
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    rules = ShardingRules()
    assert rules.spec(("embed", "heads"), (64, 64), mesh) == PartitionSpec("fsdp", "tensor")
    assert rules.spec(("embed", "kv_heads"), (64, 3), mesh) == PartitionSpec("fsdp", None)
    assert rules.spec(("batch", None), (8, 5), mesh) == PartitionSpec(("data", "fsdp"), None)
    assert rules.spec(("batch", None), (6, 5), mesh) == PartitionSpec(None, None)


@nnx.jit
def run(model, tokens, positions, cache):
    return model(tokens, positions, cache)


@pytest.mark.parametrize("axes", [{"data": 4, "tensor": 2}, {"data": 2, "fsdp": 2, "tensor": 2}])
def test_sharded_forward_equals_single_device(tiny_dir, single, axes):
    mesh, rules = make_mesh(axes), ShardingRules()
    model = load_llama(tiny_dir, mesh=mesh, rules=rules)
    q = model.layers[0].self_attn.q_proj.kernel[...]
    assert q.sharding.spec == rules.spec(("embed", "heads"), q.shape, mesh)
    assert "tensor" in q.sharding.spec and len(q.addressable_shards) == 8
    tokens = np.random.RandomState(0).randint(0, TOKENIZER_VOCAB, (4, 6)).astype(np.int32)
    positions = np.tile(np.arange(6, dtype=np.int32), (4, 1))
    positions[1, :2] = -1  # a left-padded row

    def prefill_then_step(model, cache, put):
        logits, cache = run(model, put(tokens), put(positions), cache)
        step, cache = run(model, put(tokens[:, :1]), put(positions[:, -1:] + 1), cache)
        return np.asarray(logits), np.asarray(step)

    sharded = prefill_then_step(model, KVCache.init_sharded(model.config, 4, 8, mesh, rules),
                                lambda x: jax.device_put(x, batch_sharding(mesh, rules)))
    reference = prefill_then_step(single, KVCache.init(single.config, 4, 8), jnp.asarray)
    for s, r in zip(sharded, reference):
        np.testing.assert_allclose(s, r, rtol=0, atol=1e-5)
    exported, expected = to_hf_state_dict(model), to_hf_state_dict(single)  # gathers shards
    assert exported.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(exported[name], expected[name], err_msg=name)


@nnx.jit
def hidden_after_head(model, tokens, positions, head):
    return model.hidden(tokens, positions, prefix=head)[0]


def test_a_shared_head_folded_per_batch_shard_equals_single_device(tiny_dir, single):
    """Training's shared prompt head on a mesh: each of the 4 batch shards leads its rows with
    the head, and the rows' states equal one device's whole rows (head + row)."""
    mesh, rules = make_mesh({"data": 4, "tensor": 2}), ShardingRules()
    model = load_llama(tiny_dir, mesh=mesh, rules=rules)
    rng = np.random.RandomState(1)
    head = rng.randint(0, TOKENIZER_VOCAB, (1, 5)).astype(np.int32)
    rows = rng.randint(0, TOKENIZER_VOCAB, (8, 4)).astype(np.int32)
    positions = np.tile(np.arange(5, 9, dtype=np.int32), (8, 1))
    positions[3, -1:] = -1                                       # a right-padded row
    fold, tokens, _, _ = model._fold_head(jnp.asarray(head), jnp.asarray(rows),
                                          jnp.asarray(positions))
    assert (fold.groups, fold.rows) == (4, 2) and tokens.shape == (4 * (2 + 2), 4)
    np.testing.assert_array_equal(np.asarray(tokens)[0::4, :], np.repeat(head[:, :4], 4, axis=0))
    put = lambda x: jax.device_put(x, batch_sharding(mesh, rules))
    folded = np.asarray(hidden_after_head(model, put(rows), put(positions), jnp.asarray(head)))
    whole = np.concatenate([np.repeat(head, 8, axis=0), rows], axis=1)
    whole_pos = np.concatenate([np.tile(np.arange(5, dtype=np.int32), (8, 1)), positions], axis=1)
    reference = np.asarray(single.hidden(jnp.asarray(whole), jnp.asarray(whole_pos))[0])[:, 5:]
    real = positions >= 0
    np.testing.assert_allclose(folded[real], reference[real], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="does not split into 4 batch shards"):
        hidden_after_head(model, jnp.asarray(rows[:6]),
                          jnp.asarray(positions[:6]), jnp.asarray(head))


def test_greedy_on_mesh_equals_single_device(tiny_dir, single):
    mesh = make_mesh({"data": 4, "tensor": 2})
    model = load_llama(tiny_dir, mesh=mesh)
    sharded = greedy_generate(model, PROMPTS[:3], 6, mesh=mesh, stop_at_eos=False)  # 3 rows -> 4
    reference = greedy_generate(single, PROMPTS[:3], 6, stop_at_eos=False)
    np.testing.assert_array_equal(sharded.tokens, reference.tokens)


def test_two_processes_load_and_run(tiny_dir, single, tmp_path):
    """launch/multihost.py starts 2 CPU processes (2 devices each, gloo); together they run
    the smoke job on a data=2 x tensor=2 mesh and must answer as one device does."""
    out = tmp_path / "smoke.json"
    cmd = [sys.executable, "launch/multihost.py", "--num_processes=2", "--local_devices=2",
           "--timeout=240", "--", sys.executable, "launch/smoke.py",
           f"--config.model.path={tiny_dir}", "--config.mesh.data=2", "--config.mesh.tensor=2",
           "--max_new_tokens=4", "--question=What is the capital of France?",
           "--question=Name a prime number.", f"--output_json={out}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "process 0/2: 2 local of 4 devices" in proc.stdout
    assert "process 1/2: 2 local of 4 devices" in proc.stdout
    result = json.loads(out.read_text())
    tok = load_tokenizer(tiny_dir)
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=True,
                                       add_generation_prompt=True, return_dict=True)["input_ids"]
               for q in result["questions"]]
    reference = greedy_generate(single, prompts, 4, eos_ids=[tok.eos_token_id])
    assert result["token_ids"] == [t[:n].tolist() for t, n in
                                   zip(reference.tokens, reference.lengths)]
