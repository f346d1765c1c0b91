"""The train stage: SFT set -> LoRA (or partly frozen full) fine-tuning -> checkpoints + export.

    python launch/train.py --config=configs/base.py --config.workdir=runs/demo \
        --config.training.epochs=7 --config.training.batch_size=48

Killed at any point, the same command resumes from the newest checkpoint.
"""
from __future__ import annotations

from se_jax.parallel import stop_signal
stop_signal.install()   # first: SIGTERM from here on stops at a boundary, saved

from absl import app
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/base.py", "run config")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from se_jax.pipeline import cli
    config = cli.stage_config(_CONFIG.value)
    from se_jax.pipeline.layout import train_paths
    from se_jax.pipeline.stages.train import run_train
    print(run_train(config, *train_paths(config)).out_dir)


if __name__ == "__main__":
    from se_jax.pipeline import cli
    cli.run(main)
