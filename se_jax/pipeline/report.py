"""The experiment's report: results.csv, report.md (a table like the paper's Table 1) and
PNG plots. Pure functions of result rows; matplotlib with the Agg backend (no display).

A result row (one method x split x seed, after tau was picked) has the fields RESULT_FIELDS.
Sweep rows (every tau on the validation split) have the same fields; the adaptation plot
draws them.
"""
from __future__ import annotations

import collections
import contextlib
import csv
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from se_jax.io import stage_io

RESULT_FIELDS = ("method", "tau", "split", "seed", "n", "correct", "incorrect", "abstained",
                 "accuracy", "engagement", "aed", "judge")

# Stable colours and a readable name per method (others get the cycle's next colour).
_METHOD_STYLE = {
    "original": ("#444444", "Original model"),
    "rtuning": ("#d62728", "R-Tuning"),
    "rtuning_u": ("#ff7f0e", "R-Tuning-U"),
    "idk": ("#9467bd", "Idk"),
    "all_abstain": ("#bbbbbb", "All abstain"),
    "oracle": ("#000000", "Oracle (abstains on base errors)"),
}
_SE_COLOURS = ("#1f77b4", "#2ca02c", "#17becf", "#8c564b")


_ARM_LABEL = {"self_distill": "self-distillation", "attention_only": "attention-only"}


def method_label(method: str) -> str:
    """'se_lexical' -> 'SE (lexical)'; an arm 'se_lexical+attention_only' ->
    'SE (lexical) + attention-only'."""
    if "+" in method:
        base, arm = method.split("+", 1)
        return f"{method_label(base)} + {_ARM_LABEL.get(arm, arm)}"
    if method in _METHOD_STYLE:
        return _METHOD_STYLE[method][1]
    if method.startswith("se_"):
        return f"SE ({method[3:]})"
    return method


def method_colour(method: str, methods: Sequence[str]) -> str:
    if method in _METHOD_STYLE:
        return _METHOD_STYLE[method][0]
    se = [m for m in methods if m not in _METHOD_STYLE]
    return _SE_COLOURS[se.index(method) % len(_SE_COLOURS)] if method in se else "#7f7f7f"


def _fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, float):
        return "" if math.isnan(x) else f"{x:.{digits}f}"
    return str(x)


def write_results_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """One row per method x split x seed (RESULT_FIELDS, in that order)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=RESULT_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(r.get(k, "")) if isinstance(r.get(k), float) else r.get(k, "")
                        for k in RESULT_FIELDS})
    return path


def read_results_csv(path: str | os.PathLike) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if not math.isnan(x)], np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def summarise(rows: Sequence[Mapping[str, Any]], metric: str = "aed"
              ) -> dict[tuple[str, str], tuple[float, float, int]]:
    """{(method, split): (mean, std over seeds, number of seeds)}."""
    groups: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    for r in rows:
        groups[(r["method"], r["split"])].append(float(r[metric]))
    return {k: (*_mean_std(v), len(v)) for k, v in groups.items()}


def _ordered(items: Sequence[str], first: Sequence[str] = ("original",)) -> list[str]:
    seen = list(dict.fromkeys(items))
    return [m for m in first if m in seen] + [m for m in seen if m not in first]


def aed_cell(aed: Mapping[tuple[str, str], tuple[float, float, int]], key: tuple[str, str],
             best: float) -> str:
    """A table cell of `summarise` output: "mean ± std" (std when over several seeds), bold
    when it is the best of its column or row; "" when the method has no such result."""
    if key not in aed:
        return ""
    mean, std, k = aed[key]
    cell = f"{mean:.3f}" + (f" ± {std:.3f}" if k > 1 else "")
    return f"**{cell}**" if mean == best else cell


def aed_table(rows: Sequence[Mapping[str, Any]], splits: Sequence[str]) -> str:
    """Markdown: one row per method, mean AED (± std over seeds) per split, the picked tau,
    and accuracy / engagement of the in-distribution test split. Lower AED is better."""
    aed = summarise(rows, "aed")
    acc = summarise(rows, "accuracy")
    eng = summarise(rows, "engagement")
    taus = collections.defaultdict(set)
    for r in rows:
        taus[r["method"]].add(str(r["tau"]))
    methods = _ordered([r["method"] for r in rows])
    test = splits[0]
    head = ["method", "tau", *(f"AED {s}" for s in splits), f"accuracy {test}",
            f"engagement {test}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best = {s: min((aed[(m, s)][0] for m in methods if (m, s) in aed), default=float("nan"))
            for s in splits}
    for m in methods:
        cells = [method_label(m), "/".join(sorted(taus[m])) or "-"]
        cells += [aed_cell(aed, (m, s), best[s]) for s in splits]
        for table in (acc, eng):
            mean, std, k = table.get((m, test), (float("nan"), 0.0, 0))
            cells.append("n/a (no answers)" if math.isnan(mean) else
                         _fmt(mean) + (f" ± {std:.3f}" if k > 1 else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots

_STYLE = {"figure.dpi": 120, "font.size": 10, "axes.grid": True, "grid.alpha": 0.3,
          "axes.spines.top": False, "axes.spines.right": False}


@contextlib.contextmanager
def _figure(path: str | os.PathLike, figsize: tuple[float, float], **subplots):
    """`(fig, axes)` of a new figure in the report's style, saved to `path` on exit.

    A bare `Figure` (no pyplot): no global figure registry or rcParams to leak into the
    caller's process, and pyplot's import (~0.6 s) is skipped."""
    import matplotlib
    from matplotlib.figure import Figure
    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=figsize)
        yield fig, fig.subplots(**subplots)
        fig.tight_layout()
        fig.savefig(path)


def plot_adaptation(sweep_rows: Sequence[Mapping[str, Any]], reference_rows: Sequence[
        Mapping[str, Any]], path: str | os.PathLike, *, split: str = "val",
        judge: str = "") -> Path:
    """#correct vs #incorrect on `split`: one point per tau (labelled), one curve per method
    (mean over seeds); the original model as a star; dotted lines of equal AED."""
    with _figure(path, figsize=(7.5, 5.5)) as (_, ax):
        _draw_adaptation(ax, sweep_rows, reference_rows, split, judge)
    return Path(path)


def _draw_adaptation(ax: Any, sweep_rows: Sequence[Mapping[str, Any]],
                     reference_rows: Sequence[Mapping[str, Any]], split: str,
                     judge: str) -> None:
    rows = [r for r in sweep_rows if r["split"] == split]
    methods = _ordered([r["method"] for r in rows])
    n = max([int(r["n"]) for r in [*rows, *reference_rows] if r["split"] == split] or [1])
    # Iso-AED contours: AED = sqrt((I^2 + (n-C)^2) / (2 n^2)).
    ii, cc = np.meshgrid(np.linspace(0, n, 200), np.linspace(0, n, 200))
    levels = np.round(np.arange(0.05, 1.0, 0.05), 2)
    cs = ax.contour(ii, cc, np.sqrt((ii ** 2 + (n - cc) ** 2) / (2 * n ** 2)), levels=levels,
                    colors="#bbbbbb", linestyles=":", linewidths=0.8)
    ax.clabel(cs, fmt=lambda v: f"AED {v:.2f}", fontsize=7)
    xs, ys = [], []
    for m in methods:
        by_tau = collections.defaultdict(list)
        for r in rows:
            if r["method"] == m:
                by_tau[float(r["tau"]) if r["tau"] not in ("", None) else math.nan].append(r)
        taus = sorted(by_tau)
        inc = [np.mean([int(r["incorrect"]) for r in by_tau[t]]) for t in taus]
        cor = [np.mean([int(r["correct"]) for r in by_tau[t]]) for t in taus]
        xs += inc
        ys += cor
        colour = method_colour(m, methods)
        style = "-o" if len(taus) > 1 else "s"          # methods without tau: one square
        # Shrinking sizes keep coinciding points of several methods visible (concentric).
        size = max(13 - 3 * methods.index(m), 4)
        ax.plot(inc, cor, style, color=colour, label=method_label(m), markersize=size,
                markeredgecolor="white", markeredgewidth=0.8, lw=1.5, clip_on=False,
                zorder=3 + methods.index(m))
        if len(taus) > 1:
            for t, x, y in zip(taus, inc, cor):
                if not math.isnan(t):
                    ax.annotate(f"{t:g}", (x, y), textcoords="offset points", xytext=(4, 3),
                                fontsize=7, color=colour)
    for r in reference_rows:
        if r["split"] == split:
            xs.append(int(r["incorrect"]))
            ys.append(int(r["correct"]))
            ax.plot(xs[-1:], ys[-1:], "*", color="#444444", markersize=16, clip_on=False,
                    label=method_label(r["method"]), zorder=2)
            break
    # Zoom on the points (margin 8%, window at least 40% of n), within [0, n] plus a
    # sliver so that points on the edge stay whole.
    edge = 0.03 * n
    for lo_hi, setter in ((xs, ax.set_xlim), (ys, ax.set_ylim)):
        lo, hi = min(lo_hi, default=0) - 0.08 * n, max(lo_hi, default=n) + 0.08 * n
        grow = max(0.0, 0.4 * n - (hi - lo)) / 2
        lo, hi = lo - grow, hi + grow
        shift = max(0.0, -edge - lo) - max(0.0, hi - n - edge)
        setter(max(-edge, lo + shift), min(n + edge, hi + shift))
    ax.set_xlabel(f"# incorrect answers (of {n}; fewer is better)")
    ax.set_ylabel(f"# correct answers (of {n}; more is better)")
    ax.set_title(f"Adaptation on {split}: one point per tau (labelled)"
                 + (f"\njudge: {judge}; dotted: equal AED" if judge else ""), fontsize=10)
    ax.legend(loc="best", fontsize=8, framealpha=0.9)


def plot_aed(rows: Sequence[Mapping[str, Any]], splits: Sequence[str],
             path: str | os.PathLike, *, judge: str = "") -> Path:
    """Grouped bars: mean AED per method for each split, error bars = std over seeds."""
    aed = summarise(rows, "aed")
    methods = _ordered([r["method"] for r in rows])
    width = 0.8 / max(len(methods), 1)
    with _figure(path, figsize=(max(7.5, 2.0 * len(splits) + 0.5 * len(methods)), 4.5)
                 ) as (_, ax):
        x = np.arange(len(splits))
        for k, m in enumerate(methods):
            means = [aed.get((m, s), (np.nan, 0, 0))[0] for s in splits]
            stds = [aed.get((m, s), (np.nan, 0, 0))[1] for s in splits]
            pos = x - 0.4 + width * (k + 0.5)
            bars = ax.bar(pos, means, width, yerr=stds, capsize=3, label=method_label(m),
                          color=method_colour(m, methods), alpha=0.9)
            for b, v in zip(bars, means):
                if not math.isnan(v):
                    ax.text(b.get_x() + b.get_width() / 2, v + 0.01, f"{v:.2f}", ha="center",
                            va="bottom", fontsize=7)
        ax.set_xticks(x, splits)
        ax.set_ylabel("AED (lower is better)")
        top = max([v[0] + v[1] for v in aed.values() if not math.isnan(v[0])] or [0.75])
        ax.set_ylim(0, min(1.0, top) + 0.1)   # room for the value labels above 1.0 bars
        ax.set_title("AED per method and split (lower is better)\n"
                     "error bars: std over seeds" + (f"; judge: {judge}" if judge else ""),
                     fontsize=10)
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return Path(path)


def plot_entropy_histograms(panels: Mapping[str, tuple[Sequence[float], Sequence[bool]]],
                            path: str | os.PathLike, *, taus: Sequence[float] = (),
                            judge: str = "", notes: Mapping[str, str] | None = None) -> Path:
    """One panel per score (e.g. discrete SE of each backend): histograms of the score for
    questions whose most-likely answer was correct vs incorrect (density, shared bins)."""
    names = list(panels)
    with _figure(path, nrows=1, ncols=len(names), squeeze=False,
                 figsize=(max(7.5, 5.0 * len(names)), 4.4)) as (fig, axes):
        for ax, name in zip(axes[0], names):
            scores, correct = (np.asarray(v) for v in panels[name])
            correct = correct.astype(bool)
            hi = max(float(scores.max()) if scores.size else 1.0, 1e-6)
            bins = np.linspace(0, hi * 1.0001, 13)
            for mask, colour, what in ((correct, "#2ca02c", "correct"),
                                       (~correct, "#d62728", "incorrect")):
                if mask.any():   # density of an empty class is undefined
                    ax.hist(scores[mask], bins=bins, alpha=0.6, color=colour,
                            label=f"{what} (n={int(mask.sum())})", density=True)
            for t in taus:
                if t <= hi:
                    ax.axvline(t, color="#888888", lw=0.6, ls="--")
            ax.set_xlabel(name + " (nats)")
            ax.set_ylabel("density")
            note = (notes or {}).get(name, "")
            ax.set_title(name + (f"\n{note}" if note else ""), fontsize=9)
            ax.legend(fontsize=8)
        fig.suptitle("Semantic entropy of questions answered correctly vs incorrectly"
                     + (f"\njudge: {judge}; dashed lines: taus" if judge else ""), fontsize=10)
    return Path(path)


# ----------------------------------------------------------------------------- report.md

PLOTS = {"adaptation": "adaptation.png", "aed": "aed.png", "entropy": "entropy_hist.png"}


def uncertainty_table(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: one row per score, AUROC / AURAC / PRR with their 90% intervals."""
    lines = ["| score | AUROC | AURAC | PRR |", "|---|---|---|---|"]
    for name, m in metrics.items():
        lines.append(f"| {name} | {m['auroc']} | {m['aurac']} | {m['prr']} |")
    return "\n".join(lines)


def label_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown of the SFT sets: {method, tau, answer, abstain} per labelled set."""
    lines = ["| method | tau | answer targets | abstain targets |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {method_label(r['method'])} | {r['tau'] if r['tau'] != '' else '-'} "
                     f"| {r['answer']} | {r['abstain']} |")
    return "\n".join(lines)


def breakdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown of SliCK category rows {method, split, category, n, accuracy, abstain_rate}."""
    lines = ["| method | split | category | n | accuracy | abstention rate |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {method_label(r['method'])} | {r['split']} | {r['category']} | "
                     f"{r['n']} | {_fmt(float(r['accuracy']))} | "
                     f"{_fmt(float(r['abstain_rate']))} |")
    return "\n".join(lines)


def phase_table(telemetry: Mapping[str, Any]) -> str:
    """Markdown: seconds per phase of this invocation, then model loads and XLA programs
    built (compiled, or read from the persistent cache) per program name."""
    lines = ["| phase | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in telemetry["phases"]]
    total = sum(seconds for _, seconds in telemetry["phases"])
    lines += [f"| **all phases** | **{total:.1f}** |", "",
              f"Model loads: {telemetry['model_loads']}. Programs built: "
              f"{sum(n for n, _ in telemetry['compilations'].values())} "
              f"({telemetry['persistent_cache_hits']} of them read from the persistent "
              f"compilation cache).", "", "| program | builds | compile seconds |",
              "|---|---|---|"]
    big = sorted(telemetry["compilations"].items(), key=lambda kv: -kv[1][1])
    lines += [f"| `{name}` | {n} | {seconds:.1f} |" for name, (n, seconds) in big
              if seconds >= 0.5]
    return "\n".join(lines)


def write_report(out_dir: str | os.PathLike, *, results: Sequence[Mapping[str, Any]],
                 sweep: Sequence[Mapping[str, Any]], splits: Sequence[str], judge: str,
                 uncertainty: Mapping[str, Mapping[str, Any]] | None = None,
                 histograms: Mapping[str, tuple[Sequence[float], Sequence[bool]]] | None = None,
                 taus: Sequence[float] = (), breakdown: Sequence[Mapping[str, Any]] = (),
                 label_sets: Sequence[Mapping[str, Any]] = (),
                 header: str = "", telemetry: Mapping[str, Any] | None = None,
                 lead: Sequence[str] = ()) -> dict[str, Path]:
    """Write results.csv, sweep.csv, the PNG plots and report.md into `out_dir`.

    Args:
      results: final rows (picked tau) for every method x split x seed, incl. "original".
      sweep: validation rows for every method x tau x seed.
      splits: the test splits in table order (in-distribution test first, then OOD).
      judge: the correctness judge's name, printed with every number.
      uncertainty: {score name: {"auroc"|"aurac"|"prr": Interval}}.
      histograms: {score name: (scores, correct)} for the entropy histogram plot.
      label_sets: {method, tau, answer, abstain} per SFT set (what each model was taught).
      telemetry: se_jax.io.telemetry.Telemetry.snapshot() of this invocation (phase table).
      lead: markdown sections placed before the AED table (what the report leads with).
    Returns {"report", "results", "sweep", plot name...: path}.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"results": write_results_csv(results, out / "results.csv"),
             "sweep": write_results_csv(sweep, out / "sweep.csv")}
    reference = [r for r in results if r["method"] == "original"]
    ref_val = [r for r in sweep if r["method"] == "original"] or reference
    paths["adaptation"] = plot_adaptation([r for r in sweep if r["method"] != "original"],
                                          ref_val, out / PLOTS["adaptation"], judge=judge)
    paths["aed"] = plot_aed(results, splits, out / PLOTS["aed"], judge=judge)
    if histograms:
        notes = {k: f"AUROC {v['auroc']}" for k, v in (uncertainty or {}).items()
                 if k in histograms}
        paths["entropy"] = plot_entropy_histograms(histograms, out / PLOTS["entropy"],
                                                   taus=taus, judge=judge, notes=notes)
    parts = ["# Abstention fine-tuning with semantic entropy: results\n",
             header.strip() + "\n" if header else "",
             f"Correctness judge: **{judge}**. AED = sqrt((I^2 + (|D|-C)^2) / (2|D|^2)); "
             f"lower is better; bold = best per column. tau picked per method by mean "
             f"validation AED; mean ± std over seeds.\n",
             *lead,
             "## AED per method (Table 1 style)\n", aed_table(results, splits) + "\n",
             f"![AED per method]({PLOTS['aed']})\n",
             "## Adaptation: correct vs incorrect answers on validation, per tau\n",
             f"![adaptation plot]({PLOTS['adaptation']})\n"]
    if label_sets:
        parts += ["## Training sets: answer vs abstain targets\n",
                  label_table(label_sets) + "\n"]
    if uncertainty:
        parts += [f"## Uncertainty of the original model's most-likely answers "
                  f"(90% bootstrap intervals; judge: {judge})\n",
                  uncertainty_table(uncertainty) + "\n"]
    if histograms:
        parts.append(f"![entropy histograms]({PLOTS['entropy']})\n")
    if breakdown:
        parts += ["## SliCK category breakdown\n", breakdown_table(breakdown) + "\n"]
    if telemetry:
        parts += ["## Where the time went (this invocation)\n", phase_table(telemetry) + "\n"]
    parts += ["Files: `results.csv` (one row per method x split x seed), `sweep.csv` (every "
              "tau on validation).\n"]
    paths["report"] = out / "report.md"
    stage_io.atomic_write_text(paths["report"], "\n".join(p for p in parts if p))
    return paths
