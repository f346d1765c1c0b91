"""The report stage's analyses over finished artifacts (no model runs except an LLM judge):

- `uncertainty_analysis`: how well each uncertainty score of the original model's samples
  predicts that its most-likely answer is wrong (AUROC / AURAC / PRR, bootstrap 90%
  intervals), and the score histograms split by correct / incorrect.
- `slick_breakdown`: accuracy and abstention rate of every evaluated model per SliCK
  category (Gekhman et al. 2024) of the question, the category computed from the original
  model's zero-shot greedy (T=0.1) and sampled answers (one exemplar set: an approximation
  of SliCK's few-shot P_correct, flagged as such in the report).
"""
from __future__ import annotations

import collections
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from se_jax import evaluation, labels, stage_io

# (record field, display name) of the estimators the entropy stage writes.
SCORES = (("discrete_semantic_entropy", "discrete SE"), ("semantic_entropy", "SE"),
          ("naive_entropy", "naive entropy"), ("exact_entropy", "exact-string entropy"))


def _most_likely_correct(generations: Sequence[Mapping[str, Any]], judge: Any,
                         config: Any) -> np.ndarray:
    """bool[n]: the most-likely answer is judged correct (an abstention is not correct)."""
    texts = [g["most_likely"]["text"] for g in generations]
    outcomes = evaluation.judge_outcomes(
        generations, texts, judge, abstention_variants=tuple(config.evaluation.abstention_variants),
        abstention_phrase=config.labels.abstention_phrase)
    return np.asarray([o["correct"] for o in outcomes], bool)


def uncertainty_analysis(config: Any, generations: Mapping[str, Path],
                         uncertainty: Mapping[str, Mapping[str, Path]], judge: Any
                         ) -> tuple[dict[str, dict], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Over all sampled splits (train + val) pooled.

    Returns ({score name: {"auroc", "aurac", "prr": Interval}},
             {"discrete SE (<backend>)": (scores, incorrect)} for the histograms).
    """
    ev = config.evaluation
    gens, correct = [], []
    for split, path in generations.items():
        g = stage_io.read_jsonl(path)
        gens += [(split, r["id"]) for r in g]
        correct.append(_most_likely_correct(g, judge, config))
    incorrect = ~np.concatenate(correct)
    metrics, hist = {}, {}
    backends = list(next(iter(uncertainty.values())))
    for b_index, backend in enumerate(backends):
        by_key = {}
        for split in generations:
            for u in stage_io.read_jsonl(uncertainty[split][backend]):
                by_key[(split, u["id"])] = u
        for field, name in SCORES:
            if field == "exact_entropy" and b_index > 0:
                continue   # does not depend on the backend
            label = name if field == "exact_entropy" else f"{name} ({backend})"
            scores = np.asarray([float(by_key[k][field]) for k in gens])
            metrics[label] = evaluation.uncertainty_metrics(
                scores, incorrect, num_samples=int(ev.bootstrap_samples),
                confidence=float(ev.confidence), seed=int(config.seed))
            if field == "discrete_semantic_entropy":
                hist[label] = (scores, ~incorrect)
    return metrics, hist


def slick_categories(generations: Sequence[Mapping[str, Any]], judge: Any) -> dict[str, str]:
    """{question id: SliCK category} from zero-shot most-likely and sampled answers."""
    out = {}
    for g in generations:
        golds, q = g["answers"], g["question"]
        greedy = [bool(judge(g["most_likely"]["text"], golds, q))]
        sampled = [bool(judge(s["text"], golds, q)) for s in g["samples"]]
        out[g["id"]] = labels.slick_category(greedy, sampled)
    return out


def slick_breakdown(outcomes: Mapping[tuple[str, str], Sequence[Mapping[str, Any]]],
                    categories: Mapping[str, str]) -> list[dict]:
    """Rows {method, split, category, n, accuracy, abstain_rate} for every (model, split)
    whose outcomes are given; accuracy is over answered questions."""
    rows = []
    for (method, split), outs in outcomes.items():
        groups = collections.defaultdict(list)
        for o in outs:
            if o["id"] in categories:
                groups[categories[o["id"]]].append(o)
        for cat in labels.SLICK_CATEGORIES:
            if cat not in groups:
                continue
            m = evaluation.outcome_metrics(groups[cat])
            rows.append(dict(method=method, split=split, category=cat, n=m.n,
                             accuracy=m.accuracy, abstain_rate=m.abstained / m.n))
    return rows
