"""The knowledge-controlled report: what leads the report when we know which facts the base
model was taught (se_jax/data/facts.py). Pure functions of per-question records and result
rows; markdown out. Metrics come from se_jax/abstention/evaluation.py (AUROC/AURAC/PRR, AED, bootstrap).

A per-question record (`join_records` builds them from the stages' outputs):

    {"id", "question", "answers": [gold], "taught": bool, "relation": str ("" if none),
     "base": {"prediction", "correct", "abstained"},      # the taught base model, greedy
     "scores": {score name: float},                       # uncertainty.jsonl entropies
     "num_clusters": int | None, "samples": [str],        # the base model's M samples
     "labels": {method: "answer" | "abstain"},           # only where the method labelled it
     "tuned": {method: {"prediction", "correct", "abstained"}}}

A base-model error is a question it did not answer correctly (abstentions count as errors,
the oracle abstains on them).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from se_jax.abstention import evaluation
from se_jax.pipeline import report
from se_jax.semantic.uncertainty import ESTIMATORS as SCORES   # uncertainty.jsonl keys -> names
ALL_ABSTAIN, ORACLE, ORIGINAL = "all_abstain", "oracle", "original"
label = report.method_label


def _outcome(o: Mapping[str, Any] | None) -> dict | None:
    if o is None:
        return None
    return {"prediction": o.get("prediction", ""), "correct": bool(o["correct"]),
            "abstained": bool(o["abstained"])}


def join_records(questions: Sequence[Mapping], base: Sequence[Mapping],
                 uncertainty: Sequence[Mapping] = (), generations: Sequence[Mapping] = (),
                 labels: Mapping[str, Sequence[Mapping]] | None = None,
                 tuned: Mapping[str, Sequence[Mapping]] | None = None) -> list[dict]:
    """Per-question records (module doc) from the stages' outputs, in `questions` order.

    questions: split records ({"id", "question", "answers", "taught"}); base / tuned[method]:
    evaluate-stage outcomes ({"id", "prediction", "correct", "abstained"}); uncertainty:
    uncertainty.jsonl lines; generations: generations.jsonl lines (samples' text);
    labels[method]: sft.jsonl lines ({"id", "label"}). A question without a base outcome is
    a KeyError naming its id.
    """
    by_id = lambda rows: {str(r["id"]): r for r in rows}  # noqa: E731
    base_, unc, gens = by_id(base), by_id(uncertainty), by_id(generations)
    labels_ = {m: by_id(v) for m, v in (labels or {}).items()}
    tuned_ = {m: by_id(v) for m, v in (tuned or {}).items()}
    out = []
    for q in questions:
        i = str(q["id"])
        if i not in base_:
            raise KeyError(f"question {i!r} has no base-model outcome")
        u = unc.get(i, {})
        out.append({
            "id": i, "question": q["question"], "answers": list(q["answers"]),
            "taught": bool(q["taught"]), "relation": str(q.get("relation", "")),
            "base": _outcome(base_[i]),
            "scores": {k: float(u[k]) for k in SCORES if k in u},
            "num_clusters": u.get("num_clusters"),
            "samples": [s["text"] for s in gens.get(i, {}).get("samples", [])],
            "labels": {m: v[i]["label"] for m, v in labels_.items() if i in v},
            "tuned": {m: _outcome(v.get(i)) for m, v in tuned_.items() if i in v},
        })
    return out


# ---- 1. does uncertainty predict the base model's errors? -------------------------------

def _arrays(records: Sequence[Mapping]) -> tuple[np.ndarray, np.ndarray]:
    """(base error bool[n], taught bool[n])."""
    error = np.asarray([not r["base"]["correct"] for r in records], bool)
    taught = np.asarray([r["taught"] for r in records], bool)
    return error, taught


def uncertainty_summary(records: Sequence[Mapping], *, num_samples: int = 1000,
                        confidence: float = 0.90, seed: int = 0) -> dict[str, dict]:
    """{score: {"auroc", "aurac", "prr": Interval for base errors, "untaught": Interval of
    AUROC for 'untaught'}} for every score present in all records."""
    error, taught = _arrays(records)
    out = {}
    for key in SCORES:
        if not records or not all(key in r["scores"] for r in records):
            continue
        s = np.asarray([r["scores"][key] for r in records], np.float64)
        m = evaluation.uncertainty_metrics(s, error, num_samples=num_samples,
                                           confidence=confidence, seed=seed)
        m["untaught"] = evaluation.bootstrap(evaluation.auroc, s, ~taught,
                                             num_samples=num_samples, confidence=confidence,
                                             seed=seed)
        out[key] = m
    return out


def uncertainty_markdown(summary: Mapping[str, Mapping[str, Any]], confidence: float = 0.90
                         ) -> str:
    pct = f"{confidence:.0%}"
    lines = ["| score | AUROC (errors) | AURAC | PRR | AUROC (untaught) |",
             "|---|---|---|---|---|",
             *(f"| {SCORES[k]} | {m['auroc']} | {m['aurac']} | {m['prr']} | {m['untaught']} |"
               for k, m in summary.items())]
    return "\n".join(lines) + f"\n\nIntervals: {pct} percentile bootstrap over questions."


# ---- 2. reference AEDs and AED intervals ------------------------------------------------

def _aed_of_flags(correct: np.ndarray, abstained: np.ndarray) -> np.ndarray:
    """AED of flag rows [..., n] (correct counts only where answered); for `bootstrap`."""
    abstained = np.asarray(abstained, bool)
    answered = ~abstained
    c = np.sum((np.asarray(correct) > 0.5) & answered, -1)
    i = np.sum(answered, -1) - c
    return evaluation.aed(c, i, abstained.shape[-1])


def aed_interval(correct: Sequence[bool], abstained: Sequence[bool], *, num_samples: int = 1000,
                 confidence: float = 0.90, seed: int = 0) -> evaluation.Interval:
    """AED with a percentile bootstrap interval over questions."""
    return evaluation.bootstrap(_aed_of_flags, np.asarray(correct, np.float64),
                                np.asarray(abstained, bool), num_samples=num_samples,
                                confidence=confidence, seed=seed)


def reference_outcomes(records: Sequence[Mapping]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"all_abstain", "oracle", "original": (correct bool[n], abstained bool[n])}; the
    oracle answers exactly where the base model is right and abstains elsewhere."""
    error = np.asarray([not r["base"]["correct"] for r in records], bool)
    n = len(records)
    base_abstained = np.asarray([r["base"]["abstained"] for r in records], bool)
    return {ALL_ABSTAIN: (np.zeros(n, bool), np.ones(n, bool)),
            ORACLE: (~error, error),
            ORIGINAL: (~error, base_abstained)}


def reference_rows(records: Sequence[Mapping], split: str, seed: int = 0,
                   judge: str = "") -> list[dict]:
    """Result rows (report.RESULT_FIELDS) of all-abstain and the oracle on one split."""
    rows = []
    for method, (correct, abstained) in reference_outcomes(records).items():
        if method == ORIGINAL:
            continue  # the experiment evaluates the original model itself
        m = evaluation.abstention_metrics(correct, abstained)
        rows.append({"method": method, "tau": "", "split": split, "seed": seed,
                     **m.as_dict(), "judge": judge})
    return rows


def method_outcomes(records: Sequence[Mapping], method: str) -> tuple[np.ndarray, np.ndarray]:
    """(correct, abstained) of a tuned method, or of a reference (reference_outcomes)."""
    refs = reference_outcomes(records)
    if method in refs:
        return refs[method]
    missing = [r["id"] for r in records if method not in r["tuned"]]
    if missing:
        raise KeyError(f"method {method!r} has no outcome for questions {missing[:5]}")
    return (np.asarray([r["tuned"][method]["correct"] for r in records], bool),
            np.asarray([r["tuned"][method]["abstained"] for r in records], bool))


# ---- 3. abstention on taught vs untaught facts ------------------------------------------

def knowledge_rates(records: Sequence[Mapping], methods: Sequence[str]) -> dict[str, dict]:
    """{method: {"abstain_taught", "abstain_untaught", "correct_taught", "aed": Interval}}:
    abstention rate on taught and untaught facts, accuracy over all taught facts, AED."""
    _, taught = _arrays(records)
    out = {}
    for method in methods:
        correct, abstained = method_outcomes(records, method)
        rate = lambda x, mask: float(x[mask].mean()) if mask.any() else float("nan")  # noqa
        out[method] = {"abstain_taught": rate(abstained, taught),
                       "abstain_untaught": rate(abstained, ~taught),
                       "correct_taught": rate(correct & ~abstained, taught),
                       "aed": aed_interval(correct, abstained)}
    return out


def knowledge_markdown(rates: Mapping[str, Mapping[str, Any]]) -> str:
    lines = ["| method | AED [90% CI] | abstains on untaught | abstains on taught | "
             "correct on taught |", "|---|---|---|---|---|"]
    for m, r in rates.items():
        lines.append(f"| {label(m)} | {r['aed']} | {r['abstain_untaught']:.3f} | "
                     f"{r['abstain_taught']:.3f} | {r['correct_taught']:.3f} |")
    return "\n".join(lines)


def relation_counts(records: Sequence[Mapping], methods: Sequence[str]
                    ) -> dict[str, dict[str, tuple[tuple[int, int], tuple[int, int]]]]:
    """{relation: {method: ((abstained, n) on taught, (abstained, n) on untaught)}}, the
    relations sorted. Abstention that tracks what the model knows differs between a
    relation's taught and untaught facts; abstention keyed on the question's form does not."""
    _, taught = _arrays(records)
    relation = np.asarray([r["relation"] for r in records])
    groups = {rel: [(relation == rel) & t for t in (taught, ~taught)]
              for rel in sorted(set(relation.tolist()))}
    abstained = {m: method_outcomes(records, m)[1] for m in methods}
    return {rel: {m: tuple((int(a[g].sum()), int(g.sum())) for g in masks)
                  for m, a in abstained.items()}
            for rel, masks in groups.items()}


def relation_markdown(counts: Mapping[str, Mapping[str, tuple]]) -> str:
    methods = list(next(iter(counts.values()), {}))
    lines = ["| relation | " + " | ".join(label(m) for m in methods) + " |",
             "|---|" + "---|" * len(methods)]
    for rel, by_method in counts.items():
        cells = [" · ".join(f"{a}/{n}" for a, n in by_method[m]) for m in methods]
        lines.append(f"| {rel} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---- 4. examples ------------------------------------------------------------------------

def _cell(x: Any, width: int = 60) -> str:
    s = " ".join(str(x).split()).replace("|", "\\|")
    return s if len(s) <= width else s[:width - 1] + "…"


def _verdict(o: Mapping[str, Any] | None) -> str:
    if o is None:
        return "-"
    mark = "abstains" if o["abstained"] else ("right" if o["correct"] else "wrong")
    return f"{_cell(o['prediction'], 40)} ({mark})"


def pick_examples(records: Sequence[Mapping], k: int, seed: int = 0) -> list[Mapping]:
    """k records, half taught and half untaught where possible, seeded and id-sorted."""
    rng = np.random.default_rng(seed)
    groups = [sorted((r for r in records if r["taught"] == t), key=lambda r: r["id"])
              for t in (True, False)]
    want = [k - k // 2, k // 2]
    # Give an empty group's share to the other.
    for a, b in ((0, 1), (1, 0)):
        spare = want[a] - len(groups[a])
        if spare > 0:
            want[a], want[b] = len(groups[a]), want[b] + spare
    picked = []
    for g, n in zip(groups, want):
        picked += [g[i] for i in sorted(rng.permutation(len(g))[:n])]
    return picked


def examples_markdown(records: Sequence[Mapping], method: str, *, k: int = 6, seed: int = 0,
                      score: str = "discrete_semantic_entropy") -> str:
    """question | gold | taught | base answer | clusters / SE | label | tuned answer."""
    lines = [f"| question | gold | taught | base answer | clusters / {SCORES[score]} | label | "
             f"{label(method)} answer |", "|---|---|---|---|---|---|---|"]
    for r in pick_examples(records, k, seed):
        se = r["scores"].get(score)
        unc = (f"{r['num_clusters'] if r['num_clusters'] is not None else '?'} / "
               + (f"{se:.2f}" if se is not None else "?"))
        lines.append(" | ".join([
            "", _cell(r["question"]), _cell(" / ".join(r["answers"][:2]), 30),
            "yes" if r["taught"] else "no", _verdict(r["base"]), unc,
            r["labels"].get(method, "-"), _verdict(r["tuned"].get(method)), ""]).strip())
    return "\n".join(lines)


# ---- 5. Table 1: setting x split rows, method columns -----------------------------------

def table1(results: Mapping[str, Sequence[Mapping[str, Any]]],
           methods: Sequence[str] | None = None) -> str:
    """Markdown like the paper's Table 1: one row per (setting, in-distribution test /
    each OOD split), one column per method, cells AED (mean ± std over seeds; best in bold).

    results: {setting name (e.g. "Short-QA"): result rows (report.RESULT_FIELDS), which may
    include reference rows (`reference_rows`)}. Methods default to those present, Original
    first and the references last.
    """
    if methods is None:
        seen = [r["method"] for rows in results.values() for r in rows]
        refs = [m for m in (ALL_ABSTAIN, ORACLE) if m in seen]
        methods = [m for m in report._ordered(seen) if m not in refs] + refs
    head = ["setting", "split", *(label(m) for m in methods)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for setting, rows in results.items():
        aed = report.summarise(rows, "aed")
        splits = list(dict.fromkeys(r["split"] for r in rows))
        ordered = [s for s in splits if s == "test"] + [s for s in splits if s.startswith("ood")]
        for split in ordered:
            present = [aed[(m, split)][0] for m in methods if (m, split) in aed]
            best = min(present, default=float("nan"))
            cells = [report.aed_cell(aed, (m, split), best) for m in methods]
            name = "in-distribution" if split == "test" else split
            lines.append("| " + " | ".join([setting, name, *cells]) + " |")
    return "\n".join(lines) + "\n\nAED (lower is better); the best of each row in bold."
