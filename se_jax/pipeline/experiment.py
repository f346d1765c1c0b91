"""The paper's experiment, end to end, from one config: the driver.

    splits -> sample(train, val) -> entropy(backend x split) -> original model on every split
           -> for method, tau, seed: label -> train -> evaluate(val)      (the sweep engine)
           -> pick tau per method by mean validation AED (se_jax/pipeline/plan.py)
           -> the picked models (and arms) on in-distribution test and every OOD split
           -> report (report.md with the phase table, results.csv, sweep.csv, PNG plots)

The sweep engine: the generator is loaded once per process (`Resident`); every run trains
fresh adapters on it through one compiled training step and is evaluated straight from
memory through the same compiled sampler (se_jax/pipeline/resident.py). Each unit of work has its
own directory (se_jax/pipeline/layout.py) holding its config.json and a `done.json` written last,
so a rerun after a crash, or with one more method, tau or seed, does only the missing
work. Saved per run: the PEFT adapter and the Orbax state (merged weights only with
training.export_merged).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
from absl import logging

from se_jax.config.schema import RunConfig
from se_jax.io import stage_io
from se_jax.parallel import distributed
from se_jax.parallel.distributed import barrier, is_main_process
from se_jax.pipeline.layout import DONE, Layout, is_done, mark_done
from se_jax.pipeline.plan import (ORIGINAL, PROTOCOL_NAMES, SWEEP_SPLIT, ConfigError, Run,
                                  Sweep, backends_needed, method_uses, pick_taus, result_row,
                                  entropy_backend, label_method, needs_full_train,
                                  se_backend, separate_judge, validate)
from se_jax.io.telemetry import Telemetry
from se_jax.data import splits as split_lib
from se_jax.parallel.mesh import make_mesh
from se_jax.pipeline.resident import Resident, free
from se_jax.pipeline.stages import teach
from se_jax.abstention import judges
from se_jax.pipeline.stages import sample
from se_jax.pipeline.stages import entropy
from se_jax.pipeline.stages import label
from se_jax.pipeline.stages import train
from se_jax.pipeline.stages import evaluate
from se_jax.pipeline import cost
from se_jax.pipeline import judge_stage
from se_jax.pipeline import labelling_cost
from se_jax.pipeline import sep_flow
from se_jax.pipeline import knowledge_report
from se_jax.pipeline import report
from se_jax.pipeline.stages import evaluate as evaluate_stage, report as report_stage

__all__ = ["ConfigError", "Layout", "Run", "run", "describe_plan", "validate"]


def prepare_splits(config: RunConfig, layout: Layout) -> dict[str, Path]:
    """The split files; drawn (and TFDS datasets built) by process 0 only, then shared."""

    def draw() -> dict[str, Path]:
        if config.data.source == "facts":
            return split_lib.prepare_fact_splits(config.facts, layout.data)
        return split_lib.prepare_splits(config.data, layout.shared, layout.data)
    if is_main_process():
        draw()
    barrier("experiment-splits")
    return draw()


@dataclasses.dataclass
class SharedBase:
    """The generator of one command, loaded (and, with teach.enabled, taught) on first use
    and shared by every answer setting and run: the only load of the base model."""
    config: RunConfig
    layout: Layout
    clock: Telemetry
    _resident: Any = None

    def __call__(self):
        if self._resident is None:
            # Inference and training are data-parallel over this process's devices.
            mesh = make_mesh(self.config.mesh, devices=jax.local_devices())
            model_config = self.config.model
            taught = self.config.teach.enabled and is_done(self.layout.teach)
            if taught:   # the taught model is the base: load it instead of the original
                model_config = dataclasses.replace(
                    model_config, path=str(teach.taught_model_dir(self.layout.teach)), adapter="")
            with self.clock.phase("load base model"):
                resident = Resident.load(model_config, mesh, adapter=model_config.adapter)
            if self.config.teach.enabled and not taught:
                splits = {k: stage_io.read_jsonl(v)
                          for k, v in prepare_splits(self.config, self.layout).items()}
                with self.clock.phase("teach"):
                    resident = teach.run_teach(self.config, resident, splits,
                                               self.layout.teach)
                mark_done(self.layout.teach)
            self._resident = resident
        return self._resident

    def release(self) -> None:
        """Delete the generator's arrays now (a judge stage needs the memory:
        judge_stage.judge_phase); the next call loads it again."""
        if self._resident is not None:
            free(self._resident.model)
            self._resident = None


@dataclasses.dataclass
class Job:
    """One experiment in one process: config, layout, split files, the resident generator
    (loaded on first use, at most once) and the judge. Every step below skips finished work."""
    config: RunConfig
    layout: Layout
    questions: dict[str, Path]
    clock: Telemetry
    resident: SharedBase
    since: dict   # the clock's snapshot when the command started (its report counts from it)
    _judge: Any = None
    # Fine-tuned LoRA models of this invocation by run tag: adapters only (the weights are
    # the resident base's), kept so the picked runs are evaluated on test without reloading.
    _trained: dict = dataclasses.field(default_factory=dict)
    # The first finished run of this invocation per training input (train.input_fingerprint),
    # and the runs that took over an earlier run's outputs: tag -> that run's tag.
    _by_input: dict = dataclasses.field(default_factory=dict)
    _same_as: dict = dataclasses.field(default_factory=dict)
    # Training input (fingerprint) -> the process that trains it (`owner`).
    _owners: dict = dataclasses.field(default_factory=dict)

    @property
    def test_splits(self) -> list[str]:
        return [s for s in self.questions if s not in ("train", SWEEP_SPLIT)]

    def judge(self):
        """The configured judge (built once): a string judge; the LLM judge on the resident
        generator when it is the generator (model.path; with teach.enabled the taught
        model), so every model's answers get the same judge; a separate judge model's
        verdicts recorded by its judge stage (`settle`)."""
        if self._judge is None:
            ev = self.config.evaluation
            if ev.judge != "llm":
                self._judge = judges.make_judge(ev)
            elif separate_judge(self.config):
                self._judge = judge_stage.recorded(self.config, self.layout.verdicts)
            else:
                base = self.resident()
                self._judge = judges.make_judge(ev, base.model, base.tokenizer,
                                                model_name=str(self.config.model.path))
        return self._judge

    def settle(self, evaluations: Sequence[tuple[str, str]],
               also: Callable[[judges.Judge], Any] | None = None) -> Any:
        """The judge stage of a separate judge model (no-op otherwise): the answers of
        `evaluations` ((model tag, split), written unjudged) judged into outcomes and
        metrics, and `also(judge)` (the report's judgements) recorded, all in one
        `judge_stage.judge_phase` when anything is missing. Returns what `also` returned
        (None when it did not run: no separate judge). Collective: every process calls it
        with the same arguments (never inside `distributed.alone()`)."""
        if not separate_judge(self.config):
            return None
        pending = [(t, s) for t, s in evaluations
                   if evaluate.read_metrics(self.layout.evaluate(t, s)) is None]
        if not pending and also is not None:
            try:   # recorded by an earlier phase (this invocation's or a crashed one's)
                return also(self.judge())
            except LookupError:
                pass
        elif not pending:
            return None
        # Every process has read what is pending before any writes it.
        barrier(f"judge-stage-{self.layout.verdicts}")
        with self.clock.phase("judge stage"), judge_stage.judge_phase(
                self.config, release=self.release_generator) as model:
            recorder = judge_stage.recorded(self.config, self.layout.verdicts, model)
            for tag, split in pending:
                evaluate.judge_answers(stage_io.read_jsonl(self.questions[split]),
                                       self.layout.evaluate(tag, split), self.config,
                                       judge=recorder, model_tag=tag)
            result = also(recorder) if also is not None else None
            recorder.inner = None
            if is_main_process():
                recorder.save(self.layout.verdicts)
            barrier(f"verdicts-{self.layout.verdicts}")
        self._judge = recorder
        return result

    def metrics(self, tag: str, splits: Sequence[str]) -> dict[str, dict | None]:
        """The metrics of `tag` on `splits` from its files (None where not yet judged)."""
        return {s: evaluate.read_metrics(self.layout.evaluate(tag, s)) for s in splits}

    def release_generator(self) -> None:
        """Free the generator's memory for a judge stage: the resident base, the runs'
        models built on it and a judge running on it are dropped; the next use loads the
        generator again."""
        self._trained.clear()
        self._judge = None
        self.resident.release()

    # ------------------------------------------------------------------ stages

    def sample(self, split: str, questions: Path | None = None,
               num_samples: int | None = None) -> Path:
        """Generations (most-likely + M samples) of one split; returns generations.jsonl.
        `questions`: a questions file other than the split's (the SE subset); `num_samples`
        0: the low-temperature answer only (sample.run_sample)."""
        out = self.layout.sample(split)
        if not is_done(out):
            with self.clock.phase(f"sample {split}") as timed:
                sample.run_sample(self.config, questions or self.questions[split], out,
                                  resident=self.resident(), num_samples=num_samples)
            # The unit's seconds outlive this invocation: the labelling-cost table reads them.
            mark_done(out, {"seconds": round(timed.seconds, 1)})
        return out / "generations.jsonl"

    def entropy(self, backend: str, split: str, generations: Path) -> Path:
        """Uncertainties of one split with one equivalence backend; uncertainty.jsonl."""
        out = self.layout.entropy(backend, split)
        if not is_done(out):
            cfg = self.config.replace(entropy=dict(backend=backend))
            with self.clock.phase(f"entropy {backend} {split}") as timed:
                # An LLM entailment judge that is the generator runs on the resident model.
                entropy.run_entropy(cfg, generations, out, resident=(
                    self.resident() if backend == "llm_judge" else None))
            mark_done(out, {"seconds": round(timed.seconds, 1)})
        return out / "uncertainty.jsonl"

    def label(self, run: Run, generations: Path, uncertainty: Mapping[str, Path]) -> Path:
        """The SFT set of a run (shared by its seeds and arms); returns sft.jsonl."""
        out = self.layout.label(run)
        if not is_done(out):
            backend = entropy_backend(run.method)
            labels = dict(
                method=label_method(run.method),   # se, sep, rtuning, rtuning_u, idk
                tau=float(run.tau) if run.tau is not None else self.config.labels.tau,
                backend=backend or "")
            ev = self.config.evaluation
            if ev.judge in ("alias", "f1"):  # label with the evaluation's judge
                labels.update(judge=ev.judge, f1_threshold=ev.f1_threshold)
            label.run_label(self.config.replace(labels=labels), generations,
                            uncertainty[backend or next(iter(uncertainty))], out)
            mark_done(out, json.loads((out / "summary.json").read_text()))
        return out / "sft.jsonl"

    def run_config(self, run: Run) -> RunConfig:
        """The train stage's config for `run` (its seed and arm)."""
        training: dict[str, Any] = {}
        for key, value in run.training_overrides().items():
            section, *rest = key.split(".")
            if rest:
                training.setdefault(section, {})[rest[0]] = value
            else:
                training[section] = value
        return self.config.replace(seed=int(run.seed), training=training)

    def trained_model(self, run: Run, sft: Path):
        """The run's fine-tuned model on the resident base: trained now, rebuilt from its
        last checkpoint when the run finished earlier, or, when an earlier run of this
        invocation had the same training input (SFT records, seed, config), that run's."""
        if run.tag in self._trained:
            return self._trained[run.tag]
        cfg = self.run_config(run)
        base = self.resident()
        out = self.layout.train(run)
        key = train.input_fingerprint(cfg, sft)
        twin = self._by_input.get(key)
        if twin is not None and not is_done(out):
            logging.info("train: %s has the same SFT set, seed and config as %s: its "
                         "outputs are reused", run.tag, twin.tag)
            train.adopt_outputs(self.layout.train(twin), out)
            barrier(f"adopted-{out}")
            self._same_as[run.tag] = twin.tag
        with self.clock.phase(f"train {run.tag}"):
            trained = train.run_train(cfg, sft, out, resident=base)
        if not is_done(out):
            mark_done(out, trained.summary)
        if twin is not None and twin.tag in self._trained:
            model = self._trained[twin.tag]
        else:   # an arm trained without adapters is evaluated with zero ones: one sampler
            model = base.in_sweep_graph(trained.run_model(cfg, base), self.config.training)
        if cfg.training.mode == "lora":
            self._trained[run.tag] = model
        self._by_input.setdefault(key, run)
        return model

    def evaluate(self, tag: str, model_fn: Callable[[], Any], splits: Sequence[str]
                 ) -> dict[str, dict]:
        """Metrics of one model on `splits`; the model is built only if one is missing."""
        out = self.metrics(tag, splits)
        answers_only = separate_judge(self.config)   # judged later: `settle`
        pending = [s for s, m in out.items() if m is None and not (
            answers_only and evaluate.answers_written(self.layout.evaluate(tag, s)))]
        if not pending:
            return out
        model = model_fn()
        base, judge = self.resident(), self.judge()
        twin = self._same_as.get(tag)   # set by model_fn when it took over a run's outputs
        for s in pending:
            records = stage_io.read_jsonl(self.questions[s])
            with self.clock.phase(f"evaluate {tag} {s}"):
                out[s] = evaluate.evaluate_split(
                    model, base.tokenizer, records, self.layout.evaluate(tag, s), self.config,
                    judge=judge, model_tag=tag, mesh=base.mesh,
                    same_as=twin and self.layout.evaluate(twin, s), answers_only=answers_only)
        return out

    def evaluate_judged(self, tag: str, model_fn: Callable[[], Any], splits: Sequence[str]
                        ) -> dict[str, dict]:
        """`evaluate`, then its judge stage (collective: never inside alone())."""
        self.evaluate(tag, model_fn, splits)
        self.settle([(tag, s) for s in splits])
        return self.metrics(tag, splits)

    def train_and_evaluate(self, run: Run, sft: Callable[[], Path], splits: Sequence[str]
                           ) -> dict[str, dict]:
        return self.evaluate(run.tag, lambda: self.trained_model(run, sft()), splits)

    def owner(self, run: Run, sft: Path) -> int:
        """The process that trains and evaluates `run`: runs with the same training input
        (`train.input_fingerprint`, so twins stay together and one trains for both) go to
        processes round-robin, in the order they are first asked for (the same on every
        process), and keep their owner for this invocation."""
        key = train.input_fingerprint(self.run_config(run), sft)
        return self._owners.setdefault(key, len(self._owners) % jax.process_count())

    def spread_runs(self, runs: Sequence[Run], sft: Callable[[Run], Path],
                    splits: Sequence[str]) -> list[dict[str, dict]]:
        """Each run trained and evaluated on `splits` by its owner alone, on its own
        devices (`distributed.alone()`: its stages compute every shard and write the run's
        files themselves); after a barrier every process reads every run's metrics from
        the files. Returns the metrics per run, in `runs`' order (None for a split whose
        answers wait for the judge stage: `settle`). Collective: every process
        calls it with the same runs. One process: the same work, in the same order.
        `sft(run)`: the run's SFT set (the label stage; all processes label together)."""
        sfts = [sft(r) for r in runs]
        owners = [self.owner(r, p) for r, p in zip(runs, sfts)]
        metrics = [self.metrics(r.tag, splits) for r in runs]
        if any(None in m.values() for m in metrics):   # loaded before the work splits up
            self.resident()
            self.judge()
        mine = [i for i, o in enumerate(owners) if o == jax.process_index()]
        logging.info("experiment: process %d of %d trains and evaluates runs %s",
                     jax.process_index(), jax.process_count(), [runs[i].tag for i in mine])
        for i in mine:
            with distributed.alone():
                metrics[i] = self.train_and_evaluate(runs[i], lambda i=i: sfts[i], splits)
        barrier(f"runs-{self.layout.root}")
        for r, m in zip(runs, metrics):
            for s, v in m.items():
                m[s] = v or evaluate.read_metrics(self.layout.evaluate(r.tag, s))
        return metrics


@dataclasses.dataclass
class ExperimentResult:
    table: str
    judge: str
    paths: dict[str, Path]
    results: list[dict]
    sweep: list[dict]
    picked: dict[str, float | None]


def describe_plan(config: RunConfig, target: cost.Target | None = None) -> str:
    """What a run would do and cost (validates config and datasets; loads no model), with
    the per-device memory on `target` (default: this machine); ConfigError when the mesh
    does not fit the target, a batch does not divide its shards, or the memory exceeds a
    device's."""
    sweep = Sweep.from_config(config)
    target = target or cost.local_target()
    mem = cost.memory(config, sweep, target)
    if config.data.source == "facts":
        sizes, num_ood = split_lib.fact_split_sizes(config.facts), 1
        data = [f"data: knowledge-controlled facts, {sizes} (half taught, half not)",
                f"teach step: {'on' if config.teach.enabled else 'off'}; answer settings: "
                f"{list(config.experiment.settings) or [config.prompt.style]}"]
    else:
        plan = split_lib.plan(config.data, config.workdir)
        sizes, num_ood = plan.sizes, len(plan.out_of_distribution)
        data = [f"in-distribution: {plan.in_distribution_label} (train {sizes['train']}, "
                f"val {sizes['val']}, test {sizes['test']})",
                f"out-of-distribution: {[r.label for r in plan.out_of_distribution]} "
                f"({sizes['ood']} each)"]
    backends = backends_needed(sweep.methods, config.entropy.backend)
    settings = max(len(config.experiment.settings), 1)
    text = "\n".join([
        f"workdir: {config.workdir}", *data,
        f"entropy backends: {backends}",
        f"protocol: {PROTOCOL_NAMES[sweep.protocol]}",
        f"fine-tuning runs in the sweep: {len(sweep.runs)} "
        f"({', '.join(sorted({r.method for r in sweep.runs}))}; taus {list(sweep.taus)}; "
        f"seeds {list(sweep.sweep_seeds)}); in all, per answer setting: "
        f"{sweep.count_formula()}",
        f"arms: {list(sweep.arms)}; judge: {config.evaluation.judge}" + (
            f" ({config.evaluation.judge_model}, in a stage of its own: 3 per answer "
            f"setting, the generator released meanwhile)" if separate_judge(config)
            else ""),
        "what each method will really use:",
        *(f"  {m}: {what}" for m, what in method_uses(config).items()),
        cost.describe(cost.estimate(config, sweep, sizes, num_ood=num_ood,
                                    settings=settings)),
        cost.describe_memory(mem) if mem else
        f"memory: the shapes of {config.model.path} cannot be read here (no config.json)"])
    problem = mem.over() if mem else None
    if problem:
        raise ConfigError(problem)
    return text


@dataclasses.dataclass
class Prepared:
    """What every run reads: generations and uncertainties of train and val (and the test
    splits' generations for the SliCK breakdown), the original model's metrics; the probe
    methods' inputs (sep_flow.py) when there are any."""
    generations: dict[str, Path]
    uncertainty: dict[str, dict[str, Path]]
    original: dict[str, dict]
    sep: sep_flow.SepInputs | None = None

    def sft(self, job: Job, run: Run) -> Callable[[], Path]:
        """The run's SFT set, labelled when first asked for."""
        if sep_flow.wanted([run.method]):
            return lambda: job.label(run, *self.sep.label_inputs(run.method))
        return lambda: job.label(run, self.generations["train"], self.uncertainty["train"])


def prepare(job: Job, sweep: Sweep, evaluate_original: bool = True) -> Prepared:
    """Samples of train and val, their entropies per backend, and (optionally) the original
    model on validation and every test split; then the probe methods' SE subset and probes
    (after the original model, whose evaluated splits the probes are scored on). With only
    probe methods, the train split is not sampled with M answers: the SE subset stands for
    it in the report's uncertainty analysis."""
    sampled = (("train",) if needs_full_train(sweep.methods) else ()) + (SWEEP_SPLIT,)
    generations = {s: job.sample(s) for s in sampled}
    backends = backends_needed(sweep.methods, job.config.entropy.backend)
    uncertainty = {s: {b: job.entropy(b, s, generations[s]) for b in backends}
                   for s in sampled}
    if job.config.experiment.slick_breakdown:
        generations.update({s: job.sample(s) for s in job.test_splits})
    original = {}
    if evaluate_original:
        original = job.evaluate_judged(
            ORIGINAL, lambda: job.resident().original_model(job.config.training),
            [SWEEP_SPLIT, *job.test_splits])
    sep = sep_flow.prepare_sep(job, sweep.methods) if sep_flow.wanted(sweep.methods) else None
    if sep is not None and "train" not in generations:
        generations["train"], uncertainty["train"] = (sep.subset_generations,
                                                      sep.subset_uncertainty)
    return Prepared(generations, uncertainty, original, sep)


def start(config: RunConfig, setting: str = "", base: SharedBase | None = None,
          since: dict | None = None) -> tuple[Job, Sweep]:
    """Validate the config, draw the splits (checks datasets before any model loads).
    `setting`: the answer setting's directory name when the command runs several; `base`:
    the command's shared generator (made here when None); `since`: the telemetry snapshot
    of the command's start (now when None)."""
    sweep = Sweep.from_config(config)
    clock = Telemetry.install()
    since = since or clock.snapshot()
    layout = Layout.from_config(config, setting)
    with clock.phase("splits"):
        questions = prepare_splits(config, layout)
    base = base or SharedBase(config, layout, clock)
    return Job(config, layout, questions, clock, base, since), sweep


SETTING_NAMES = {"short": "Short-QA", "sentence": "Long-QA"}
ANSWER_SOURCES = {"model": "the model's standard response (R-Tuning as the paper ran it)",
                  "gold": "the gold answer (Zhang et al.'s original R-Tuning)"}


def run(config: RunConfig, base: SharedBase | None = None
        ) -> ExperimentResult | dict[str, ExperimentResult] | None:
    """The whole experiment (see module doc); with several answer settings
    (config.experiment.settings), one experiment per setting on one shared (taught) base
    model, then Table 1 over all of them. Returns None on processes other than 0.
    `base`: the generator shared with other experiments of this process (`run_grid`)."""
    settings = config.experiment.settings
    clock = Telemetry.install()
    since = clock.snapshot()
    base = base or SharedBase(config, Layout.from_config(config), clock)
    if not settings:
        return run_setting(config, base=base, since=since)
    results = {}
    for style in settings:
        sub = config.replace(prompt=dict(style=style), experiment=dict(settings=()))
        results[SETTING_NAMES.get(style, style)] = run_setting(sub, setting=style, base=base,
                                                               since=since)
    if not is_main_process():
        return None
    write_settings_report(Layout.from_config(config).report_dir, results)
    return results


def run_grid(configs: Sequence[RunConfig]) -> None:
    """Several experiments (a grid's training sets) in this process, on one loaded base
    model when they share its config (model and mesh) and teach nothing; else one each."""
    shared: dict = {}
    for config in configs:
        key = (config.model, config.mesh)
        if config.teach.enabled or key not in shared:
            base = SharedBase(config, Layout.from_config(config), Telemetry.install())
            if not config.teach.enabled:
                shared[key] = base
        run(config, base=shared.get(key) if not config.teach.enabled else base)


def write_settings_report(out_dir: Path, results: Mapping[str, ExperimentResult]) -> Path:
    """<workdir>/report/report.md: Table 1 over the answer settings (rows: setting x
    in-distribution / OOD; columns: methods, Original, all-abstain, oracle), then each
    setting's own report."""
    lines = ["# Abstention fine-tuning with semantic entropy: all answer settings\n",
             "## AED per setting and split (Table 1)\n",
             knowledge_report.table1({k: r.results for k, r in results.items()}) + "\n",
             "Judge: " + ", ".join(sorted({r.judge for r in results.values()})) + ".\n",
             "Each setting's report (uncertainty, abstention on taught and untaught facts, "
             "examples, sweep, phase table):\n"]
    lines += [f"- {name}: `{r.paths['report']}`" for name, r in results.items()]
    path = Path(out_dir) / "report.md"
    stage_io.atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def run_setting(config: RunConfig, setting: str = "", base: SharedBase | None = None,
                since: dict | None = None) -> ExperimentResult | None:
    """One experiment (one answer setting): see the module doc."""
    t0 = time.perf_counter()
    job, sweep = start(config, setting, base, since)
    prep = prepare(job, sweep)
    original = prep.original
    logging.info("experiment: samples, entropies and the original model done after %.0fs",
                 time.perf_counter() - t0)

    # Sweep on validation; pick tau per method.
    rows = [result_row(ORIGINAL, None, SWEEP_SPLIT, s, original[SWEEP_SPLIT])
            for s in sweep.seeds]

    def sft(r: Run) -> Path:
        return prep.sft(job, r)()

    job.spread_runs(sweep.runs, sft, [SWEEP_SPLIT])
    job.settle([(r.tag, SWEEP_SPLIT) for r in sweep.runs])
    for i, r in enumerate(sweep.runs):
        metrics = job.metrics(r.tag, [SWEEP_SPLIT])
        rows.append(result_row(r.name, r.tau, SWEEP_SPLIT, r.seed, metrics[SWEEP_SPLIT]))
        logging.info("experiment: run %d/%d %s: val AED %.3f (%.0fs)", i + 1, len(sweep.runs),
                     r.tag, metrics[SWEEP_SPLIT]["aed"], time.perf_counter() - t0)
    picked = pick_taus(rows)

    # The picked models (and the arms) on test + OOD.
    final_runs = sweep.final_runs(picked)
    results = [result_row(ORIGINAL, None, sp, s, original[sp])
               for s in sweep.seeds for sp in job.test_splits]
    final_splits = [SWEEP_SPLIT, *job.test_splits]
    job.spread_runs(final_runs, sft, final_splits)
    analyses = job.settle([(r.tag, s) for r in final_runs for s in final_splits],
                          also=lambda judge: judged_analyses(job, prep.generations,
                                                             prep.uncertainty, judge))
    for r in final_runs:
        metrics = job.metrics(r.tag, final_splits)
        if r.arm:
            rows.append(result_row(r.name, r.tau, SWEEP_SPLIT, r.seed, metrics[SWEEP_SPLIT]))
        results += [result_row(r.name, r.tau, sp, r.seed, metrics[sp]) for sp in job.test_splits]
        logging.info("experiment: %s on %s done (%.0fs)", r.tag, job.test_splits,
                     time.perf_counter() - t0)

    if not is_main_process():
        return None
    return write_report(job, sweep, prep.generations, prep.uncertainty, results, rows, picked,
                        final_runs, wall_s=time.perf_counter() - t0, analyses=analyses)


def judged_analyses(job: Job, generations: Mapping[str, Path],
                    uncertainty: Mapping[str, Mapping[str, Path]], judge: judges.Judge
                    ) -> tuple[dict, dict, dict[str, str]]:
    """What the report asks the judge: the uncertainty analysis of train and val, and with
    the SliCK breakdown each test question's category; (metrics, histograms, categories)."""
    unc, hist = report_stage.uncertainty_analysis(
        job.config, {s: generations[s] for s in ("train", SWEEP_SPLIT)}, uncertainty, judge)
    categories: dict[str, str] = {}
    if job.config.experiment.slick_breakdown:
        for s in job.test_splits:
            categories.update(report_stage.slick_categories(
                stage_io.read_jsonl(generations[s]), judge))
    return unc, hist, categories


def write_report(job: Job, sweep: Sweep, generations: Mapping[str, Path],
                 uncertainty: Mapping[str, Mapping[str, Path]], results: list[dict],
                 rows: list[dict], picked: dict[str, float | None], final_runs: Sequence[Run],
                 wall_s: float, analyses: tuple[dict, dict, dict[str, str]] | None = None
                 ) -> ExperimentResult:
    """The report; `analyses`: `judged_analyses`' result when the judge stage computed it
    already (a separate judge), else computed here."""
    config = job.config
    judge = job.judge()
    unc, hist, categories = analyses or judged_analyses(job, generations, uncertainty, judge)
    breakdown = []
    if config.experiment.slick_breakdown:
        first_seed = sweep.seeds[0]
        tags = {ORIGINAL: ORIGINAL, **{r.name: r.tag for r in final_runs if r.seed == first_seed}}
        breakdown = report_stage.slick_breakdown(
            {(name, s): evaluate_stage.read_outcomes(job.layout.evaluate(tag, s))
             for name, tag in tags.items() for s in job.test_splits}, categories)
    label_sets = []
    for r in dict.fromkeys(Run(x.method, x.tau, 0) for x in sweep.runs):
        done = job.layout.label(r) / DONE
        if done.exists():
            summary = json.loads(done.read_text())
            label_sets.append(dict(method=r.method, tau="" if r.tau is None else r.tau,
                                   answer=summary.get("answer", ""),
                                   abstain=summary.get("abstain", "")))
    first_seed = sweep.seeds[0]
    outcomes = {s: job.layout.evaluate(ORIGINAL, s) / f"{evaluate_stage.OUTCOMES}.jsonl"
                for s in [SWEEP_SPLIT, *job.test_splits]}
    results = results + report_stage.reference_rows(
        {s: stage_io.read_jsonl(outcomes[s]) for s in job.test_splits}, first_seed, judge.name)
    backends = backends_needed(sweep.methods, config.entropy.backend)
    lead = []
    if config.data.source == "facts":
        se = sweep.first_se
        tuned = {r.name: {s: job.layout.evaluate(r.tag, s) / f"{evaluate_stage.OUTCOMES}.jsonl"
                          for s in [SWEEP_SPLIT, *job.test_splits]}
                 for r in final_runs if r.seed == first_seed}
        lead = report_stage.knowledge_sections(
            job.questions, outcomes, uncertainty[SWEEP_SPLIT][se_backend(se) if se
                                                              else backends[0]],
            generations[SWEEP_SPLIT], tuned, example=(se, picked[se]) if se else None,
            entropy_field=config.labels.entropy,
            num_samples=config.evaluation.bootstrap_samples,
            confidence=config.evaluation.confidence)
    probes = sep_flow.report_section(job.layout, sweep.methods)
    costs = labelling_cost.measure(sweep.methods, labelling_cost.layout_files(job.layout),
                                   job.clock.snapshot(since=job.since))
    lead = [*lead, *([probes] if probes else []), labelling_cost.table(costs)]
    d = config.data
    each = " each" if len(d.in_distribution_names) > 1 else ""
    data = (f"{d.in_distribution_label} (train {d.train_size}, val {d.val_size}, test "
            f"{d.test_size}{each}), OOD {list(d.out_of_distribution)} ({d.ood_size} each)"
            if d.source != "facts" else
            f"knowledge-controlled EntityQuestions facts (relations "
            f"{list(config.facts.relations)}, OOD {list(config.facts.ood_relations)}; draw "
            f"seed {config.facts.seed}; {'taught' if config.teach.enabled else 'NOT taught'} "
            f"before the experiment)")
    header = (f"Model: `{config.model.path}`; data: {data}; prompt style "
              f"{config.prompt.style!r}; M={config.sampling.num_samples} samples; "
              f"equivalence backend(s): {backends}; taus {list(sweep.taus)}; seeds "
              f"{list(sweep.seeds)}; protocol: {PROTOCOL_NAMES[sweep.protocol]}; picked tau: "
              + ", ".join(f"{m}={'-' if t is None else t}" for m, t in picked.items())
              + ". R-Tuning / Idk targets of correct questions: "
              + ANSWER_SOURCES[config.labels.answer_source]
              + f". Wall time of this invocation: {wall_s:.0f}s.")
    paths = report.write_report(job.layout.report_dir, results=results, sweep=rows,
                                splits=job.test_splits, judge=judge.name, uncertainty=unc,
                                histograms=hist, taus=list(sweep.taus),
                                breakdown=breakdown, label_sets=label_sets, header=header,
                                telemetry=job.clock.snapshot(since=job.since), lead=lead)
    return ExperimentResult(table=report.aed_table(results, job.test_splits), judge=judge.name,
                            paths=paths, results=results, sweep=rows, picked=picked)
