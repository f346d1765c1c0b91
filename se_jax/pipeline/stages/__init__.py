"""Stages: the I/O edge of each step (read inputs, resume, write outputs beside config.json).

Each stage writes the whole config beside its outputs and, on a rerun into the same
directory, refuses a config that differs in a section its results depend on
(`stage_io.write_config(..., depends_on=DEPENDS_ON[stage], ignore=NEUTRAL_KEYS)`).

Each stage claims its output directory while it runs (`claimed`, stage_io.writer_lock):
a duplicate task of a scheduler writing the same directory at once is refused (or waits,
SE_JAX_CLAIM_WAIT), so the directory holds one run's results.
"""
import contextlib
import functools
import inspect
from pathlib import Path
from typing import Callable, Sequence

from absl import logging

from se_jax.io import stage_io
from se_jax.parallel import distributed
from se_jax.parallel.mesh import my_shards


def claimed(fn: Callable) -> Callable:
    """Decorate a stage function with an `out_dir` argument: process 0 holds
    `stage_io.writer_lock(out_dir)` while it runs (the other processes follow it through
    barriers)."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        out_dir = signature.bind(*args, **kwargs).arguments["out_dir"]
        lock = (stage_io.writer_lock(out_dir)
                if distributed.is_main_process() else contextlib.nullcontext())
        with lock:
            return fn(*args, **kwargs)
    return run


def my_share(name: str, where: Path, sizes: Sequence[int], pending: Sequence[int], *,
             spread: bool = True, unit: str = "questions"
             ) -> tuple[list[int], stage_io.Progress]:
    """The pending shards this process computes (process i % P's when `spread`, else all)
    and a progress over its work: shards finished before count there only when one process
    does them all (a resume), so each process's bar ends at its own total.
    `sizes`: items per shard."""
    if len(pending) < len(sizes):
        logging.info("%s: resuming: %d of %d shards already done in %s", name,
                     len(sizes) - len(pending), len(sizes), where)
    mine = my_shards(pending) if spread else list(pending)
    if len(mine) == len(pending):
        total, initial = sum(sizes), sum(sizes) - sum(sizes[i] for i in pending)
    else:
        total, initial = sum(sizes[i] for i in mine), 0
    return mine, stage_io.Progress(name, total=total, unit=unit, initial=initial)


# Config sections each stage's results depend on (its own and every upstream stage's).
_SAMPLE = ("seed", "on_bad_input", "model", "prompt", "sampling")
_ENTROPY = _SAMPLE + ("entropy",)
_LABEL = _ENTROPY + ("labels",)
_TRAIN = _LABEL + ("training",)
# The probe stage reads the SE subset's entropies and its hidden states; `labels` names
# the entropy field, the judge of the base model's errors and the SE subset's size.
_PROBE = _ENTROPY + ("probes", "labels")
DEPENDS_ON = dict(sample=_SAMPLE, entropy=_ENTROPY, label=_LABEL, train=_TRAIN, probe=_PROBE)

# Keys within those sections that never change results: output/input paths, batching and
# logging knobs. A run resumes, and a downstream stage reuses upstream outputs, across them.
NEUTRAL_KEYS = (
    "model.scan_layers",
    "sampling.input", "sampling.out_dir",
    "entropy.generations", "entropy.out_dir", "entropy.batch_size", "entropy.buckets", "entropy.llm_batch_size",
    "labels.out_dir", "labels.generations", "labels.uncertainty", "labels.slick_answers",
    "training.out_dir", "training.sft", "training.max_steps", "training.save_every",
    "training.keep", "training.async_checkpoint", "training.log_every_seconds",
    "training.log_every_steps", "training.export_adapter", "training.export_merged",
    "evaluation.batch_size", "evaluation.bootstrap_samples",
)
