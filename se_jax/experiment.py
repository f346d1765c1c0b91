"""The paper's experiment, end to end, from one config.

    splits -> sample(train, val) -> entropy(backend x split)
           -> for method, tau, seed: label -> train -> evaluate(val)
           -> pick tau per method by mean validation AED
           -> evaluate picked models on in-distribution test and every OOD split
           -> report (report.md, results.csv, sweep.csv, PNG plots)

Methods: `se_<backend>` (SE labels from the discrete semantic entropy of that equivalence
backend), `rtuning`, `rtuning_u`, `idk`; the original model is always evaluated as the
reference. Optional arms (config.experiment.arms) retrain the first SE method at its
picked tau with self-distillation ("self_distill") or attention-only full fine-tuning
("attention_only").

Every unit of work has its own directory below `config.workdir` (Layout) holding its
config.json and a `done.json` marker written last, so a rerun after a crash, or with one
more method, tau or seed, does only the missing work.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from absl import logging

from se_jax import stage_io

SE_PREFIX = "se_"
BASELINES = ("rtuning", "rtuning_u", "idk")
ARMS = ("self_distill", "attention_only")
ENTROPY_BACKENDS = ("deberta", "llm_judge", "lexical")
ORIGINAL = "original"
SWEEP_SPLIT = "val"
DONE = "done.json"


class ConfigError(ValueError):
    """The config names something that does not exist; raised before any compute."""


# ----------------------------------------------------------------------------- methods

def se_backend(method: str) -> str | None:
    return method[len(SE_PREFIX):] if method.startswith(SE_PREFIX) else None


def uses_tau(method: str) -> bool:
    """SE and R-Tuning-U threshold an entropy at tau; R-Tuning and Idk have no tau."""
    return se_backend(method) is not None or method == "rtuning_u"


def backends_needed(methods: Sequence[str], default: str) -> list[str]:
    """Entropy backends to run: those of the SE methods (R-Tuning-U's exact-string entropy
    is in every uncertainty record, so it needs only one backend, `default`)."""
    out = [b for b in (se_backend(m) for m in methods) if b]
    return list(dict.fromkeys(out or [default]))


@dataclasses.dataclass(frozen=True)
class Run:
    """One fine-tuned model: a labelling method at a tau (None: no tau), a seed, an arm."""
    method: str
    tau: float | None
    seed: int
    arm: str = ""

    @property
    def name(self) -> str:
        return f"{self.method}+{self.arm}" if self.arm else self.method

    @property
    def label_tag(self) -> str:
        return self.method + ("" if self.tau is None else f"/tau_{self.tau:.2f}")

    @property
    def tag(self) -> str:
        return f"{self.name}{'' if self.tau is None else f'/tau_{self.tau:.2f}'}/seed_{self.seed}"


def sweep_runs(methods: Sequence[str], taus: Sequence[float], seeds: Sequence[int]
               ) -> list[Run]:
    return [Run(m, t, s) for m in methods for t in (taus if uses_tau(m) else (None,))
            for s in seeds]


# ----------------------------------------------------------------------------- config

def validate_config(config: Any) -> None:
    """Raise ConfigError naming the bad field before any model is loaded."""
    ex = config.experiment
    methods = list(ex.methods)
    if not methods:
        raise ConfigError("config.experiment.methods is empty")
    for m in methods:
        b = se_backend(m)
        if m == ORIGINAL:
            raise ConfigError("config.experiment.methods: 'original' is always evaluated; "
                              "do not list it")
        if b is None and m not in BASELINES:
            raise ConfigError(
                f"config.experiment.methods: unknown method {m!r}; choose from "
                f"{[SE_PREFIX + x for x in ENTROPY_BACKENDS] + list(BASELINES)}")
        if b is not None and b not in ENTROPY_BACKENDS:
            raise ConfigError(f"config.experiment.methods: {m!r} names unknown entropy "
                              f"backend {b!r}; choose from {list(ENTROPY_BACKENDS)}")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"config.experiment.methods lists a method twice: {methods}")
    taus = [float(t) for t in ex.taus]
    if any(uses_tau(m) for m in methods) and (not taus or any(t < 0 for t in taus)):
        raise ConfigError(f"config.experiment.taus must be non-empty and >= 0, got {taus}")
    if not list(ex.seeds):
        raise ConfigError("config.experiment.seeds is empty")
    for arm in ex.arms:
        if arm not in ARMS:
            raise ConfigError(f"config.experiment.arms: unknown arm {arm!r}; choose from "
                              f"{list(ARMS)}")
    if ex.arms and not any(se_backend(m) for m in methods):
        raise ConfigError("config.experiment.arms need an SE method in experiment.methods")
    from se_jax import judges
    if config.evaluation.judge not in judges.JUDGE_NAMES:
        raise ConfigError(f"config.evaluation.judge: unknown judge "
                          f"{config.evaluation.judge!r}; choose from {judges.JUDGE_NAMES}")


# ----------------------------------------------------------------------------- layout

def judge_key(eval_config: Any) -> str:
    """A directory name for the configured judge: answers judged by another judge are
    evaluated again into their own directory, never mixed."""
    if eval_config.judge == "f1":
        return f"f1_{float(eval_config.f1_threshold):g}"
    if eval_config.judge == "llm":
        model = eval_config.judge_model or "generator"
        return "llm_" + "".join(c if c.isalnum() else "_" for c in model)[-60:]
    return str(eval_config.judge)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where every artifact of an experiment lives (below config.workdir)."""
    root: Path
    report_dir: Path
    judge: str   # judge_key(config.evaluation)

    @classmethod
    def from_config(cls, config: Any) -> "Layout":
        root = Path(config.workdir)
        out = Path(config.experiment.out_dir) if config.experiment.out_dir else root / "report"
        return cls(root, out, judge_key(config.evaluation))

    @property
    def data(self) -> Path:
        return self.root / "data"

    def sample(self, split: str) -> Path:
        return self.root / "sample" / split

    def entropy(self, backend: str, split: str) -> Path:
        return self.root / "entropy" / backend / split

    def label(self, run: Run) -> Path:
        return self.root / "label" / run.label_tag

    def train(self, run: Run) -> Path:
        return self.root / "train" / run.tag

    def evaluate(self, tag: str, split: str) -> Path:
        return self.root / "evaluate" / self.judge / tag / split


def is_done(path: Path) -> bool:
    return (path / DONE).exists()


def mark_done(path: Path, summary: Mapping[str, Any] | None = None) -> None:
    """Written last, by process 0 once every process has finished the unit of work."""
    import jax
    from se_jax.stages.evaluate import barrier
    barrier(f"done-{path}")
    if jax.process_index() == 0:
        stage_io.atomic_write_text(path / DONE, json.dumps(dict(summary or {}), sort_keys=True,
                                                           default=str) + "\n")
    barrier(f"marked-{path}")


# ----------------------------------------------------------------------------- tau choice

def pick_taus(sweep: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """{method: tau with the lowest mean validation AED over seeds} (ties: smaller tau;
    None for methods without tau)."""
    by = {}
    for r in sweep:
        if r["split"] != SWEEP_SPLIT or r["method"] == ORIGINAL:
            continue
        by.setdefault(r["method"], {}).setdefault(r["tau"], []).append(float(r["aed"]))
    picked = {}
    for method, per_tau in by.items():
        def key(t):
            mean = sum(per_tau[t]) / len(per_tau[t])
            return (mean if not math.isnan(mean) else math.inf,
                    -math.inf if t in (None, "") else float(t))
        best = min(per_tau, key=key)
        picked[method] = None if best in (None, "") else float(best)
    return picked


def result_row(method: str, tau: float | None, split: str, seed: int,
               metrics: Mapping[str, Any]) -> dict:
    """A results.csv row (se_jax.report.RESULT_FIELDS)."""
    return {"method": method, "tau": "" if tau is None else float(tau), "split": split,
            "seed": seed, **{k: metrics[k] for k in ("n", "correct", "incorrect", "abstained",
                                                     "accuracy", "engagement", "aed",
                                                     "judge")}}


# ----------------------------------------------------------------------------- stage calls
# Each stage is called with a copy of the run's config whose input/output paths point
# into the Layout; the stages write config.json and refuse a changed config.

def _copy(config: Any) -> Any:
    return config.copy_and_resolve_references()


def prepare_splits(config: Any, layout: Layout) -> dict[str, Path]:
    """The split files; drawn (and TFDS datasets built) by process 0 only, then shared."""
    import jax
    from se_jax.data import splits as split_lib
    from se_jax.stages.evaluate import barrier
    if jax.process_index() == 0:
        split_lib.prepare_splits(config.data, layout.root, layout.data)
    barrier("experiment-splits")
    return split_lib.prepare_splits(config.data, layout.root, layout.data)


def _split_records(paths: Mapping[str, Path], split: str) -> list[dict]:
    return stage_io.read_jsonl(paths[split])


def sample_split(config: Any, layout: Layout, split: str, questions: Path) -> Path:
    """Generations (most-likely + M samples) of one split; returns generations.jsonl."""
    from se_jax.stages import sample
    out = layout.sample(split)
    if not is_done(out):
        cfg = _copy(config)
        cfg.sampling.input = str(questions)
        cfg.sampling.out_dir = str(out)
        sample.run_sample(cfg)
        mark_done(out)
    return out / "generations.jsonl"


def entropy_split(config: Any, layout: Layout, backend: str, split: str,
                  generations: Path) -> Path:
    """Uncertainties of one split with one equivalence backend; returns uncertainty.jsonl."""
    from se_jax.stages import entropy
    out = layout.entropy(backend, split)
    if not is_done(out):
        cfg = _copy(config)
        cfg.entropy.backend = backend
        cfg.entropy.generations = str(generations)
        cfg.entropy.out_dir = str(out)
        entropy.run_entropy(cfg)
        mark_done(out)
    return out / "uncertainty.jsonl"


def label_run(config: Any, layout: Layout, run: Run, generations: Path,
              uncertainty: Mapping[str, Path]) -> Path:
    """The SFT set of a run (shared by its seeds and arms); returns sft.jsonl."""
    from se_jax.stages import label
    out = layout.label(run)
    if not is_done(out):
        cfg = _copy(config)
        backend = se_backend(run.method)
        cfg.labels.method = "se" if backend else run.method   # rtuning, rtuning_u, idk
        cfg.labels.tau = float(run.tau) if run.tau is not None else cfg.labels.tau
        cfg.labels.backend = backend or ""
        cfg.labels.generations = str(generations)
        cfg.labels.uncertainty = str(uncertainty[backend or next(iter(uncertainty))])
        cfg.labels.out_dir = str(out)
        if config.evaluation.judge in ("alias", "f1"):   # label with the evaluation's judge
            cfg.labels.judge = config.evaluation.judge
            cfg.labels.f1_threshold = config.evaluation.f1_threshold
        label.run_label(cfg)
        mark_done(out, json.loads((out / "summary.json").read_text()))
    return out / "sft.jsonl"


def train_run(config: Any, layout: Layout, run: Run, sft: Path) -> Path:
    """Fine-tune one run; returns the merged checkpoint directory (HF safetensors)."""
    from se_jax.stages import train
    out = layout.train(run)
    if not is_done(out):
        cfg = _copy(config)
        cfg.seed = int(run.seed)
        cfg.training.sft = str(sft)
        cfg.training.out_dir = str(out)
        cfg.training.export_merged = True
        if run.arm == "self_distill":
            cfg.training.distill.enabled = True
        elif run.arm == "attention_only":
            cfg.training.mode = "attention"
        train.run_train(cfg)
        mark_done(out, json.loads((out / "summary.json").read_text()))
    return out / "merged"


# ----------------------------------------------------------------------------- models

class Models:
    """Loads models for inference; the original model is loaded once and kept.

    Inference is data-parallel over processes (see se_jax/stages/evaluate.py), so each
    process holds its own copy on a mesh of its local devices (config.mesh sizes, -1 =
    the remaining local devices).
    """

    def __init__(self, config: Any):
        self.config = config
        self._original = None
        self._mesh = None

    @property
    def mesh(self):
        if self._mesh is None:
            import jax
            from se_jax.mesh import make_mesh
            self._mesh = make_mesh(self.config.mesh, devices=jax.local_devices())
        return self._mesh

    def load(self, path: str):
        from se_jax.models.loading import load_llama, load_tokenizer
        model = load_llama(path, mesh=self.mesh, dtype=self.config.model.dtype,
                           param_dtype=self.config.model.param_dtype)
        return model, load_tokenizer(path)

    def original(self):
        if self._original is None:
            self._original = self.load(self.config.model.path)
        return self._original


def evaluate_model(config: Any, layout: Layout, tag: str, model_and_tokenizer: Callable,
                   splits: Sequence[str], questions: Mapping[str, Path],
                   judge_factory: Callable, mesh=None) -> dict[str, dict]:
    """Evaluate one model on `splits` (skipping finished ones); {split: metrics}."""
    from se_jax.stages import evaluate
    out = {}
    pending = [s for s in splits if evaluate.read_metrics(layout.evaluate(tag, s)) is None]
    model = tokenizer = judge = None
    if pending:
        model, tokenizer = model_and_tokenizer()
        judge = judge_factory()
    for s in splits:
        out_dir = layout.evaluate(tag, s)
        done = evaluate.read_metrics(out_dir)
        out[s] = done if done is not None else evaluate.evaluate_split(
            model, tokenizer, _split_records(questions, s), out_dir, config, judge=judge,
            model_tag=tag, mesh=mesh)
    return out


# ----------------------------------------------------------------------------- the run

@dataclasses.dataclass
class Context:
    """What every step of one experiment shares: config, layout, split files, models."""
    config: Any
    layout: Layout
    questions: dict[str, Path]
    models: Models
    generations: dict[str, Path] = dataclasses.field(default_factory=dict)
    uncertainty: dict[str, dict[str, Path]] = dataclasses.field(default_factory=dict)
    original: dict[str, dict] = dataclasses.field(default_factory=dict)
    _judge: Any = None

    @classmethod
    def create(cls, config: Any, layout: Layout, questions: Mapping[str, Path]) -> "Context":
        return cls(config, layout, dict(questions), Models(config))

    @property
    def test_splits(self) -> list[str]:
        return [s for s in self.questions if s not in ("train", SWEEP_SPLIT)]

    def judge(self):
        """The configured judge (built once); the LLM judge runs `evaluation.judge_model`,
        else the original generator, so every model's answers get the same judge."""
        if self._judge is None:
            from se_jax import judges
            ev = self.config.evaluation
            if ev.judge != "llm":
                self._judge = judges.make_judge(ev)
            elif ev.judge_model:
                jm, jt = self.models.load(ev.judge_model)
                self._judge = judges.make_judge(ev, jm, jt, model_name=ev.judge_model)
            else:
                om, ot = self.models.original()
                self._judge = judges.make_judge(ev, om, ot,
                                                model_name=str(self.config.model.path))
        return self._judge

    def prepare(self, evaluate_original: bool = True) -> None:
        """Sample train + val (and the test splits for SliCK), entropies per backend, and
        (optionally) the original model on every split."""
        c, ex = self.config, self.config.experiment
        sampled = ["train", SWEEP_SPLIT] + (self.test_splits if ex.slick_breakdown else [])
        self.generations = {s: sample_split(c, self.layout, s, self.questions[s])
                            for s in sampled}
        backends = backends_needed(list(ex.methods), c.entropy.backend)
        self.uncertainty = {s: {b: entropy_split(c, self.layout, b, s, self.generations[s])
                                for b in backends} for s in ("train", SWEEP_SPLIT)}
        if evaluate_original:
            self.original = self.evaluate_original([SWEEP_SPLIT, *self.test_splits])

    def evaluate_original(self, splits: Sequence[str]) -> dict[str, dict]:
        return evaluate_model(self.config, self.layout, ORIGINAL, self.models.original,
                              splits, self.questions, self.judge, mesh=self.models.mesh)

    def label(self, r: Run) -> Path:
        return label_run(self.config, self.layout, r, self.generations["train"],
                         self.uncertainty["train"])

    def train(self, r: Run) -> Path:
        return train_run(self.config, self.layout, r, self.label(r))

    def train_and_evaluate(self, r: Run, splits: Sequence[str]) -> dict[str, dict]:
        """Metrics of run `r` on `splits`; labels, trains and evaluates only what is missing."""
        from se_jax.stages import evaluate
        done = {s: evaluate.read_metrics(self.layout.evaluate(r.tag, s)) for s in splits}
        if all(m is not None for m in done.values()):
            return done
        merged = self.train(r)
        return evaluate_model(self.config, self.layout, r.tag,
                              lambda: self.models.load(str(merged)), splits, self.questions,
                              self.judge, mesh=self.models.mesh)


@dataclasses.dataclass
class ExperimentResult:
    table: str
    judge: str
    paths: dict[str, Path]
    results: list[dict]
    sweep: list[dict]
    picked: dict[str, float | None]


def describe_plan(config: Any) -> str:
    """What a run would do (validates config and datasets; loads no model)."""
    from se_jax.data import splits as split_lib
    validate_config(config)
    plan = split_lib.plan(config.data, config.workdir)
    ex = config.experiment
    runs = sweep_runs(list(ex.methods), [float(t) for t in ex.taus], list(ex.seeds))
    backends = backends_needed(list(ex.methods), config.entropy.backend)
    return "\n".join([
        f"workdir: {config.workdir}",
        f"in-distribution: {plan.in_distribution.label} (train {plan.sizes['train']}, "
        f"val {plan.sizes['val']}, test {plan.sizes['test']})",
        f"out-of-distribution: {[r.label for r in plan.out_of_distribution]} "
        f"({plan.sizes['ood']} each)",
        f"entropy backends: {backends}",
        f"fine-tuning runs in the sweep: {len(runs)} "
        f"({', '.join(sorted({r.method for r in runs}))}; taus {list(ex.taus)}; "
        f"seeds {list(ex.seeds)})",
        f"arms: {list(ex.arms)}; judge: {config.evaluation.judge}"])


def run(config: Any) -> ExperimentResult | None:
    """The whole experiment (see module doc). Returns None on processes other than 0."""
    import jax

    validate_config(config)
    start = time.perf_counter()
    layout = Layout.from_config(config)
    ex = config.experiment
    methods, seeds = list(ex.methods), [int(s) for s in ex.seeds]
    taus = [float(t) for t in ex.taus]
    # Dataset names, splits and sizes are checked here, before any model is loaded.
    ctx = Context.create(config, layout, prepare_splits(config, layout))
    test_splits = ctx.test_splits

    ctx.prepare()
    logging.info("experiment: samples, entropies and the original model done after %.0fs",
                 time.perf_counter() - start)

    # Sweep: label, train, evaluate on validation; pick tau per method.
    sweep = [result_row(ORIGINAL, None, SWEEP_SPLIT, s, ctx.original[SWEEP_SPLIT])
             for s in seeds]
    runs = sweep_runs(methods, taus, seeds)
    for i, r in enumerate(runs):
        logging.info("experiment: sweep run %d/%d: %s (%.0fs)", i + 1, len(runs), r.tag,
                     time.perf_counter() - start)
        metrics = ctx.train_and_evaluate(r, [SWEEP_SPLIT])
        sweep.append(result_row(r.name, r.tau, SWEEP_SPLIT, r.seed, metrics[SWEEP_SPLIT]))
    picked = pick_taus(sweep)

    # The picked models (and the optional arms at the first SE method's tau) on test + OOD.
    final_runs = [Run(m, picked[m], s) for m in methods for s in seeds]
    first_se = next((m for m in methods if se_backend(m)), None)
    final_runs += [Run(first_se, picked[first_se], s, arm) for arm in ex.arms for s in seeds]
    results = [result_row(ORIGINAL, None, sp, s, ctx.original[sp])
               for s in seeds for sp in test_splits]
    for r in final_runs:
        metrics = ctx.train_and_evaluate(r, [SWEEP_SPLIT, *test_splits])
        if r.arm:
            sweep.append(result_row(r.name, r.tau, SWEEP_SPLIT, r.seed, metrics[SWEEP_SPLIT]))
        results += [result_row(r.name, r.tau, sp, r.seed, metrics[sp]) for sp in test_splits]

    if jax.process_index() != 0:
        return None
    return write_report(ctx, results, sweep, picked, final_runs,
                        wall_s=time.perf_counter() - start)


def write_report(ctx: Context, results: list[dict], sweep: list[dict],
                 picked: dict[str, float | None], final_runs: Sequence[Run],
                 wall_s: float) -> ExperimentResult:
    from se_jax import report
    from se_jax.stages import evaluate as evaluate_stage, report as report_stage
    config, ex = ctx.config, ctx.config.experiment
    seeds = [int(s) for s in ex.seeds]
    judge = ctx.judge()
    unc, hist = report_stage.uncertainty_analysis(
        config, {s: ctx.generations[s] for s in ("train", SWEEP_SPLIT)}, ctx.uncertainty,
        judge)
    breakdown = []
    if ex.slick_breakdown:
        categories = {}
        for s in ctx.test_splits:
            categories.update(report_stage.slick_categories(
                stage_io.read_jsonl(ctx.generations[s]), judge))
        tags = {ORIGINAL: ORIGINAL, **{r.name: r.tag for r in final_runs if r.seed == seeds[0]}}
        breakdown = report_stage.slick_breakdown(
            {(name, s): evaluate_stage.read_outcomes(ctx.layout.evaluate(tag, s))
             for name, tag in tags.items() for s in ctx.test_splits}, categories)
    label_sets = []
    for r in dict.fromkeys(Run(x.method, x.tau, 0) for x in sweep_runs(
            list(ex.methods), [float(t) for t in ex.taus], seeds)):
        done = ctx.layout.label(r) / DONE
        if done.exists():
            summary = json.loads(done.read_text())
            label_sets.append(dict(method=r.method, tau="" if r.tau is None else r.tau,
                                   answer=summary.get("answer", ""),
                                   abstain=summary.get("abstain", "")))
    d = config.data
    header = (f"Model: `{config.model.path}`; data: {d.in_distribution} (train {d.train_size}, "
              f"val {d.val_size}, test {d.test_size}), OOD {list(d.out_of_distribution)} "
              f"({d.ood_size} each); M={config.sampling.num_samples} samples; taus "
              f"{[float(t) for t in ex.taus]}; seeds {seeds}; picked tau: "
              + ", ".join(f"{m}={'-' if t is None else t}" for m, t in picked.items())
              + f". Wall time of this invocation: {wall_s:.0f}s.")
    paths = report.write_report(ctx.layout.report_dir, results=results, sweep=sweep,
                                splits=ctx.test_splits, judge=judge.name, uncertainty=unc,
                                histograms=hist, taus=[float(t) for t in ex.taus],
                                breakdown=breakdown, label_sets=label_sets, header=header)
    return ExperimentResult(table=report.aed_table(results, ctx.test_splits), judge=judge.name,
                            paths=paths, results=results, sweep=sweep, picked=picked)
