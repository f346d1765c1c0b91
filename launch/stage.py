"""Run one stage of the experiment, in the experiment's directory layout.

    python launch/stage.py --config=configs/demo.py --stage=splits
    python launch/stage.py --config=configs/demo.py --stage=prepare     # splits, samples,
                                                                        # entropies, original
    python launch/stage.py --config=configs/demo.py --stage=run --method=se_lexical \\
        --tau=1.0 --seed=0                  # label + train + evaluate on validation
    python launch/stage.py --config=configs/demo.py --stage=evaluate --method=original \\
        --split=test

Stages reuse finished artifacts exactly as launch/experiment.py does (the same functions of
se_jax/experiment.py), so a sweep can fan `--stage=run` out over machines and then call
launch/experiment.py, which finds everything done and writes the report.
Multi-process: the same command in every process (launch/multihost.py locally); the
evaluate stage spreads its shards over processes and process 0 merges them.
"""
from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "experiment config")
STAGES = ("splits", "prepare", "sample", "entropy", "label", "train", "run", "evaluate")
_STAGE = flags.DEFINE_enum("stage", None, STAGES, "which stage to run")
_METHOD = flags.DEFINE_string("method", None, "label/train/run/evaluate: the method "
                              "(se_<backend>, rtuning, rtuning_u, idk; evaluate: original)")
_TAU = flags.DEFINE_float("tau", None, "label/train/run/evaluate: tau (SE, R-Tuning-U)")
_SEED = flags.DEFINE_integer("seed", 0, "train/run/evaluate: training seed")
_ARM = flags.DEFINE_string("arm", "", "train/run/evaluate: optional arm "
                           "(self_distill, attention_only)")
_SPLIT = flags.DEFINE_string("split", "val", "sample/entropy/evaluate: the split")
_BACKEND = flags.DEFINE_string("backend", None, "entropy: equivalence backend "
                               "(default config.entropy.backend)")
flags.mark_flag_as_required("stage")


def _run_of_flags(ex):
    """The experiment.Run that --method/--tau/--seed/--arm name."""
    if _METHOD.value is None:
        raise app.UsageError(f"--stage={_STAGE.value} needs --method")
    tau = _TAU.value if ex.uses_tau(_METHOD.value) else None
    if ex.uses_tau(_METHOD.value) and tau is None:
        raise app.UsageError(f"--method={_METHOD.value} needs --tau")
    return ex.Run(_METHOD.value, tau, _SEED.value, _ARM.value)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from se_jax import stage_io, validation

    # Flags that name directories are checked before anything is written.
    for flag in (_METHOD, _ARM, _SPLIT, _BACKEND):
        if flag.value:
            stage_io.safe_component(flag.value, f"--{flag.name}")
    config = _CONFIG.value
    validation.validate_stage(config, "experiment")  # before JAX starts
    from se_jax import distributed
    from se_jax import experiment as ex
    distributed.initialize()
    ex.validate_config(config)
    layout = ex.Layout.from_config(config)
    questions = ex.prepare_splits(config, layout)
    stage = _STAGE.value
    if stage == "splits":
        print("\n".join(f"{k}: {v}" for k, v in questions.items()))
        return
    context = ex.Context.create(config, layout, questions)
    if stage == "prepare":
        context.prepare()
    elif stage == "sample":
        print(ex.sample_split(config, layout, _SPLIT.value, questions[_SPLIT.value]))
    elif stage == "entropy":
        backend = _BACKEND.value or config.entropy.backend
        gens = ex.sample_split(config, layout, _SPLIT.value, questions[_SPLIT.value])
        print(ex.entropy_split(config, layout, backend, _SPLIT.value, gens))
    elif stage == "label":
        context.prepare(evaluate_original=False)
        print(context.label(_run_of_flags(ex)))
    elif stage == "train":
        context.prepare(evaluate_original=False)
        print(context.train(_run_of_flags(ex)))
    elif stage == "run":
        context.prepare()
        print(context.train_and_evaluate(_run_of_flags(ex), [ex.SWEEP_SPLIT]))
    elif stage == "evaluate":
        if _METHOD.value == ex.ORIGINAL:
            print(context.evaluate_original([_SPLIT.value]))
        else:
            context.prepare(evaluate_original=False)
            print(context.train_and_evaluate(_run_of_flags(ex), [_SPLIT.value]))


if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    from se_jax import cli
    cli.run(main)
