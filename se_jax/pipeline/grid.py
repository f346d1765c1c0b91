"""The paper's whole grid: several training sets (each an experiment over both answer
settings, `configs/paper_grid.py`), its Table 1, per-training-set tables, the aggregated
adaptation plot, what is done and what is missing, and its cost before it runs.

A grid point is one experiment (one training set: a dataset or a mix) with its own
workdir; `launch/sweep.py` runs the points (one process, or fanned out to a scheduler) and
then `write_grid_report`, which reads only the points' finished reports, so a partly done
grid reports what is there and lists what is missing.

Table 1 as in the paper (Section 7): per training set, the AED of each method on the
in-distribution test split and on each OOD split, mean and std over seeds; then averaged
over training sets (OOD: over training sets and their OOD datasets). The std in a cell is
the mean over training sets of the per-training-set std over seeds.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from se_jax.config.schema import RunConfig
from se_jax.io import stage_io, throughput
from se_jax.data import catalog
from se_jax.data import splits as split_lib
from se_jax.pipeline import cost, report
from se_jax.pipeline.layout import DONE, Layout
from se_jax.pipeline.plan import ORIGINAL, PROTOCOL_NAMES, SWEEP_SPLIT, Sweep, backends_needed

SETTING_NAMES = {"short": "Short-QA", "sentence": "Long-QA"}


@dataclasses.dataclass(frozen=True)
class Point:
    """One training set of the grid: its name and its experiment's typed config."""
    name: str
    config: RunConfig

    @property
    def settings(self) -> tuple[str, ...]:
        return tuple(self.config.experiment.settings) or (self.config.prompt.style,)

    def layout(self, style: str) -> Layout:
        several = bool(self.config.experiment.settings)
        return Layout.from_config(self.config, style if several else "")


def _rows(path: Path) -> list[dict] | None:
    """results.csv / sweep.csv rows, with empty metric cells (no answers) as NaN."""
    if not path.is_file():
        return None
    rows = report.read_results_csv(path)
    for r in rows:
        for k in ("aed", "accuracy", "engagement"):
            r[k] = float(r[k]) if r.get(k) not in ("", None) else math.nan
    return rows


def status(point: Point) -> dict[str, dict[str, Any]]:
    """{style: {"report": bool, "runs_done": n, "runs_planned": n}} of one point."""
    sweep = Sweep.from_config(point.config)
    out = {}
    for style in point.settings:
        layout = point.layout(style)
        done = sum(1 for _ in (layout.root / "train").rglob(DONE)) if (
            layout.root / "train").is_dir() else 0
        out[style] = dict(report=(layout.report_dir / "results.csv").is_file(),
                          runs_done=done, runs_planned=sweep.num_trainings)
    return out


def _summaries(points: Sequence[Point], style: str) -> dict[str, dict]:
    """{point: report.summarise(results)} of the points whose setting is reported."""
    out = {}
    for p in points:
        rows = _rows(p.layout(style).report_dir / "results.csv")
        if rows is not None:
            out[p.name] = report.summarise(rows, "aed")
    return out


def _average(cells: Sequence[tuple[float, float, int]]) -> tuple[float, float, int] | None:
    cells = [c for c in cells if not math.isnan(c[0])]
    if not cells:
        return None
    n = len(cells)
    return (sum(c[0] for c in cells) / n, sum(c[1] for c in cells) / n,
            min(c[2] for c in cells))


def table1_cells(points: Sequence[Point]) -> dict[tuple[str, str], dict[str, tuple]]:
    """{(setting name, "In-Distribution" | "Out-of-Distribution"): {method: (mean, std,
    seeds)}} averaged over the reported training sets."""
    out: dict[tuple[str, str], dict[str, tuple]] = {}
    styles = list(dict.fromkeys(s for p in points for s in p.settings))
    for style in sorted(styles, key=lambda s: s != "sentence"):   # Long-QA first
        summaries = _summaries(points, style)
        name = SETTING_NAMES.get(style, style)
        for part, keep in (("In-Distribution", lambda s: s == "test"),
                           ("Out-of-Distribution", lambda s: s.startswith("ood_"))):
            by_method: dict[str, list] = collections.defaultdict(list)
            for summary in summaries.values():
                for (method, split), cell in summary.items():
                    if keep(split):
                        by_method[method].append(cell)
            out[(name, part)] = {m: a for m, cells in by_method.items()
                                 if (a := _average(cells)) is not None}
    return out


def table1(points: Sequence[Point]) -> str:
    """Markdown Table 1: rows setting x in/out-of-distribution, columns methods (the
    original model first), cells mean ± std AED; the best of a row in bold."""
    cells = table1_cells(points)
    seen = [m for row in cells.values() for m in row]
    methods = report._ordered(seen)
    head = ["Setting", *(report.method_label(m) for m in methods)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (setting, part), row in cells.items():
        best = min((v[0] for v in row.values()), default=float("nan"))
        aed = {(m, ""): v for m, v in row.items()}
        lines.append("| " + " | ".join([f"{setting}: {part}", *(
            report.aed_cell(aed, (m, ""), best) or "—" for m in methods)]) + " |")
    return "\n".join(lines)


def _adaptation_rows(points: Sequence[Point], style: str) -> tuple[list[dict], list[dict]]:
    """The validation sweep of the single-dataset training sets, averaged over them: one
    row per (method, tau) with the mean #correct / #incorrect (rounded); and the original."""
    acc: dict[tuple[str, Any], list[dict]] = collections.defaultdict(list)
    for p in points:
        if len(p.config.data.in_distribution_names) > 1:
            continue   # the paper's All-Threshold Evaluation: single-dataset runs only
        rows = _rows(p.layout(style).report_dir / "sweep.csv") or []
        for r in rows:
            if r["split"] == SWEEP_SPLIT and "+" not in r["method"]:
                acc[(r["method"], r["tau"])].append(r)
    sweep, reference = [], []
    for (method, tau), rows in acc.items():
        mean = {k: round(sum(int(r[k]) for r in rows) / len(rows))
                for k in ("n", "correct", "incorrect")}
        row = dict(method=method, tau=tau, split=SWEEP_SPLIT, seed=0, **mean)
        (reference if method == ORIGINAL else sweep).append(row)
    return sweep, reference[:1]


def write_grid_report(points: Sequence[Point], out_dir: str | Path) -> Path:
    """<out_dir>/report.md (Table 1, per-training-set tables, what is missing), table1.json,
    adaptation_<setting>.png; returns report.md."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    first = points[0].config
    protocols = sorted({PROTOCOL_NAMES[p.config.experiment.protocol] for p in points})
    lines = ["# The paper's grid: Table 1 and per-training-set results\n",
             f"Training sets: {', '.join(p.name for p in points)}; model "
             f"`{first.model.path}`; protocol: {'; '.join(protocols)}; seeds "
             f"{list(first.experiment.seeds)}; taus {list(first.experiment.taus)}; "
             f"R-Tuning targets: {first.labels.answer_source} "
             f"({'the model' if first.labels.answer_source == 'model' else 'gold'}).\n",
             "## Table 1: AED averaged over training sets (mean ± std over seeds)\n",
             table1(points) + "\n",
             "In-distribution: the held-out test split of each training set's datasets; "
             "out-of-distribution: every OOD dataset of every training set. Lower is "
             "better; the best of each row in bold; — = no result yet.\n",
             "## What is done\n",
             "| training set | setting | report | fine-tuning runs done / planned |",
             "|---|---|---|---|"]
    missing = []
    for p in points:
        for style, st in status(p).items():
            lines.append(f"| {p.name} | {SETTING_NAMES.get(style, style)} | "
                         f"{'yes' if st['report'] else 'missing'} | "
                         f"{st['runs_done']} / {st['runs_planned']} |")
            if not st["report"]:
                missing.append(f"{p.name} {SETTING_NAMES.get(style, style)}")
    lines.append("\n" + (f"Missing: {', '.join(missing)} (Table 1 averages the reported "
                         f"training sets only)." if missing else "Every training set and "
                                                                  "setting is reported.") + "\n")
    lines.append("## Per training set (AED, mean ± std over seeds)\n")
    for p in points:
        for style in p.settings:
            rows = _rows(p.layout(style).report_dir / "results.csv")
            lines.append(f"### {p.name} ({p.config.data.in_distribution_label}), "
                         f"{SETTING_NAMES.get(style, style)}\n")
            if rows is None:
                lines.append("missing\n")
                continue
            split_names = list(dict.fromkeys(r["split"] for r in rows))
            ordered = ([s for s in split_names if s == "test"]
                       + [s for s in split_names if s.startswith("ood_")])
            lines.append(report.aed_table(rows, ordered) + "\n")
    for style in dict.fromkeys(s for p in points for s in p.settings):
        sweep, ref = _adaptation_rows(points, style)
        if sweep:
            name = f"adaptation_{style}.png"
            report.plot_adaptation(sweep, ref, out_dir / name, split=SWEEP_SPLIT)
            lines.append(f"![{SETTING_NAMES.get(style, style)} adaptation]({name})\n")
    lines.append("Adaptation plots: #correct vs #incorrect per tau, averaged over the "
                 "single-dataset training sets, on the in-distribution validation split "
                 "(the paper's All-Threshold Evaluation uses the OOD datasets; the grid "
                 "evaluates the tau sweep on validation only).\n")
    cells = {f"{s}: {part}": {m: list(v) for m, v in row.items()}
             for (s, part), row in table1_cells(points).items()}
    stage_io.atomic_write_text(out_dir / "table1.json",
                               json.dumps(cells, indent=1, sort_keys=True) + "\n")
    path = out_dir / "report.md"
    stage_io.atomic_write_text(path, "\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------------------- cost

PROMPT_TOKENS = 64   # assumed prompt length (chat template + question) for token counts


def _sizes(config: RunConfig) -> tuple[dict[str, int], int, str]:
    """Split sizes and OOD count from the datasets' plan, else from the config alone."""
    try:
        plan = split_lib.plan(config.data, config.workdir)
        return plan.sizes, len(plan.out_of_distribution), ""
    except (catalog.DatasetError, OSError, ValueError) as e:
        d, k = config.data, len(config.data.in_distribution_names)
        sizes = dict(train=d.train_size * k, val=d.val_size * k, test=d.test_size * k,
                     ood=d.ood_size)
        return sizes, len(d.out_of_distribution), f"{e}".splitlines()[0]


def totals(config: RunConfig) -> dict[str, Any]:
    """Counts of one experiment (all its answer settings): upper bounds."""
    sweep = Sweep.from_config(config)
    sizes, num_ood, problem = _sizes(config)
    settings = max(len(config.experiment.settings), 1)
    c = cost.estimate(config, sweep, sizes, num_ood=num_ood, settings=settings)
    sc, ev, tc = config.sampling, config.evaluation, config.training
    M = int(sc.num_samples)
    sampled = (sizes["train"] + sizes["val"]) * settings
    runs = sweep.num_trainings * settings
    final = (len(sweep.methods) + len(sweep.arms)) * len(sweep.seeds) + 1
    evaluated = (sizes["val"] * (sweep.num_trainings + 1)
                 + (sizes["test"] + sizes["ood"] * num_ood) * final) * settings
    backends = backends_needed(sweep.methods, config.entropy.backend)
    return dict(
        runs=runs, sampled_questions=sampled, samples=sampled * (M + 1),
        nli_calls=sampled * M * (M - 1) * sum(b == "deberta" for b in backends),
        entailment_judge_calls=sampled * M * (M - 1) * sum(b == "llm_judge" for b in backends),
        evaluated_questions=evaluated,
        correctness_judge_calls=evaluated if ev.judge == "llm" else 0,
        tokens_generated_sampling=sampled * (M + 1) * int(sc.max_new_tokens),
        tokens_generated_evaluation=evaluated * int(ev.max_new_tokens),
        tokens_prefilled=(sampled + evaluated) * PROMPT_TOKENS,
        tokens_trained=runs * int(tc.epochs) * sizes["train"]
        * (PROMPT_TOKENS + int(sc.max_new_tokens)),
        base_model_loads=c.model_loads, disk_bytes=sum(c.disk_bytes.values()),
        disk_known=len(c.disk_bytes) > 1, problem=problem)


def _matmul_params(config: RunConfig) -> float | None:
    n = cost.matmul_params(config)
    return None if n is None else float(n)


def describe_grid_cost(points: Sequence[Point], table: Mapping[str, Any] | None = None,
                       one_process: bool = False) -> str:
    """The grid's total cost: runs, samples, NLI / judge calls, tokens, loads, disk, and
    device-hours per device kind of the throughput table (se_jax/io/throughput.json)."""
    per = {p.name: totals(p.config) for p in points}
    keys = [k for k in next(iter(per.values())) if k not in ("problem", "disk_known")]
    total = {k: sum(v[k] for v in per.values()) for k in keys}
    if one_process:
        total["base_model_loads"] = max(v["base_model_loads"] for v in per.values())
    lines = [f"grid: {len(points)} training sets ({', '.join(per)})"]
    for name, v in per.items():
        lines.append(f"  {name}: {v['runs']} fine-tuning runs, {v['sampled_questions']} "
                     f"questions sampled" + (f" (data not checked: {v['problem']})"
                                             if v["problem"] else ""))
    labels = dict(runs="fine-tuning runs", samples="answers sampled (M+1 per question)",
                  nli_calls="DeBERTa NLI calls (<= M(M-1) per question)",
                  entailment_judge_calls="LLM entailment-judge calls (<= M(M-1) per question)",
                  evaluated_questions="questions evaluated (greedy)",
                  correctness_judge_calls="LLM correctness-judge calls",
                  tokens_generated_sampling="tokens generated, sampling (<=)",
                  tokens_generated_evaluation="tokens generated, evaluation (<=)",
                  tokens_prefilled=f"prompt tokens prefilled (~{PROMPT_TOKENS} per prompt)",
                  tokens_trained="tokens trained (epochs x examples x (prompt + target))",
                  base_model_loads="base-model loads" + (" (one process)" if one_process
                                                        else " (one per training set)"),
                  sampled_questions="questions sampled")
    lines.append("total:")
    for k in keys:
        if k == "disk_bytes":
            known = all(v["disk_known"] for v in per.values())
            lines.append(f"  disk: ~{total[k] / 2**30:.1f} GiB" + (
                "" if known else " (generations and evaluations only: the model's config "
                                 "could not be read, so adapters and checkpoints are left out)"))
        else:
            lines.append(f"  {labels.get(k, k)}: {total[k]:,}")
    table = throughput.load() if table is None else table
    params = _matmul_params(points[0].config)
    devices = table.get("devices", {})
    if not devices:
        lines.append("device-hours: the throughput table has no device kinds")
    for kind, entry in devices.items():
        if params is None:
            lines.append(f"device-hours on {kind}: unknown (the model's size cannot be read "
                         f"offline to rescale the table's {entry['model']['name']} figures)")
            continue
        phases = dict(sample=total["tokens_generated_sampling"],
                      decode=total["tokens_generated_evaluation"],
                      prefill=total["tokens_prefilled"], train=total["tokens_trained"])
        hours = {ph: throughput.device_hours(n, throughput.tokens_per_s(
            table, kind, ph, matmul_params=params)) for ph, n in phases.items()}
        lines.append(f"device-hours on {kind} (measured on {entry['model']['name']}, "
                     f"rescaled to {params / 1e9:.2f}B parameters; an estimate): "
                     f"{sum(hours.values()):,.0f} (" + ", ".join(
                         f"{ph} {h:,.0f}" for ph, h in hours.items()) + ")")
    lines.append("device kinds without a figure in se_jax/io/throughput.json (e.g. TPU v4/v5e, "
                 "NVIDIA H100/H200): not estimated; run `python -m benchmarks.accelerator_report "
                 "--update_table` on one to add it")
    return "\n".join(lines)
