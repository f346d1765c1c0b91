"""Semantic entropy probes in the experiment: SE on a subset, a probe labels the rest.

For the methods `sep_<b>` and `sesub_<b>` (se_jax/pipeline/plan.py), below the root:

    sep/questions/se_subset.jsonl, probe_only.jsonl   the train split, first
                                                      labels.sep.train_size and the rest
    sample/train_se_subset/    1 + M answers and hidden states (the SE subset)
    sample/train_probe_only/   the low-temperature answer and hidden states only: these
                               questions never pay for the M samples
    entropy/<b>/train_se_subset/uncertainty.jsonl
    probe/<b>/                 the probe stage (se_jax/pipeline/stages/probe.py), scoring
                               the probe-only questions, validation samples and the original
                               model's evaluated splits wherever their hidden states exist

`sep_<b>` labels every training question from `probe/<b>/train_scores.jsonl`; `sesub_<b>`
labels the SE subset from its own entropies (SE's labels at the SE subset's cost). Every
step is a unit of work with `done.json`, so a rerun does only what is missing.

The job is duck-typed (se_jax/pipeline/experiment.py's `Job`): `config`, `layout`,
`questions`, `clock`, `sample(split, questions, num_samples)`, `entropy(b, split, gens)`.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from absl import logging

from se_jax.io import hidden_states as hs
from se_jax.io import stage_io
from se_jax.parallel.distributed import barrier, is_main_process
from se_jax.pipeline.layout import Layout, is_done, mark_done
from se_jax.pipeline.plan import ORIGINAL, SWEEP_SPLIT, sep_backend
from se_jax.pipeline.stages import probe as probe_stage

SUBSET = "train_se_subset"
PROBE_ONLY = "train_probe_only"


def wanted(methods: Sequence[str]) -> bool:
    return any(sep_backend(m) for m in methods)


@dataclasses.dataclass(frozen=True)
class SepInputs:
    """What the probe methods' label stage reads."""
    subset_generations: Path
    subset_uncertainty: dict[str, Path]   # backend -> uncertainty.jsonl of the SE subset
    train_scores: dict[str, Path]         # backend -> probe/<b>/train_scores.jsonl

    def label_inputs(self, method: str) -> tuple[Path, dict[str, Path]]:
        """(generations or probe scores, {backend: uncertainty}) of a method's label stage."""
        b = sep_backend(method)
        source = (self.train_scores[b] if method.startswith("sep_")
                  else self.subset_generations)
        return source, {b: self.subset_uncertainty[b]}


def split_train(train: Path, size: int, out_dir: Path) -> tuple[Path, Path | None]:
    """The SE subset (the first `size` training questions: the split is already a seeded
    permutation) and the rest, as question files in `out_dir` (rewritten only when their
    content changes, so the sample stage's input fingerprints stay); rest None when empty."""
    records = stage_io.read_jsonl(train)
    if size >= len(records):
        logging.warning("sep: labels.sep.train_size=%d >= %d training questions: the probe "
                        "labels only the questions SE was computed on", size, len(records))
    paths = {}
    for name, part in (("se_subset", records[:size]), ("probe_only", records[size:])):
        path = out_dir / f"{name}.jsonl"
        text = "".join(stage_io.dumps_record(r) + "\n" for r in part)
        if part and is_main_process() and (not path.is_file() or path.read_text() != text):
            stage_io.atomic_write_text(path, text)
        paths[name] = path if part else None
    barrier(f"sep-questions-{out_dir}")
    return paths["se_subset"], paths["probe_only"]


def scored_sets(job: Any, backend: str, probe_only: Path | None
                ) -> dict[str, tuple[Path, ...]]:
    """Question sets the probes score beside the SE subset, where hidden states exist: the
    probe-only training questions, the validation samples (with their entropies, so SE and
    the probes are compared on the same questions), and the original model's evaluated
    splits (outcomes judged by the evaluation's judge)."""
    sets = {}
    if probe_only is not None:
        d = job.layout.sample(PROBE_ONLY)
        sets["probe_only"] = (d / hs.FILE_NAME, d / "generations.jsonl")
    d = job.layout.sample(SWEEP_SPLIT)
    if (d / hs.FILE_NAME).is_file():
        unc = job.layout.entropy(backend, SWEEP_SPLIT) / "uncertainty.jsonl"
        sets[f"{SWEEP_SPLIT}_samples"] = (d / hs.FILE_NAME, d / "generations.jsonl",
                                          *((unc,) if unc.is_file() else ()))
    for split in job.questions:
        if split == "train":
            continue
        d = job.layout.evaluate(ORIGINAL, split)
        # Where the original model's evaluation keeps its hidden states (settled with the
        # evaluate stage): beside its outcomes.
        if (d / hs.FILE_NAME).is_file() and (d / "outcomes.jsonl").is_file():
            sets[f"original_{split}"] = (d / hs.FILE_NAME, d / "outcomes.jsonl")
    return sets


def run_probes(job: Any, backend: str, generations: Path, uncertainty: Path,
               probe_only: Path | None) -> Path:
    """The probe stage of one backend's SE subset (once); returns train_scores.jsonl."""
    out = job.layout.probe(backend)
    if not is_done(out):
        summary = None   # written by the main process, which alone ran the stage
        if is_main_process():   # numpy on one process; the others wait in mark_done
            with job.clock.phase(f"probe {backend}") as timed:
                probe_stage.run_probe(
                    job.config, job.layout.sample(SUBSET) / hs.FILE_NAME, uncertainty,
                    generations, out, score=scored_sets(job, backend, probe_only),
                    train_sets=("probe_only",) if probe_only is not None else ())
            metrics = json.loads((out / "metrics.json").read_text())
            summary = {**{k: metrics[k] for k in ("chosen", "threshold", "num_subset")},
                       "seconds": round(timed.seconds, 1)}
        mark_done(out, summary)
    return out / probe_stage.TRAIN_SCORES_FILE


def prepare_sep(job: Any, methods: Sequence[str]) -> SepInputs:
    """Samples, entropies and probes of the probe methods (see module doc)."""
    size = job.config.labels.sep.train_size
    subset_q, rest_q = split_train(job.questions["train"], size, job.layout.sep_questions)
    generations = job.sample(SUBSET, subset_q)
    probe_only = job.sample(PROBE_ONLY, rest_q, num_samples=0) if rest_q else None
    backends = list(dict.fromkeys(sep_backend(m) for m in methods if sep_backend(m)))
    uncertainty = {b: job.entropy(b, SUBSET, generations) for b in backends}
    scores = {b: run_probes(job, b, generations, uncertainty[b], probe_only)
              for b in dict.fromkeys(sep_backend(m) for m in methods if m.startswith("sep_"))}
    return SepInputs(generations, uncertainty, scores)


def _interval(m: Mapping[str, Any] | None) -> str:
    if not m or m.get("value") is None or m["value"] != m["value"]:
        return "n/a"
    return f"{m['value']:.3f} [{m['low']:.3f}, {m['high']:.3f}]"


_WORDS = {"sep": "SEP", "acc": "Acc. probe", "auroc_se": "AUROC vs high SE",
          "spearman_se": "Spearman vs SE", "auroc_errors": "AUROC vs errors"}


def _pretty(name: str) -> str:
    """"sep auroc_se (val)" -> "SEP AUROC vs high SE (val)"."""
    probe, metric, where = name.split(" ", 2)
    return f"{_WORDS.get(probe, probe)} {_WORDS.get(metric, metric)} {where}"


def report_section(layout: Layout, methods: Sequence[str]) -> str:
    """The report's probe section: per backend, the chosen probe, its AUROCs beside SE's,
    and the per-layer table (probe/<b>/metrics.json, per_layer.md); "" without probes."""
    lines = []
    for b in dict.fromkeys(sep_backend(m) for m in methods if m.startswith("sep_")):
        d = layout.probe(b)
        if not (d / "metrics.json").is_file():
            continue
        m = json.loads((d / "metrics.json").read_text())
        chosen = m["chosen_metrics"]
        lines += [f"## Semantic entropy probes ({b})\n",
                  f"SE ({m['entropy_field']}) on {m['num_subset']} training questions "
                  f"({m['num_train']} fit the probes, {m['num_val']} choose position and "
                  f"layer); high SE = SE > {m['threshold']:.3f} (best split of the fit "
                  f"part; {m['high_se_fraction']:.0%} of the subset). Chosen SE probe: "
                  f"{m['chosen']['position'].upper()} layer {m['chosen']['layer']}; "
                  f"accuracy probe: " + (f"{m['acc_chosen']['position'].upper()} layer "
                                         f"{m['acc_chosen']['layer']}" if m['acc_chosen']
                                         else "none (no correctness labels)") + ".\n",
                  "Sets: `val` = the subset's held-out part; `probe_only` = the training "
                  "questions without SE; `val_samples` = the validation split's samples; "
                  "`original_<split>` = the original model's evaluated answers. Errors = the "
                  "base model's answer judged wrong.\n",
                  f"| metric ({m.get('confidence', 0.9):.0%} bootstrap interval) | value |",
                  "|---|---|",
                  *(f"| SE vs errors ({k}) | {_interval(v)} |"
                    for k, v in sorted(m["se_auroc_errors"].items()))]
        lines += [f"| {_pretty(name)} | {_interval(v)} |" for name, v in sorted(chosen.items())]
        lines += ["", "Per position and layer (`probe/" + b + "/metrics.csv` has the "
                  "intervals" + (", `auroc_per_layer.png` the plot" if m.get("plot") else "")
                  + "):\n", (d / "per_layer.md").read_text(), ""]
    return "\n".join(lines)
