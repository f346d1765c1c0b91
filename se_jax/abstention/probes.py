"""Semantic entropy probes (Kossen et al. 2024, arXiv 2406.15927): pure maths, no I/O.

A probe is a logistic regression on one hidden state (one position, one layer) of a
question, trained to predict whether its semantic entropy is high. SE is binarised at the
`best_split` threshold: the split of the observed SE values that minimises the squared
error within the two groups (1-D two-means; Kossen et al. search a grid of 100 thresholds,
here every gap between sorted distinct values is tried exactly).

The fit: L2-regularised logistic regression on standardised features, solved by Newton's
method (IRLS) in float64 numpy. Why not a few hundred optax steps in JAX: the problem is
convex and small (N questions x D <= a few thousand features), Newton reaches the optimum in
~10 steps with no learning rate or step count to tune, is deterministic, and minimises the
same objective as scikit-learn's `LogisticRegression(C=1/l2)` that the SEP code uses (bias
unpenalised). Cost per step: O(N D^2 + D^3) (a 4096-wide layer: a few seconds on a CPU).
Standardising (train mean and std) makes one `l2` sensible across layers whose residual
streams differ in scale by orders of magnitude.

Metrics come from se_jax/abstention/evaluation.py (AUROC with ties counted 1/2, Spearman
with average ranks, percentile bootstrap intervals).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

# Features whose train std is below this are left unscaled (a constant dimension).
_MIN_STD = 1e-6


def best_split(values: Sequence[float]) -> float:
    """The threshold t minimising SSE({v <= t}) + SSE({v > t}) over the observed values.

    t is the midpoint between two adjacent distinct values (ties in SSE: the smaller t).
    With one distinct value there is no split: that value is returned (every question
    "low"). ValueError on no values.
    """
    v = np.sort(np.asarray(values, np.float64).ravel())
    if v.size == 0:
        raise ValueError("best_split needs at least one value")
    distinct = np.unique(v)
    if distinct.size < 2:
        return float(distinct[0])
    n = v.size
    s1, s2 = np.cumsum(v), np.cumsum(v * v)
    k = np.searchsorted(v, distinct[:-1], side="right")   # sizes of the low groups
    low1, low2 = s1[k - 1], s2[k - 1]
    high1, high2 = s1[-1] - low1, s2[-1] - low2
    sse = (low2 - low1 ** 2 / k) + (high2 - high1 ** 2 / (n - k))
    i = int(np.argmin(sse))
    return float((distinct[i] + distinct[i + 1]) / 2)


def split_sse(values: Sequence[float], threshold: float) -> float:
    """SSE({v <= t}) + SSE({v > t}): what `best_split` minimises (for checks and tests)."""
    v = np.asarray(values, np.float64).ravel()
    return float(sum(((g - g.mean()) ** 2).sum() for g in (v[v <= threshold], v[v > threshold])
                     if g.size))


@dataclasses.dataclass(frozen=True)
class Probe:
    """A fitted logistic probe: score(x) = sigmoid(((x - mean) / scale) . weights + bias)."""
    mean: np.ndarray      # [D]
    scale: np.ndarray     # [D]
    weights: np.ndarray   # [D]
    bias: float

    def logits(self, x: np.ndarray) -> np.ndarray:
        """[N, D] -> [N] float64 log-odds of the positive class."""
        z = (np.asarray(x, np.float64) - self.mean) / self.scale
        return z @ self.weights + self.bias

    def scores(self, x: np.ndarray) -> np.ndarray:
        """[N, D] -> [N] probabilities of the positive class (high SE, or incorrect)."""
        return 1.0 / (1.0 + np.exp(-self.logits(x)))

    def arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        """Its arrays under `prefix` names (for an .npz file)."""
        return {f"{prefix}mean": self.mean, f"{prefix}scale": self.scale,
                f"{prefix}weights": self.weights, f"{prefix}bias": np.float64(self.bias)}

    @classmethod
    def from_arrays(cls, arrays, prefix: str = "") -> "Probe":
        return cls(*(np.asarray(arrays[f"{prefix}{k}"], np.float64)
                     for k in ("mean", "scale", "weights")),
                   float(arrays[f"{prefix}bias"]))


def _objective(z: np.ndarray, y: np.ndarray, w: np.ndarray, l2: float) -> float:
    logits = z @ w
    # sum of log(1 + e^l) - y l, computed stably; the bias (last weight) is unpenalised.
    return float(np.sum(np.logaddexp(0.0, logits) - y * logits) + 0.5 * l2 * w[:-1] @ w[:-1])


def fit_probe(x: np.ndarray, y: Sequence[bool], *, l2: float = 1.0, max_iter: int = 50,
              tol: float = 1e-8) -> Probe:
    """Fit a logistic probe to features x [N, D] and binary targets y [N] (Newton's method
    with step halving on min sum logloss + l2/2 |w|^2; bias unpenalised)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"fit_probe: features {x.shape} and targets {y.shape} do not match")
    if l2 <= 0:
        raise ValueError(f"fit_probe: l2={l2} must be > 0 (separable data has no optimum)")
    mean = x.mean(0)
    std = x.std(0)
    scale = np.where(std > _MIN_STD, std, 1.0)
    z = np.concatenate([(x - mean) / scale, np.ones((x.shape[0], 1))], 1)   # [N, D+1]
    d = z.shape[1]
    reg = np.full(d, l2)
    reg[-1] = 1e-9   # the bias: unpenalised (a tiny ridge keeps one-class targets finite)
    w = np.zeros(d)
    loss = _objective(z, y, w, l2)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(z @ w)))
        grad = z.T @ (p - y) + reg * w
        hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(reg)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while True:   # halve the step until the (convex) objective does not increase
            new_w = w - t * step
            new_loss = _objective(z, y, new_w, l2)
            if new_loss <= loss or t < 1e-8:
                break
            t *= 0.5
        w, improvement, loss = new_w, loss - new_loss, new_loss
        if improvement <= tol * max(1.0, abs(loss)):
            break
    return Probe(mean, scale, w[:-1].copy(), float(w[-1]))


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows) of n questions: a seeded permutation, the last
    round(n * val_fraction) (at least 1 when n >= 2) for validation, both sorted."""
    if n < 2:
        raise ValueError(f"a probe needs at least 2 labelled questions, got {n}")
    n_val = min(max(int(round(n * val_fraction)), 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[:n - n_val]), np.sort(order[n - n_val:])


def rate_matched_threshold(scores: Sequence[float], rate: float) -> float:
    """The score threshold t with "score > t -> abstain" abstaining on `rate` of `scores`
    (as near as ties allow, never more): the k-th largest score, k = round(rate * n);
    -inf when every question abstains."""
    s = np.sort(np.asarray(scores, np.float64))[::-1]
    if s.size == 0:
        raise ValueError("rate_matched_threshold needs at least one score")
    k = int(round(float(rate) * s.size))
    return float(s[k]) if k < s.size else float("-inf")
