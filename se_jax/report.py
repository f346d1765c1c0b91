"""The experiment's report: results.csv, report.md (a table like the paper's Table 1) and
PNG plots. Pure functions of result rows; matplotlib with the Agg backend (no display).

A result row (one method x split x seed, after tau was picked) has the fields RESULT_FIELDS.
Sweep rows (every tau on the validation split) have the same fields; the adaptation plot
draws them.
"""
from __future__ import annotations

import collections
import csv
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

RESULT_FIELDS = ("method", "tau", "split", "seed", "n", "correct", "incorrect", "abstained",
                 "accuracy", "engagement", "aed", "judge")

# Stable colours and a readable name per method (others get the cycle's next colour).
_METHOD_STYLE = {
    "original": ("#444444", "Original model"),
    "rtuning": ("#d62728", "R-Tuning"),
    "rtuning_u": ("#ff7f0e", "R-Tuning-U"),
    "idk": ("#9467bd", "Idk"),
}
_SE_COLOURS = ("#1f77b4", "#2ca02c", "#17becf", "#8c564b")


def method_label(method: str) -> str:
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
        for s in splits:
            if (m, s) not in aed:
                cells.append("")
                continue
            mean, std, k = aed[(m, s)]
            cell = f"{mean:.3f}" + (f" ± {std:.3f}" if k > 1 else "")
            cells.append(f"**{cell}**" if mean == best[s] else cell)
        for table in (acc, eng):
            mean, std, k = table.get((m, test), (float("nan"), 0.0, 0))
            cells.append(_fmt(mean) + (f" ± {std:.3f}" if k > 1 else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"figure.dpi": 120, "font.size": 10, "axes.grid": True,
                         "grid.alpha": 0.3, "axes.spines.top": False,
                         "axes.spines.right": False})
    return plt


def plot_adaptation(sweep_rows: Sequence[Mapping[str, Any]], reference_rows: Sequence[
        Mapping[str, Any]], path: str | os.PathLike, *, split: str = "val",
        judge: str = "") -> Path:
    """#correct vs #incorrect on `split`: one point per tau (labelled), one curve per method
    (mean over seeds); the original model as a star; dotted lines of equal AED."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    rows = [r for r in sweep_rows if r["split"] == split]
    methods = _ordered([r["method"] for r in rows])
    n = max([int(r["n"]) for r in [*rows, *reference_rows] if r["split"] == split] or [1])
    # Iso-AED contours: AED = sqrt((I^2 + (n-C)^2) / (2 n^2)).
    ii, cc = np.meshgrid(np.linspace(0, n, 200), np.linspace(0, n, 200))
    levels = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    cs = ax.contour(ii, cc, np.sqrt((ii ** 2 + (n - cc) ** 2) / (2 * n ** 2)), levels=levels,
                    colors="#bbbbbb", linestyles=":", linewidths=0.8)
    ax.clabel(cs, fmt=lambda v: f"AED {v:.1f}", fontsize=7)
    for m in methods:
        by_tau = collections.defaultdict(list)
        for r in rows:
            if r["method"] == m:
                by_tau[float(r["tau"]) if r["tau"] not in ("", None) else math.nan].append(r)
        taus = sorted(by_tau)
        inc = [np.mean([int(r["incorrect"]) for r in by_tau[t]]) for t in taus]
        cor = [np.mean([int(r["correct"]) for r in by_tau[t]]) for t in taus]
        colour = method_colour(m, methods)
        ax.plot(inc, cor, "-o", color=colour, label=method_label(m), markersize=5, lw=1.5)
        if len(taus) > 1:
            for t, x, y in zip(taus, inc, cor):
                if not math.isnan(t):
                    ax.annotate(f"{t:g}", (x, y), textcoords="offset points", xytext=(4, 3),
                                fontsize=7, color=colour)
    for r in reference_rows:
        if r["split"] == split:
            ax.plot([int(r["incorrect"])], [int(r["correct"])], "*", color="#444444",
                    markersize=14, label=method_label(r["method"]))
            break
    ax.set_xlim(0, n)
    ax.set_ylim(0, n)
    ax.set_xlabel(f"# incorrect answers (of {n})")
    ax.set_ylabel(f"# correct answers (of {n})")
    ax.set_title(f"Adaptation on {split}: one point per tau (labelled)"
                 + (f"\njudge: {judge}" if judge else ""))
    ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_aed(rows: Sequence[Mapping[str, Any]], splits: Sequence[str],
             path: str | os.PathLike, *, judge: str = "") -> Path:
    """Grouped bars: mean AED per method for each split, error bars = std over seeds."""
    plt = _pyplot()
    aed = summarise(rows, "aed")
    methods = _ordered([r["method"] for r in rows])
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(splits) + 0.5 * len(methods)), 4.5))
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
    ax.set_ylim(0, min(1.0, top + 0.1))
    ax.set_title("Accuracy-Engagement Distance per method (error bars: std over seeds)"
                 + (f"\njudge: {judge}" if judge else ""))
    ax.legend(fontsize=8, ncol=min(len(methods), 3), loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_entropy_histograms(panels: Mapping[str, tuple[Sequence[float], Sequence[bool]]],
                            path: str | os.PathLike, *, taus: Sequence[float] = (),
                            judge: str = "", notes: Mapping[str, str] | None = None) -> Path:
    """One panel per score (e.g. discrete SE of each backend): histograms of the score for
    questions whose most-likely answer was correct vs incorrect (density, shared bins)."""
    plt = _pyplot()
    names = list(panels)
    fig, axes = plt.subplots(1, len(names), figsize=(5.0 * len(names), 4.0), squeeze=False)
    for ax, name in zip(axes[0], names):
        scores, correct = (np.asarray(v) for v in panels[name])
        correct = correct.astype(bool)
        hi = max(float(scores.max()) if scores.size else 1.0, 1e-6)
        bins = np.linspace(0, hi * 1.0001, 13)
        ax.hist(scores[correct], bins=bins, alpha=0.6, color="#2ca02c",
                label=f"correct (n={int(correct.sum())})", density=True)
        ax.hist(scores[~correct], bins=bins, alpha=0.6, color="#d62728",
                label=f"incorrect (n={int((~correct).sum())})", density=True)
        for t in taus:
            if t <= hi:
                ax.axvline(t, color="#888888", lw=0.6, ls="--")
        ax.set_xlabel(name + " (nats)")
        ax.set_ylabel("density")
        note = (notes or {}).get(name, "")
        ax.set_title(name + (f"\n{note}" if note else ""), fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle("Semantic entropy of questions answered correctly vs incorrectly"
                 + (f" (judge: {judge}; dashed: taus)" if judge else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
