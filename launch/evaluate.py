"""Evaluate any model on one split of the experiment's data, with the configured judge.

    python launch/evaluate.py --config=configs/demo.py --model=embedded --split=test
    python launch/evaluate.py --config=configs/demo.py \\
        --model=runs/demo/train/se_lexical/tau_0.75/seed_0/merged --split=ood_entity_questions_ood

`--model`: "embedded", a Hugging Face directory (e.g. a train stage's merged/ export), a .gguf
file or a hub id. Writes outcomes.jsonl / metrics.json / config.json under
<workdir>/evaluate/<judge>/<tag>/<split> (resumable) and prints the metrics with the judge's name.
"""
from __future__ import annotations

import json

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "experiment config")
_MODEL = flags.DEFINE_string("model", "embedded", "model to evaluate")
_TAG = flags.DEFINE_string("tag", None, "name of the evaluation directory (default: from "
                           "--model)")
_SPLIT = flags.DEFINE_string("split", "test", "split of the experiment's data")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from se_jax import stage_io, validation
    if _TAG.value is not None:  # it names a directory: checked before anything is written
        stage_io.safe_component(_TAG.value, "--tag")
    stage_io.safe_component(_SPLIT.value, "--split")
    config = _CONFIG.value
    validation.validate_stage(config, "experiment")  # before JAX starts
    from se_jax import distributed
    from se_jax import experiment as ex
    distributed.initialize()
    ex.validate_config(config)
    layout = ex.Layout.from_config(config)
    questions = ex.prepare_splits(config, layout)
    if _SPLIT.value not in questions:
        raise app.UsageError(f"--split={_SPLIT.value!r}; the experiment's splits are "
                             f"{sorted(questions)}")
    ctx = ex.Context.create(config, layout, questions)
    tag = _TAG.value or "model_" + "".join(c if c.isalnum() else "_" for c in _MODEL.value)
    metrics = ex.evaluate_model(config, layout, tag, lambda: ctx.models.load(_MODEL.value),
                                [_SPLIT.value], questions, ctx.judge, mesh=ctx.models.mesh)
    print(json.dumps(metrics[_SPLIT.value], indent=2, sort_keys=True))


if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    from se_jax import cli
    cli.run(main)
