"""The entropy stage: generations.jsonl -> uncertainty.jsonl (semantic ids, equivalence
matrices, discrete/weighted semantic entropy, naive and exact-string entropy).

    python launch/entropy.py --config=configs/base.py --generations=runs/demo/sample/train \\
        --out=runs/demo/entropy --config.entropy.backend=deberta \\
        --config.entropy.nli_path=/models/deberta-v2-xlarge-mnli

Without --config.entropy.nli_path the deberta backend stops before any work, naming the
missing field (choose --config.entropy.backend=lexical by name instead). Rerunning the same
command resumes.
"""
from __future__ import annotations

from se_jax.parallel import stop_signal
stop_signal.install()   # first: SIGTERM from here on stops at a boundary, saved

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/base.py", "run config")
_GENERATIONS = flags.DEFINE_string("generations", None, "generations.jsonl or its directory "
                                   "(default config.entropy.generations, else <workdir>/sample/train)")
_OUT = flags.DEFINE_string("out", None, "output directory (default config.entropy.out_dir, "
                           "else <workdir>/entropy/<backend>/train)")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from se_jax.pipeline import cli
    config = cli.stage_config(_CONFIG.value, {
        "entropy.generations": _GENERATIONS.value, "entropy.out_dir": _OUT.value})
    from se_jax.pipeline.layout import entropy_paths
    from se_jax.pipeline.stages.entropy import run_entropy
    print(run_entropy(config, *entropy_paths(config)))


if __name__ == "__main__":
    from se_jax.pipeline import cli
    cli.run(main)
