"""Run one stage of the experiment, in the experiment's directory layout.

    python launch/stage.py --config=configs/demo.py --stage=splits
    python launch/stage.py --config=configs/demo.py --stage=prepare     # splits, samples,
                                                                        # entropies, original
    python launch/stage.py --config=configs/demo.py --stage=run --method=se_lexical \\
        --tau=1.0 --seed=0                  # label + train + evaluate on validation
    python launch/stage.py --config=configs/demo.py --stage=evaluate --method=original \\
        --split=test

Stages reuse finished artifacts exactly as launch/experiment.py does (the same `Job` of
se_jax/pipeline/experiment.py), so a sweep can fan `--stage=run` out over machines and then call
launch/experiment.py, which finds everything done and writes the report.
Multi-process: the same command in every process (launch/multihost.py locally); the
evaluate stage spreads its shards over processes and process 0 merges them.
"""
from __future__ import annotations

from se_jax.parallel import stop_signal
stop_signal.install()   # first: SIGTERM from here on stops at a boundary, saved

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
_SETTING = flags.DEFINE_string("setting", "", "with config.experiment.settings: the answer "
                               "setting (prompt style) this stage runs, in <workdir>/<setting>")
flags.mark_flag_as_required("stage")


def _run_of_flags():
    """The plan.Run that --method/--tau/--seed/--arm name."""
    from se_jax.pipeline import plan
    if _METHOD.value is None:
        raise app.UsageError(f"--stage={_STAGE.value} needs --method")
    tau = _TAU.value if plan.uses_tau(_METHOD.value) else None
    if plan.uses_tau(_METHOD.value) and tau is None:
        raise app.UsageError(f"--method={_METHOD.value} needs --tau")
    return plan.Run(_METHOD.value, tau, _SEED.value, _ARM.value)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from se_jax.io import stage_io
    from se_jax.config.schema import RunConfig

    # Flags that name directories are checked before anything is written.
    for flag in (_METHOD, _ARM, _SPLIT, _BACKEND):
        if flag.value:
            stage_io.safe_component(flag.value, f"--{flag.name}")
    config = RunConfig.from_configdict(_CONFIG.value)   # checked before JAX starts
    from se_jax.parallel import distributed
    from se_jax.pipeline import experiment as ex
    from se_jax.pipeline.plan import ORIGINAL, SWEEP_SPLIT

    distributed.initialize()
    stage = _STAGE.value
    run = _run_of_flags() if stage in ("label", "train", "run") or (
        stage == "evaluate" and _METHOD.value != ORIGINAL) else None
    setting = _SETTING.value
    if setting:
        if setting not in config.experiment.settings:
            raise app.UsageError(f"--setting={setting} is not one of "
                                 f"config.experiment.settings={config.experiment.settings}")
        config = config.replace(prompt=dict(style=setting), experiment=dict(settings=()))
    elif config.experiment.settings:
        raise app.UsageError(f"config.experiment.settings={config.experiment.settings}: name "
                             f"the answer setting with --setting")
    job, sweep = ex.start(config, setting)
    if stage == "splits":
        print("\n".join(f"{k}: {v}" for k, v in job.questions.items()))
    elif stage == "prepare":
        ex.prepare(job, sweep)
    elif stage == "sample":
        print(job.sample(_SPLIT.value))
    elif stage == "entropy":
        backend = _BACKEND.value or job.config.entropy.backend
        print(job.entropy(backend, _SPLIT.value, job.sample(_SPLIT.value)))
    elif stage == "label":
        print(ex.prepare(job, sweep, evaluate_original=False).sft(job, run)())
    elif stage == "train":
        job.trained_model(run, ex.prepare(job, sweep, evaluate_original=False).sft(job, run)())
        print(job.layout.train(run))
    elif stage == "run":
        prep = ex.prepare(job, sweep)
        print(job.evaluate_judged(run.tag, lambda: job.trained_model(run, prep.sft(job, run)()),
                                  [SWEEP_SPLIT]))
    elif stage == "evaluate":
        if run is None:
            print(job.evaluate_judged(ORIGINAL, lambda: job.resident().original_model(
                job.config.training), [_SPLIT.value]))
        else:
            prep = ex.prepare(job, sweep, evaluate_original=False)
            print(job.evaluate_judged(run.tag, lambda: job.trained_model(
                run, prep.sft(job, run)()), [_SPLIT.value]))


if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    from se_jax.pipeline import cli
    cli.run(main)
