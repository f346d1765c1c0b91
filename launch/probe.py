"""The probe stage on its own: semantic entropy probes from an SE subset's hidden states and
entropies, scoring more question sets (se_jax/pipeline/stages/probe.py).

    python launch/probe.py --config=configs/sep_entity_questions.py \
        --subset=runs/x/sample/train_se_subset \
        --uncertainty=runs/x/entropy/lexical/train_se_subset/uncertainty.jsonl \
        --score=probe_only=runs/x/sample/train_probe_only \
        --score=test=runs/x/evaluate/alias/original/test --train_sets=probe_only \
        --out=runs/x/probe/lexical

A `--score` directory holds `hidden_states.npz` and `generations.jsonl` (judged) or
`outcomes.jsonl` (the evaluate stage's). Then label from the probe's scores:

    python launch/label.py --config=... --config.labels.method=sep --config.labels.tau=1.0 \
        --config.labels.generations=runs/x/probe/lexical/train_scores.jsonl
"""
from __future__ import annotations

from se_jax.parallel import stop_signal
stop_signal.install()   # first: SIGTERM from here on stops at a boundary, saved

from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/base.py", "run config")
_SUBSET = flags.DEFINE_string("subset", None, "sample directory of the SE subset "
                              "(generations.jsonl + hidden_states.npz)", required=True)
_UNCERTAINTY = flags.DEFINE_string("uncertainty", None, "the SE subset's uncertainty.jsonl",
                                   required=True)
_SCORE = flags.DEFINE_multi_string("score", [], "NAME=DIR: a question set to score")
_TRAIN_SETS = flags.DEFINE_list("train_sets", [], "scored sets that are training questions")
_OUT = flags.DEFINE_string("out", None, "output directory", required=True)


def _records(directory: Path) -> Path:
    for name in ("generations.jsonl", "outcomes.jsonl"):
        if (directory / name).is_file():
            return directory / name
    raise app.UsageError(f"--score: {directory} has no generations.jsonl or outcomes.jsonl")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from se_jax.pipeline import cli
    config = cli.stage_config(_CONFIG.value)
    from se_jax.io.hidden_states import FILE_NAME
    from se_jax.pipeline.stages.probe import run_probe
    score = {}
    for item in _SCORE.value:
        name, sep, directory = item.partition("=")
        if not sep:
            raise app.UsageError(f"--score={item!r}: expected NAME=DIR")
        score[name] = (Path(directory) / FILE_NAME, _records(Path(directory)))
    subset = Path(_SUBSET.value)
    print(run_probe(config, subset / FILE_NAME, _UNCERTAINTY.value,
                    subset / "generations.jsonl", _OUT.value, score=score,
                    train_sets=tuple(_TRAIN_SETS.value)))


if __name__ == "__main__":
    from se_jax.pipeline import cli
    cli.run(main)
