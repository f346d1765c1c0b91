"""The sample stage: questions JSONL -> generations.jsonl (1 low-temperature + M samples
per question, with token log-probabilities), resumable.

    python launch/sample.py --questions=data/val.jsonl --out=runs/demo/sample/train
    python launch/sample.py --config=configs/base.py --questions=q.jsonl --out=out \\
        --config.model.path=/ckpt/Llama-3.1-8B-Instruct --config.sampling.num_samples=10 \\
        --config.mesh.data=-1 --config.mesh.tensor=4

Rerunning the same command after an interruption (even kill -9) resumes; the result is
byte-identical to an uninterrupted run. Bad input lines are skipped (listed in
<out>/skipped.jsonl) or, with --config.on_bad_input=error, stop the run before any work.
"""
from __future__ import annotations

from se_jax.parallel import stop_signal
stop_signal.install()   # first: SIGTERM from here on stops at a boundary, saved

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/base.py", "run config")
_QUESTIONS = flags.DEFINE_string("questions", None, "questions JSONL of {id, question, "
                                 "answers} (default config.sampling.input)")
_OUT = flags.DEFINE_string("out", None, "output directory (default config.sampling.out_dir, "
                           "else <workdir>/sample/train)")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from se_jax.pipeline import cli
    config = cli.stage_config(_CONFIG.value, {"sampling.input": _QUESTIONS.value,
                                              "sampling.out_dir": _OUT.value})
    from se_jax.pipeline.layout import sample_paths
    from se_jax.pipeline.stages.sample import run_sample
    print(run_sample(config, *sample_paths(config)))


if __name__ == "__main__":
    from se_jax.pipeline import cli
    cli.run(main)
