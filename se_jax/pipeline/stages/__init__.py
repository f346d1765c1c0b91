"""Stages: the I/O edge of each step (read inputs, resume, write outputs beside config.json).

Each stage writes the whole config beside its outputs and, on a rerun into the same
directory, refuses a config that differs in a section its results depend on
(`stage_io.write_config(..., depends_on=DEPENDS_ON[stage], ignore=NEUTRAL_KEYS)`).
"""

# Config sections each stage's results depend on (its own and every upstream stage's).
_SAMPLE = ("seed", "on_bad_input", "model", "prompt", "sampling")
_ENTROPY = _SAMPLE + ("entropy",)
_LABEL = _ENTROPY + ("labels",)
_TRAIN = _LABEL + ("training",)
DEPENDS_ON = dict(sample=_SAMPLE, entropy=_ENTROPY, label=_LABEL, train=_TRAIN)

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
