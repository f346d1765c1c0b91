"""Crash safety of the train stage.

Resume: a real `launch/train.py` subprocess is killed with SIGKILL in the middle of the run,
restarted with the same flags, and must end with bit-identical LoRA weights to an
uninterrupted run (same batches from (seed, epoch), same dropout masks from (seed, step),
the gradient accumulator of optax.MultiSteps,
the self-distillation teacher restored from the checkpoint too).

NaN: a loss that turns non-finite stops the run with a clear error, and the last good
checkpoint on disk is intact.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from se_jax.tuning import checkpointing
from se_jax.parallel import mesh as mesh_lib
from se_jax.tuning import sft_data
from se_jax.tuning import training
from se_jax.models.loading import load_llama
import standalone
from tiny_models import make_tiny_llama_dir

REPO = Path(__file__).resolve().parents[1]
STEPS = 8  # 32 examples / batch 8 = 4 steps per epoch, 2 epochs

CONFIG_TEMPLATE = '''
from configs.base import get_config as base_config

def get_config():
    c = base_config()
    c.model.path = {model!r}
    c.training.update(dict(
        batch_size=8, epochs=2, learning_rate=1e-3, warmup_ratio=0.2, save_every=1, keep=2,
        grad_accum_steps=2,  # a kill may land between micro-batches of one update
        lora=dict(rank=4, alpha=8.0, dropout=0.1, target_modules=("q_proj", "v_proj")),
        distill=dict(enabled=True, weight=1.0, temperature=0.5, teacher_epoch=0),
        sft={sft!r}, export_merged=False, log_every_steps=1))
    return c
'''


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return make_tiny_llama_dir(tmp_path_factory.mktemp("tiny_resume"))


@pytest.fixture(scope="module")
def config_file(tiny_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume_cfg")
    rng = np.random.default_rng(0)
    words = ["river", "capital", "author", "born", "king", "song", "planet", "war"]
    records = [{"id": f"q{i}", "question": f"Which {' '.join(rng.choice(words, 1 + i % 5))}?",
                "target": ("I don't know the answer." if i % 3 == 0
                           else " ".join(rng.choice(words, 1 + i % 4))),
                "label": "abstain" if i % 3 == 0 else "answer", "reason": {}}
               for i in range(32)]
    sft = root / "sft.jsonl"
    sft.write_text("".join(json.dumps(r) + "\n" for r in records))
    path = root / "resume_config.py"
    path.write_text(CONFIG_TEMPLATE.format(model=tiny_dir, sft=str(sft)))
    return path


def _load_config(path: Path, out_dir: Path):
    spec = importlib.util.spec_from_file_location("resume_config", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(REPO))
    spec.loader.exec_module(module)
    config = module.get_config()
    config.training.out_dir = str(out_dir)
    return config


def _launch(config_file: Path, out_dir: Path) -> subprocess.Popen:
    cmd = [sys.executable, str(REPO / "launch" / "train.py"), f"--config={config_file}",
           f"--config.training.out_dir={out_dir}"]
    # The restart reuses the killed run's compiled step (persistent compilation cache).
    env = dict(os.environ, PYTHONPATH=str(REPO),
               JAX_COMPILATION_CACHE_DIR=str(out_dir.parent / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _saved_steps(ckpt_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in ckpt_dir.glob("*") if p.name.isdigit())


def test_sigkill_mid_run_then_restart_reaches_identical_weights(config_file, tmp_path):
    reference = standalone.train(_load_config(config_file, tmp_path / "uninterrupted")).out_dir
    summary = json.loads((reference / "summary.json").read_text())
    assert summary["steps"] == STEPS and summary["resumed_from"] is None

    out = tmp_path / "killed"
    proc = _launch(config_file, out)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        steps = _saved_steps(out / "checkpoints")
        if steps and steps[-1] >= 2:
            proc.send_signal(signal.SIGKILL)  # kill -9, mid-run
            break
        time.sleep(0.02)
    log = proc.communicate()[0]
    assert proc.returncode == -signal.SIGKILL, f"run was not killed mid-run:\n{log[-3000:]}"
    assert not (out / "adapter").exists()

    rerun = _launch(config_file, out)
    log = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, log[-3000:]
    resumed = json.loads((out / "summary.json").read_text())
    assert 2 <= resumed["resumed_from"] < STEPS, resumed
    assert resumed["steps"] == STEPS

    ours = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    ref = load_file(str(reference / "adapter" / "adapter_model.safetensors"))
    assert ours.keys() == ref.keys() and len(ours) == 8
    for name in ref:
        np.testing.assert_array_equal(ours[name], ref[name], err_msg=name)
    # The run really trained: B left zero and moved by the same amount in both runs.
    assert max(np.abs(v).max() for n, v in ref.items() if "lora_B" in n) > 1e-4


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(config_file, tmp_path):
    config = _load_config(config_file, tmp_path)
    tc = config.training
    tc.distill.enabled = False
    model = load_llama(config.model.path)
    training.prepare_model(model, tc, seed=0)
    rng = np.random.default_rng(0)
    seqs = [sft_data.TokenizedExample(str(i), rng.integers(3, 1000, 20).astype(np.int32), 10)
            for i in range(32)]
    mesh = mesh_lib.make_mesh(config.mesh)
    ckpt_dir = str(tmp_path / "checkpoints")
    tc.max_steps = 3
    first = training.train(model, seqs, tc, workdir=ckpt_dir, mesh=mesh, seed=0)
    assert first.steps == 3 and all(np.isfinite(h["loss"]) for h in first.history)
    good = jax.tree.map(np.asarray, nnx.to_pure_dict(training.trainable_state(model, "lora")))

    # A frozen weight turns NaN (e.g. a corrupted shard): step 4 must not be saved.
    model.train()
    model.norm.weight[...] = model.norm.weight[...].at[0].set(jnp.nan)
    tc.max_steps = -1
    with pytest.raises(training.NonFiniteLossError,
                       match=r"non-finite loss=nan.*step 4 .*Last good checkpoint: step 3"):
        training.train(model, seqs, tc, workdir=ckpt_dir, mesh=mesh, seed=0)

    manager = checkpointing.make_manager(ckpt_dir, save_every=1, keep=2, async_save=False)
    assert manager.latest_step() == 3
    like = {"params": good, "opt": nnx.to_pure_dict(nnx.state(nnx.Optimizer(
        model, training.make_optimizer(training.OptimizerSpec.from_config(tc, STEPS)), wrt=nnx.LoRAParam)))}
    step, restored = checkpointing.restore_latest(manager, like)
    assert step == 3
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, restored["params"]),
                 good)


def test_solo_checkpoint_restores_the_train_state(tmp_path):
    """A run trained alone by one process of several checkpoints through SoloManager
    (Orbax's single-process mode writes numpy arrays on process 0 only): the real train
    state (int-keyed dicts in optax's state, bfloat16 / int leaves) comes back in its
    structure, dtypes and shardings, and its params alone for a finished run."""
    from tests.typed_configs import training as training_cfg
    model = load_llama(make_tiny_llama_dir(tmp_path / "m"))
    tc = training_cfg(mode="lora", lora=dict(rank=2, alpha=4.0), distill=dict(enabled=False))
    training.prepare_model(model, tc, seed=0)
    mesh = mesh_lib.make_mesh({"data": 1}, jax.devices()[:1])
    state = training.init_train_state(model, tc, mesh=mesh, num_updates=4).checkpoint()
    manager = checkpointing.make_manager(tmp_path / "ckpt", save_every=1, keep=1,
                                         async_save=False, solo=True)
    assert checkpointing.save(manager, 1, state, force=True)
    step, got = checkpointing.restore_latest(manager, state)
    manager.close()
    assert step == 1 and jax.tree.structure(got) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(state)):
        assert a.dtype == b.dtype and a.sharding == b.sharding
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    fresh = checkpointing.make_manager(tmp_path / "ckpt", save_every=1, keep=1,
                                       async_save=False, solo=True)   # as restored_run_model
    params = checkpointing.restore_latest_params(fresh, state["params"])
    fresh.close()
    assert jax.tree.structure(params) == jax.tree.structure(state["params"])
