"""What an experiment will do, as pure data: its methods, fine-tuning runs, taus, and the
cost of it all; checked before any data or model is touched.

Methods: `se_<backend>` (SE labels from the discrete semantic entropy of that equivalence
backend), `rtuning`, `rtuning_u`, `idk`; the original model is always evaluated as the
reference. Semantic entropy probes (se_jax/pipeline/sep_flow.py): `sep_<backend>` (SE on
the first `labels.sep.train_size` training questions, a probe on hidden states labels all
of them) and `sesub_<backend>` (SE labels on that subset alone: what the same SE budget
buys without a probe). Optional arms retrain the first SE method at its picked tau with
self-distillation ("self_distill") or attention-only full fine-tuning ("attention_only").

Protocols (`experiment.protocol`):
- "paper", the paper's Best-Threshold Evaluation (Section 6): every method with a tau is
  trained once per tau at the first seed; the tau with the lowest validation AED is then
  trained at the remaining seeds; R-Tuning (and Idk) at every seed. Per method with a tau
  that is len(taus) + len(seeds) - 1 runs, per method without one len(seeds).
- "grid": every tau at every seed (len(taus) x len(seeds) runs per method with a tau);
  the tau is picked on the mean over seeds.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from se_jax.config.validation import ConfigError  # the one config error type; re-exported
from se_jax.config.schema import RunConfig

SE_PREFIX = "se_"
BASELINES = ("rtuning", "rtuning_u", "idk")
ARMS = ("self_distill", "attention_only")
ENTROPY_BACKENDS = ("deberta", "llm_judge", "lexical")
ORIGINAL = "original"
SWEEP_SPLIT = "val"
PROTOCOL_NAMES = {
    "paper": "paper (Best-Threshold Evaluation: every tau at the first seed, the picked tau "
             "and the methods without tau at every seed)",
    "grid": "grid (every tau at every seed; tau picked on the mean over seeds)"}


def se_backend(method: str) -> str | None:
    return method[len(SE_PREFIX):] if method.startswith(SE_PREFIX) else None


SEP_PREFIXES = ("sep_", "sesub_")   # the probe's labels; SE labels of the SE subset alone


def sep_backend(method: str) -> str | None:
    """The equivalence backend of a `sep_<b>` or `sesub_<b>` method, else None."""
    return next((method[len(p):] for p in SEP_PREFIXES if method.startswith(p)), None)


def entropy_backend(method: str) -> str | None:
    """The backend whose entropies a method's labels read (SE, SEP, SE-on-subset)."""
    return se_backend(method) or sep_backend(method)


def label_method(method: str) -> str:
    """The label stage's `labels.method` of an experiment method."""
    if se_backend(method) or method.startswith("sesub_"):
        return "se"
    return "sep" if method.startswith("sep_") else method


def needs_full_train(methods: Sequence[str]) -> bool:
    """Whether any method reads the M samples of every training question (all but the
    probe methods, which sample only the SE subset with M)."""
    return any(sep_backend(m) is None for m in methods)


def uses_tau(method: str) -> bool:
    """SE, SEP and R-Tuning-U threshold an entropy (SEP: at the SE subset's abstention rate
    of tau) at tau; R-Tuning and Idk have no tau."""
    return entropy_backend(method) is not None or method == "rtuning_u"


def backends_needed(methods: Sequence[str], default: str) -> list[str]:
    """Entropy backends to run on the train and validation samples: those of the SE methods,
    else those of the probe methods (which also run on the SE subset, sep_flow.py), else
    `default` (R-Tuning-U's exact-string entropy is in every uncertainty record, so it needs
    only one backend)."""
    out = [b for b in (se_backend(m) for m in methods) if b]
    # Only probe methods: their backend runs on validation too (the report's analysis).
    out = out or [b for b in (sep_backend(m) for m in methods) if b]
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

    def training_overrides(self) -> dict[str, Any]:
        """The `config.training` fields this run's arm changes."""
        if self.arm == "self_distill":
            return {"distill.enabled": True}
        if self.arm == "attention_only":
            return {"mode": "attention"}
        return {}


@dataclasses.dataclass(frozen=True)
class Sweep:
    """The typed view of `config.experiment` (validated)."""
    methods: tuple[str, ...]
    taus: tuple[float, ...]
    seeds: tuple[int, ...]
    arms: tuple[str, ...]
    protocol: str = "grid"

    @classmethod
    def from_config(cls, config: RunConfig) -> "Sweep":
        validate(config)
        ex = config.experiment
        return cls(ex.methods, ex.taus, ex.seeds, ex.arms, ex.protocol)

    @property
    def sweep_seeds(self) -> tuple[int, ...]:
        """The seeds the taus are swept at: the first one (paper) or all (grid)."""
        return self.seeds[:1] if self.protocol == "paper" else self.seeds

    @property
    def runs(self) -> list[Run]:
        """The validation sweep: every method x tau (where it has one) x sweep seed."""
        return [Run(m, t, s) for m in self.methods
                for t in (self.taus if uses_tau(m) else (None,)) for s in self.sweep_seeds]

    @property
    def num_trainings(self) -> int:
        """Distinct fine-tuning runs the protocol trains, sweep and final runs together
        (known before any tau is picked: the final runs at the sweep seeds are sweep runs)."""
        extra = len(self.seeds) - len(self.sweep_seeds)
        return len(self.runs) + len(self.methods) * extra + len(self.arms) * len(self.seeds)

    def count_formula(self) -> str:
        """num_trainings as the sum it is, for the plan and --dry_run."""
        tau_methods = sum(uses_tau(m) for m in self.methods)
        other = len(self.methods) - tau_methods
        T, S = len(self.taus), len(self.seeds)
        arms = f" + {len(self.arms)} arms x {S} seeds" if self.arms else ""
        if self.protocol == "paper":
            return (f"{tau_methods} methods with tau x ({T} taus + {S - 1} more seeds) + "
                    f"{other} without x {S} seeds{arms} = {self.num_trainings}")
        return (f"{tau_methods} methods with tau x {T} taus x {S} seeds + {other} without x "
                f"{S} seeds{arms} = {self.num_trainings}")

    @property
    def first_se(self) -> str | None:
        return next((m for m in self.methods if se_backend(m)), None)

    def final_runs(self, picked: Mapping[str, float | None]) -> list[Run]:
        """The picked models (evaluated on test + OOD), then the arms at the first SE
        method's picked tau."""
        runs = [Run(m, picked[m], s) for m in self.methods for s in self.seeds]
        return runs + [Run(self.first_se, picked[self.first_se], s, arm)
                       for arm in self.arms for s in self.seeds]


def validate(config: RunConfig) -> None:
    """Raise ConfigError naming the bad experiment name (methods, arms); the values of every
    section were checked when the RunConfig was built (se_jax/config/schema.py)."""
    ex = config.experiment
    methods = list(ex.methods)
    if not methods:
        raise ConfigError("config.experiment.methods is empty")
    for m in methods:
        b = se_backend(m)
        if sep_backend(m) is not None:
            _validate_sep(config, m)
            continue
        if m == ORIGINAL:
            raise ConfigError("config.experiment.methods: 'original' is always evaluated; "
                              "do not list it")
        if b is None and m not in BASELINES:
            raise ConfigError(
                f"config.experiment.methods: unknown method {m!r}; choose from "
                f"{[p + x for p in (SE_PREFIX, *SEP_PREFIXES) for x in ENTROPY_BACKENDS]}"
                f" or {list(BASELINES)}")
        if b is not None and b not in ENTROPY_BACKENDS:
            raise ConfigError(f"config.experiment.methods: {m!r} names unknown entropy "
                              f"backend {b!r}; choose from {list(ENTROPY_BACKENDS)}")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"config.experiment.methods lists a method twice: {methods}")
    if any(uses_tau(m) for m in methods) and not list(ex.taus):
        raise ConfigError(f"config.experiment.taus must be non-empty for "
                          f"{[m for m in methods if uses_tau(m)]}")
    for arm in ex.arms:
        if arm not in ARMS:
            raise ConfigError(f"config.experiment.arms: unknown arm {arm!r}; choose from "
                              f"{list(ARMS)}")
    if ex.arms and not any(se_backend(m) for m in methods):
        raise ConfigError("config.experiment.arms need an SE method in experiment.methods")
    method_uses(config)   # a method that cannot run as named stops here, before any work


def _validate_sep(config: RunConfig, method: str) -> None:
    """A probe method names a known backend; `sep_` needs hidden states."""
    b = sep_backend(method)
    if b not in ENTROPY_BACKENDS:
        raise ConfigError(f"config.experiment.methods: {method!r} names unknown entropy "
                          f"backend {b!r}; choose from {list(ENTROPY_BACKENDS)}")
    if method.startswith("sep_") and not config.probes.enabled:
        raise ConfigError(f"config.probes.layers is empty: {method} needs hidden states "
                          f"(set e.g. --config.probes.layers='(4,8,12)')")


def _same_model(a: str, b: str) -> bool:   # = models.loading.same_model (JAX-free here)
    return str(a).rstrip("/") == str(b).rstrip("/")


def separate_judge(config: RunConfig) -> bool:
    """The correctness judge is a model other than the generator: it runs in a stage of its
    own (se_jax/pipeline/judge_stage.py) and its answers are judged there."""
    ev = config.evaluation
    return (ev.judge == "llm" and bool(ev.judge_model)
            and not _same_model(ev.judge_model, config.model.path))


def backend_uses(config: RunConfig, backend: str, who: str) -> str:
    """What equivalence backend `backend` will really run, for `who` (a method's name or
    `entropy.backend=...`); ConfigError with one line when it cannot run as named."""
    ec = config.entropy
    if backend == "deberta":
        if not ec.nli_path:
            raise ConfigError(f"{who} needs entropy.nli_path (an HF DeBERTa NLI directory, "
                              f"e.g. microsoft/deberta-v2-xlarge-mnli); set it, or choose "
                              f"the lexical backend (se_lexical) by name")
        if not (Path(ec.nli_path) / "config.json").is_file():
            raise ConfigError(f"{who}: entropy.nli_path={ec.nli_path!r} is not an HF DeBERTa "
                              f"NLI directory (no config.json there)")
        return f"DeBERTa NLI {ec.nli_path} ({ec.nli_dtype})"
    if backend == "llm_judge":
        judge = ec.judge_model or config.model.path
        same = _same_model(judge, config.model.path)
        return (f"LLM entailment judge {judge}"
                + (" (the generator, resident: no second load)" if same else
                   f" (loaded with weights in the compute dtype {config.model.dtype}, on "
                   f"the generator's mesh)")
                + f", prompt {ec.judge_prompt!r}")
    return f"lexical content-word F1 >= {ec.lexical_threshold}"


def method_uses(config: RunConfig) -> dict[str, str]:
    """{method (and 'judge'): what it will really run}; ConfigError naming what is missing
    for the first one that cannot run as named (no method ever becomes another)."""
    methods = list(config.experiment.methods)
    uses: dict[str, str] = {}
    for m in methods:
        b = se_backend(m)
        if b is not None:
            uses[m] = "SE labels from " + backend_uses(config, b, m)
    for m in methods:
        b = sep_backend(m)
        if b is not None:
            k = config.labels.sep.train_size
            uses[m] = (f"SE ({backend_uses(config, b, m)}) on the first {k} training "
                       f"questions, then " + (
                           f"a logistic probe on hidden states (layers "
                           f"{list(config.probes.layers)}, positions "
                           f"{list(config.probes.positions)}) labels every training question"
                           if m.startswith("sep_") else "SE labels on those questions alone"))
    if not any(entropy_backend(m) for m in methods):   # the default backend still runs
        default = config.entropy.backend
        uses["entropies"] = backend_uses(config, default, f"entropy.backend={default}")
    if "rtuning_u" in methods:
        uses["rtuning_u"] = ("R-Tuning-U labels from the exact-string entropy of the "
                             "M samples (no equivalence backend)")
    for m in ("rtuning", "idk"):
        if m in methods:
            uses[m] = {"rtuning": "R-Tuning labels (the greedy answer judged correct or not)",
                       "idk": "Idk labels (the fraction of samples judged correct)"}[m]
    ev = config.evaluation
    if ev.judge == "llm":
        uses["judge"] = (f"LLM yes/no judge {ev.judge_model or config.model.path}"
                         + (f" (in a stage of its own: weights in the compute dtype "
                            f"{config.model.dtype} over every device of every host, the "
                            f"generator released meanwhile)" if separate_judge(config) else
                            " (the generator, resident: no second load)"))
    else:
        uses["judge"] = f"{ev.judge} judge (no model)"
    return uses


def pick_taus(sweep: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """{method: tau with the lowest mean validation AED over seeds} (ties: smaller tau;
    None for methods without tau)."""
    by: dict[str, dict] = {}
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
    """A results.csv row (se_jax.pipeline.report.RESULT_FIELDS)."""
    return {"method": method, "tau": "" if tau is None else float(tau), "split": split,
            "seed": seed, **{k: metrics[k] for k in ("n", "correct", "incorrect", "abstained",
                                                     "accuracy", "engagement", "aed",
                                                     "judge")}}
