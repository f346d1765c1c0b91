"""Evaluate any model on one split of the experiment's data, with the configured judge.

    python launch/evaluate.py --config=configs/demo.py --model=embedded --split=test
    python launch/evaluate.py --config=configs/demo.py --model=embedded \\
        --adapter=runs/demo/train/se_lexical/tau_1.00/seed_0/adapter --split=test

`--model`: "embedded", a Hugging Face directory, a .gguf file or a hub id; `--adapter`: a
PEFT adapter directory (a train stage's adapter/, or PEFT's own) put on top of it. Writes
outcomes.jsonl / metrics.json / config.json under <workdir>/evaluate/<judge>/<tag>/<split>
(resumable) and prints the metrics with the judge's name.
"""
from __future__ import annotations

from se_jax.parallel import stop_signal
stop_signal.install()   # first: SIGTERM from here on stops at a boundary, saved

import json

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "experiment config")
_MODEL = flags.DEFINE_string("model", "embedded", "base model to evaluate")
_ADAPTER = flags.DEFINE_string("adapter", "", "PEFT adapter directory on top of --model")
_TAG = flags.DEFINE_string("tag", None, "name of the evaluation directory (default: from "
                           "--model and --adapter)")
_SPLIT = flags.DEFINE_string("split", "test", "split of the experiment's data")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from se_jax.io import stage_io
    from se_jax.config.schema import RunConfig
    if _TAG.value is not None:  # it names a directory: checked before anything is written
        stage_io.safe_component(_TAG.value, "--tag")
    stage_io.safe_component(_SPLIT.value, "--split")
    config = RunConfig.from_configdict(_CONFIG.value)   # checked before JAX starts
    from se_jax.parallel import distributed
    from se_jax.tuning import export
    from se_jax.pipeline import experiment as ex
    distributed.initialize()
    job, _ = ex.start(config.replace(model=dict(path=_MODEL.value)))
    if _SPLIT.value not in job.questions:
        raise app.UsageError(f"--split={_SPLIT.value!r}; the experiment's splits are "
                             f"{sorted(job.questions)}")
    name = _MODEL.value + (f"+{_ADAPTER.value}" if _ADAPTER.value else "")
    tag = _TAG.value or "model_" + "".join(c if c.isalnum() else "_" for c in name)[-100:]

    def model():
        base = job.resident().model
        if not _ADAPTER.value:
            return base
        from flax import nnx
        return export.load_peft_adapter(nnx.clone(base), _ADAPTER.value)

    metrics = job.evaluate(tag, model, [_SPLIT.value])
    print(json.dumps(metrics[_SPLIT.value], indent=2, sort_keys=True))


if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    from se_jax.pipeline import cli
    cli.run(main)
