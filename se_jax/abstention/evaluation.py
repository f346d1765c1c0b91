"""Scoring a model's answers: outcomes per question, abstention metrics (Accuracy,
Engagement, AED) and uncertainty metrics (AUROC, AURAC, PRR) with bootstrap intervals.
Pure Python/numpy (bootstrap vectorised over resamples); the model run that produces the
answers is the evaluate stage (se_jax/pipeline/stages/evaluate.py).

Outcome of a question: correct, incorrect, or abstained. With C correct, I incorrect and
|D| questions (Tjandra et al. 2024):
    Accuracy   = C / (C + I)            (on answered questions)
    Engagement = (C + I) / |D|
    AED        = sqrt((I^2 + (|D| - C)^2) / (2 |D|^2))   (0 = every question right)
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from se_jax.data import text


@dataclasses.dataclass(frozen=True)
class AbstentionMetrics:
    n: int
    correct: int
    incorrect: int
    abstained: int
    accuracy: float    # NaN when nothing was answered
    engagement: float
    aed: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def judge_outcomes(questions: Sequence[Mapping[str, Any]], predictions: Sequence[str],
                   judge: Any, *, abstention_variants: Sequence[str] = text.DEFAULT_ABSTENTION_VARIANTS,
                   abstention_phrase: str = text.ABSTENTION_PHRASE) -> list[dict]:
    """One outcome record per question: {"id", "question", "answers", "prediction",
    "abstained", "correct", "judge"}, plus "taught" where the question says whether the
    model was taught the fact (knowledge-controlled data). Abstentions are not judged
    (correct=False).

    `judge` is a se_jax.abstention.judges.Judge; answered questions are judged as one batch.
    """
    if len(questions) != len(predictions):
        raise ValueError(f"{len(questions)} questions but {len(predictions)} predictions")
    abstained = [text.is_abstention(p, abstention_variants, abstention_phrase)
                 for p in predictions]
    answered = [i for i, a in enumerate(abstained) if not a]
    verdicts = judge.batch([predictions[i] for i in answered],
                           [list(questions[i]["answers"]) for i in answered],
                           [questions[i]["question"] for i in answered])
    correct = [False] * len(questions)
    for i, v in zip(answered, verdicts):
        correct[i] = bool(v)
    return [{"id": q["id"], "question": q["question"], "answers": list(q["answers"]),
             "prediction": p, "abstained": a, "correct": c, "judge": judge.name,
             **({"taught": bool(q["taught"])} if "taught" in q else {})}
            for q, p, a, c in zip(questions, predictions, abstained, correct)]


def outcome_metrics(outcomes: Sequence[Mapping[str, Any]]) -> AbstentionMetrics:
    return abstention_metrics([o["correct"] for o in outcomes],
                              [o["abstained"] for o in outcomes])


def aed(correct, incorrect, n):
    """Accuracy-Engagement Distance; broadcasts over arrays."""
    correct, incorrect, n = (np.asarray(x, np.float64) for x in (correct, incorrect, n))
    return np.sqrt((incorrect ** 2 + (n - correct) ** 2) / (2.0 * n ** 2))


def abstention_metrics(correct: Sequence[bool], abstained: Sequence[bool]) -> AbstentionMetrics:
    """From per-question flags (`correct` is ignored where `abstained`)."""
    correct = np.asarray(correct, bool)
    abstained = np.asarray(abstained, bool)
    if correct.shape != abstained.shape:
        raise ValueError(f"correct {correct.shape} and abstained {abstained.shape} differ")
    n = int(correct.size)
    c = int(np.sum(correct & ~abstained))
    a = int(np.sum(abstained))
    i = n - c - a
    answered = c + i
    return AbstentionMetrics(
        n=n, correct=c, incorrect=i, abstained=a,
        accuracy=c / answered if answered else float("nan"),
        engagement=answered / n if n else float("nan"),
        aed=float(aed(c, i, n)) if n else float("nan"))


# ---- uncertainty metrics; each takes (scores [..., n], incorrect [..., n]) and returns [...]
# Higher score = more uncertain; a good score ranks incorrect answers above correct ones.

def auroc(scores: np.ndarray, incorrect: np.ndarray) -> np.ndarray:
    """Area under the ROC curve of `scores` predicting `incorrect` (ties count 1/2).

    Mann-Whitney U with average ranks; NaN where a row has only one class.
    """
    scores = np.asarray(scores, np.float64)
    incorrect = np.asarray(incorrect, bool)
    ranks = _average_ranks(scores)
    pos = incorrect.sum(-1)
    neg = incorrect.shape[-1] - pos
    u = np.sum(np.where(incorrect, ranks, 0.0), -1) - pos * (pos + 1) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((pos > 0) & (neg > 0), u / (pos * neg), np.nan)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks along the last axis, ties sharing their average rank."""
    order = np.argsort(x, axis=-1, kind="stable")
    sorted_x = np.take_along_axis(x, order, -1)
    n = x.shape[-1]
    pos = np.broadcast_to(np.arange(1, n + 1, dtype=np.float64), x.shape)
    # Average of the positions within each run of equal values.
    new_run = np.concatenate([np.ones(x.shape[:-1] + (1,), bool),
                              sorted_x[..., 1:] != sorted_x[..., :-1]], -1)
    run_id = np.cumsum(new_run, -1) - 1
    flat_ids = run_id + (np.arange(int(np.prod(x.shape[:-1]))).reshape(x.shape[:-1] + (1,))
                         * n)
    sums = np.bincount(flat_ids.ravel(), weights=pos.ravel(), minlength=flat_ids.size)
    counts = np.bincount(flat_ids.ravel(), minlength=flat_ids.size)
    avg_sorted = (sums / np.maximum(counts, 1))[flat_ids]
    ranks = np.empty_like(avg_sorted)
    np.put_along_axis(ranks, order, avg_sorted, -1)
    return ranks


def spearman(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Spearman's rank correlation of `scores` and `targets` along the last axis (ties share
    their average rank); NaN where either is constant."""
    a = _average_ranks(np.asarray(scores, np.float64))
    b = _average_ranks(np.asarray(targets, np.float64))
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(-1) / np.sqrt((a * a).sum(-1) * (b * b).sum(-1))


def rejection_curve(scores: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Accuracy of the kept answers after rejecting the k most uncertain, k = 0..n-1.

    Returns [..., n]: entry k is the accuracy on the n-k least uncertain answers. Ties are
    broken by order (stable sort on descending score).
    """
    scores = np.asarray(scores, np.float64)
    correct = np.asarray(correct, np.float64)
    n = scores.shape[-1]
    order = np.argsort(scores, axis=-1, kind="stable")  # ascending: most certain first
    kept_correct = np.cumsum(np.take_along_axis(correct, order, -1), -1)  # first m kept
    m = np.arange(1, n + 1)
    acc_first_m = kept_correct / m                        # [..., n], m = 1..n
    return acc_first_m[..., ::-1]                         # k rejected = n - m


def aurac(scores: np.ndarray, incorrect: np.ndarray) -> np.ndarray:
    """Area under the rejection-accuracy curve: mean over k of accuracy after rejecting k."""
    correct = ~np.asarray(incorrect, bool)
    return rejection_curve(scores, correct).mean(-1)


def prr(scores: np.ndarray, incorrect: np.ndarray) -> np.ndarray:
    """Prediction-rejection ratio: (AURAC_score - AURAC_random) / (AURAC_oracle - random).

    Random rejection keeps the base accuracy at every k; the oracle rejects incorrect
    answers first. 1 = oracle, 0 = random; NaN where every answer is right or every wrong.
    """
    incorrect = np.asarray(incorrect, bool)
    correct = ~incorrect
    base = correct.mean(-1)
    oracle = aurac(incorrect.astype(np.float64), incorrect)  # oracle score = incorrectness
    with np.errstate(invalid="ignore", divide="ignore"):
        value = (aurac(scores, incorrect) - base) / (oracle - base)
    return np.where(incorrect.any(-1) & correct.any(-1), value, np.nan)


UNCERTAINTY_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "auroc": auroc, "aurac": aurac, "prr": prr}


@dataclasses.dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def __str__(self) -> str:
        if math.isnan(self.value):
            return "n/a (needs correct and incorrect answers)"
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def bootstrap(metric: Callable[[np.ndarray, np.ndarray], np.ndarray], scores: Sequence[float],
              incorrect: Sequence[bool], *, num_samples: int = 1000, confidence: float = 0.90,
              seed: int = 0) -> Interval:
    """The metric with a percentile bootstrap interval (resamples evaluated as one batch).
    `incorrect` is the metric's second argument, kept in its dtype (each metric casts it:
    booleans for AUROC, continuous values for `spearman`)."""
    scores = np.asarray(scores, np.float64)
    incorrect = np.asarray(incorrect)
    value = float(metric(scores, incorrect))
    idx = np.random.default_rng(seed).integers(0, scores.size, (num_samples, scores.size))
    samples = metric(scores[idx], incorrect[idx])
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return Interval(value, float("nan"), float("nan"))
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(samples, [alpha, 1.0 - alpha])
    return Interval(value, float(low), float(high))


def uncertainty_metrics(scores: Sequence[float], incorrect: Sequence[bool], *,
                        num_samples: int = 1000, confidence: float = 0.90,
                        seed: int = 0) -> dict[str, Interval]:
    """{"auroc", "aurac", "prr"}: each with its bootstrap interval."""
    return {name: bootstrap(fn, scores, incorrect, num_samples=num_samples,
                            confidence=confidence, seed=seed)
            for name, fn in UNCERTAINTY_METRICS.items()}
