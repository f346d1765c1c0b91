"""The probe stage: hidden states + semantic entropies of an SE subset -> semantic entropy
probes, their metrics per (position, layer), and a probe score for every question.

Inputs (docs/contracts.md, "Probes"):
- the SE subset: `hidden_states.npz` (se_jax/io/hidden_states.py), its `uncertainty.jsonl`
  (entropy field `config.labels.entropy`) and `generations.jsonl` (the base model's
  most-likely answer, judged for its errors with `config.labels.judge`);
- `score`: more question sets to score, name -> (hidden_states.npz, records[,
  uncertainty.jsonl]): records are generations (most-likely answer + gold answers, judged)
  or the evaluate stage's outcomes (`correct`); with an uncertainty file the probes are
  also compared with SE there, and SE's own AUROC for errors is reported; the sets named
  in `train_sets` are training questions the `sep` labeller labels.

Outputs in `out_dir` (written whole and atomically; the fit is cheap and deterministic, so
a rerun redoes it, like the label stage):
- `probes.npz`: the chosen SE probe (`sep_*`) and accuracy probe (`acc_*`) with the
  position / layer / threshold they use;
- `metrics.json` (choice, threshold, sizes, SE's own AUROC for errors) and `metrics.csv`
  (one row per probe x position x layer x set x metric, with bootstrap intervals);
- `per_layer.md` (AUROC per layer as a text table) and `auroc_per_layer.png` (when
  matplotlib is installed);
- `scores.jsonl`: every scored question: id, set, score (the SE probe's probability of
  high SE), acc_score, entropy (SE subset only);
- `train_scores.jsonl`: the training questions (the SE subset and `train_sets`) with
  question, answers, most_likely, score and entropy: the `sep` labeller's input.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from absl import logging

from se_jax.abstention import judges
from se_jax.abstention import probe_study
from se_jax.config.schema import RunConfig
from se_jax.io import hidden_states as hs
from se_jax.io import stage_io
from se_jax.pipeline.stages import DEPENDS_ON, NEUTRAL_KEYS, claimed

PROBES_FILE = "probes.npz"
SCORES_FILE = "scores.jsonl"
TRAIN_SCORES_FILE = "train_scores.jsonl"
SUBSET = "se_subset"
CSV_FIELDS = ("probe", "position", "layer", "set", "metric", "value", "low", "high")
# Of `labels`, the probes read the entropy field, the judge and labels.sep; the rest (the
# labeller's own knobs) never changes them.
_NEUTRAL = NEUTRAL_KEYS + tuple(f"labels.{k}" for k in (
    "method", "tau", "backend", "abstention_phrase", "answer_source", "idk_threshold",
    "slick_unknown"))


def _errors(records: Sequence[Mapping[str, Any]], judge: judges.Judge) -> np.ndarray | None:
    """[N] bool: the base model's answer was wrong. From `correct` (evaluate outcomes) or the
    most-likely answer judged against `answers` (generations); None when neither is there."""
    if all("correct" in r for r in records):
        return np.asarray([not r["correct"] for r in records], bool)
    if all("most_likely" in r and r.get("answers") for r in records):
        texts = [r["most_likely"]["text"] if isinstance(r["most_likely"], Mapping)
                 else str(r["most_likely"]) for r in records]
        verdicts = judge.batch(texts, [list(r["answers"]) for r in records],
                               [r["question"] for r in records])
        return ~np.asarray(verdicts, bool)
    return None


def _scored(hidden: Path, records: list[dict], judge, entropy: np.ndarray | None = None
            ) -> tuple[hs.HiddenStates, Any]:
    """The rows of `hidden` for `records` (in their order) as a probe_study.Scored."""
    states = hs.load(hidden).select([str(r["id"]) for r in records])
    return states, probe_study.Scored(states.features, _errors(records, judge), entropy)


def _entropies(path: Path, ids: Sequence[str], field: str) -> np.ndarray | None:
    """[N] entropies of `ids` from an uncertainty.jsonl; None when one is missing (skipped)."""
    by_id = {str(u["id"]): u for u in stage_io.read_jsonl(path)}
    if any(i not in by_id for i in ids):
        logging.warning("probe: %s lacks some questions' entropies; SE is not compared there",
                        path)
        return None
    return np.asarray([float(by_id[i][field]) for i in ids])


def _most_likely_text(record: Mapping[str, Any]) -> str:
    ml = record.get("most_likely", "")
    return ml["text"] if isinstance(ml, Mapping) else str(ml)


def _fmt(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.3f}"


def per_layer_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A markdown table: one row per (position, layer); columns: each (probe, set, metric)'s
    value."""
    columns = list(dict.fromkeys((r["probe"], r["set"], r["metric"]) for r in rows))
    keys = list(dict.fromkeys((r["position"], r["layer"]) for r in rows))
    value = {(r["position"], r["layer"], r["probe"], r["set"], r["metric"]): r["value"]
             for r in rows}
    head = ["position", "layer", *(f"{p} {m} ({s})" for p, s, m in columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for pos, layer in keys:
        cells = [_fmt(value.get((pos, layer, *c), float("nan"))) for c in columns]
        lines.append(f"| {pos} | {layer} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_per_layer(rows: Sequence[Mapping[str, Any]], se_errors: Mapping[str, Any],
                   path: Path) -> bool:
    """AUROC per layer: one panel per position, one line per (probe, set, metric); False when
    matplotlib is not installed (the CSV and per_layer.md hold the same numbers)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    positions = list(dict.fromkeys(r["position"] for r in rows))
    fig, axes = plt.subplots(1, len(positions), figsize=(5 * len(positions), 4), sharey=True,
                             squeeze=False)
    lines: dict[tuple, list] = {}
    for r in rows:
        if r["metric"].startswith("auroc"):
            lines.setdefault((r["position"], r["probe"], r["set"], r["metric"]), []).append(
                (r["layer"], r["value"]))
    for ax, pos in zip(axes[0], positions):
        for (p, probe, split, metric), points in lines.items():
            if p != pos:
                continue
            points.sort()
            target = "high SE" if metric == "auroc_se" else "errors"
            ax.plot([q[0] for q in points], [q[1] for q in points], marker="o",
                    linestyle="-" if probe == "sep" else "--",
                    label=f"{'SEP' if probe == 'sep' else 'Acc. probe'} vs {target} ({split})")
        for (split, iv), style in zip(se_errors.items(), ("-", "-.", ":", "--")):
            if not math.isnan(iv.value):
                ax.axhline(iv.value, color="k", linewidth=0.8, linestyle=style,
                           label=f"SE vs errors ({split})")
        ax.axhline(0.5, color="grey", linewidth=0.5, linestyle=":")
        ax.set_title(f"{pos.upper()} probes")
        ax.set_xlabel("layer")
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("AUROC")
    fig.tight_layout()
    with stage_io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return True


def _csv(rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


@claimed
def run_probe(config: RunConfig, hidden: str | Path, uncertainty: str | Path,
              generations: str | Path, out_dir: str | Path, *,
              score: Mapping[str, tuple[str | Path, ...]] | None = None,
              train_sets: Sequence[str] = ()) -> Path:
    """Fit and assess the probes, score every question (see module doc); returns the path
    of `train_scores.jsonl`."""
    out_dir, score = Path(out_dir), dict(score or {})
    unknown = sorted(set(train_sets) - set(score))
    if unknown:
        raise ValueError(f"probe stage: train set {unknown[0]!r} is not among the scored "
                         f"sets {sorted(score)}")
    inputs = {"hidden_states": Path(hidden), "uncertainty": Path(uncertainty),
              "generations": Path(generations)}
    for name, (h, r, *u) in score.items():
        inputs.update({f"{name}_hidden_states": Path(h), f"{name}_records": Path(r)})
        if u:
            inputs[f"{name}_uncertainty"] = Path(u[0])
    for what, path in inputs.items():
        if not path.is_file():
            hint = (" (the sample stage writes it beside generations.jsonl when "
                    "config.probes.layers is set; a directory sampled without it must be "
                    "sampled again)" if what.endswith("hidden_states") else "")
            raise FileNotFoundError(f"probe stage: {what} file {path} does not exist{hint}")
    stage_io.write_config(out_dir, config, ignore=_NEUTRAL, depends_on=DEPENDS_ON["probe"],
                          inputs=inputs)
    pc, lc, ev = config.probes, config.labels, config.evaluation
    judge = judges.string_judge(lc.judge, lc.f1_threshold)
    field = lc.entropy
    gens = stage_io.read_jsonl(generations)
    by_id = {str(u["id"]): u for u in stage_io.read_jsonl(uncertainty)}
    subset_records = [g for g in gens if str(g["id"]) in by_id]   # skipped ones have no SE
    if not subset_records:
        raise ValueError(f"probe stage: no question of {generations} has an entropy in "
                         f"{uncertainty}")
    entropy = np.asarray([float(by_id[str(g["id"])][field]) for g in subset_records])
    subset_states, subset = _scored(Path(hidden), subset_records, judge)
    others, records = {}, {}
    for name, (h, r, *u) in score.items():
        records[name] = stage_io.read_jsonl(r)
        ent = (_entropies(Path(u[0]), [str(x["id"]) for x in records[name]], field)
               if u else None)
        _, others[name] = _scored(Path(h), records[name], judge, ent)
    keys = [(p, l) for p in subset_states.positions for l in subset_states.layers
            if p in pc.positions]
    study = probe_study.run_study(
        keys, subset, entropy, others, l2=pc.l2, val_fraction=pc.val_fraction,
        max_iter=pc.max_iter, seed=config.seed, num_samples=ev.bootstrap_samples,
        confidence=ev.confidence)

    arrays = {**study.sep.arrays("sep_"),
              "sep_position": np.asarray(study.chosen[0]), "sep_layer": np.int32(study.chosen[1]),
              "threshold": np.float64(study.threshold)}
    if study.acc is not None:
        arrays.update(study.acc.arrays("acc_"), acc_position=np.asarray(study.acc_chosen[0]),
                      acc_layer=np.int32(study.acc_chosen[1]))
    with stage_io.atomic_path(out_dir / PROBES_FILE) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    def probe_scores(scored: probe_study.Scored) -> tuple[np.ndarray, np.ndarray | None]:
        sep = study.sep.scores(scored.features(*study.chosen))
        acc = (study.acc.scores(scored.features(*study.acc_chosen))
               if study.acc is not None else None)
        return sep, acc

    all_scores, train_scores = [], []
    sets = [(SUBSET, subset_records, subset, entropy), *(
        (name, records[name], others[name], None) for name in score)]
    for name, recs, scored, ent in sets:
        sep, acc = probe_scores(scored)
        for i, r in enumerate(recs):
            row = dict(id=str(r["id"]), set=name, score=float(sep[i]),
                       acc_score=None if acc is None else float(acc[i]),
                       entropy=None if ent is None else float(ent[i]))
            all_scores.append(row)
            if name == SUBSET or name in train_sets:
                train_scores.append(dict(row, question=r["question"],
                                         answers=list(r.get("answers", [])),
                                         most_likely=_most_likely_text(r)))
    stage_io.write_jsonl(out_dir / SCORES_FILE, all_scores)
    stage_io.atomic_write_text(out_dir / "metrics.csv", _csv(study.rows))
    table = per_layer_table(study.rows)
    stage_io.atomic_write_text(out_dir / "per_layer.md", table + "\n")
    plotted = plot_per_layer(study.rows, study.se_errors, out_dir / "auroc_per_layer.png")
    chosen_rows = {f"{r['probe']} {r['metric']} ({r['set']})": dict(
        value=r["value"], low=r["low"], high=r["high"]) for r in study.rows
        if (r["probe"], r["position"], r["layer"]) in
        (("sep", *study.chosen), ("acc", *(study.acc_chosen or ("", -2))))}
    summary = dict(
        entropy_field=field, threshold=study.threshold, confidence=ev.confidence,
        bootstrap_samples=ev.bootstrap_samples, num_train=study.num_train,
        num_val=study.num_val, num_subset=len(subset_records),
        high_se_fraction=float(np.mean(entropy > study.threshold)),
        chosen=dict(position=study.chosen[0], layer=study.chosen[1]),
        acc_chosen=(dict(position=study.acc_chosen[0], layer=study.acc_chosen[1])
                    if study.acc_chosen else None),
        chosen_metrics=chosen_rows,
        se_auroc_errors={k: dict(value=v.value, low=v.low, high=v.high)
                         for k, v in study.se_errors.items()},
        sets={name: len(records[name]) for name in score}, train_sets=list(train_sets),
        plot="auroc_per_layer.png" if plotted else None)
    stage_io.atomic_write_text(out_dir / "metrics.json",
                               json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    path = out_dir / TRAIN_SCORES_FILE
    stage_io.write_jsonl(path, train_scores)
    logging.info("probe: chose %s layer %d (validation AUROC vs high SE %s); SE's AUROC "
                 "for errors %s; wrote %s", study.chosen[0], study.chosen[1],
                 chosen_rows.get(f"sep auroc_se ({probe_study.VAL})", {}).get("value"),
                 {k: str(v) for k, v in study.se_errors.items()}, out_dir)
    return path
