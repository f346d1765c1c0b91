"""Which hidden state predicts semantic entropy: a probe per (position, layer), fitted,
compared and chosen. Pure (arrays in, results out); the probe stage does the I/O
(se_jax/pipeline/stages/probe.py).

Protocol (Kossen et al. 2024, on our data):
- the SE subset (questions whose SE was computed) is split by a seeded permutation into a
  train part and a validation part (`val_fraction`);
- SE is binarised at `best_split` of the train part's SE (the validation part never
  informs the target it is scored against);
- per (position, layer): an SE probe fitted on the train part against high SE, and, where
  the base model's correctness is known, an accuracy probe against its errors;
- the SE probe's (position, layer) is the one with the highest validation AUROC against
  binarised SE (the accuracy probe's: against errors); the chosen probes are then refit on
  the whole SE subset, which is what labels and scores new questions;
- every probe is reported on the validation part (AUROC vs binarised SE, Spearman vs SE,
  AUROC vs errors) and on every other scored set with correctness (AUROC vs errors), with
  percentile bootstrap intervals (on sets whose SE is known, against binarised SE and
  Spearman too); SE's own AUROC for errors on every set with both is the reference.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping, Sequence

import numpy as np

from se_jax.abstention import evaluation
from se_jax.abstention.probes import Probe, best_split, fit_probe, split_indices

Key = tuple[str, int]                       # (position, layer)
Features = Callable[[str, int], np.ndarray]  # (position, layer) -> [N, D] float32
VAL = "val"   # the name of the SE subset's validation part in the rows


@dataclasses.dataclass(frozen=True)
class Scored:
    """A set of questions the probes score: their features and, when known, the base
    model's errors ([N] bool) and semantic entropies ([N]); None when unknown."""
    features: Features
    errors: np.ndarray | None = None
    entropy: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Study:
    threshold: float               # best split of the train part's SE: high = SE > threshold
    chosen: Key                    # the SE probe's position and layer
    sep: Probe                     # refit on the whole SE subset at `chosen`
    acc_chosen: Key | None         # the accuracy probe's (None: no correctness labels)
    acc: Probe | None
    rows: list[dict]               # one per (probe, position, layer, set, metric)
    # SE's own AUROC for the base model's errors: on the validation part (VAL) and on every
    # other set with both entropies and errors.
    se_errors: dict[str, evaluation.Interval]
    num_train: int
    num_val: int


def _two_classes(y: np.ndarray | None) -> bool:
    return y is not None and 0 < int(np.sum(y)) < len(y)


def interval_metrics(scores: np.ndarray, *, high: np.ndarray | None = None,
                     entropy: np.ndarray | None = None, errors: np.ndarray | None = None,
                     num_samples: int, confidence: float, seed: int
                     ) -> dict[str, evaluation.Interval]:
    """{"auroc_se", "spearman_se", "auroc_errors"}: those whose target is given."""
    targets = dict(auroc_se=(evaluation.auroc, high), spearman_se=(evaluation.spearman, entropy),
                   auroc_errors=(evaluation.auroc, errors))
    return {name: evaluation.bootstrap(fn, scores, target, num_samples=num_samples,
                                       confidence=confidence, seed=seed)
            for name, (fn, target) in targets.items() if target is not None}


def _rows(probe: str, key: Key, split: str, metrics: Mapping[str, evaluation.Interval]
          ) -> list[dict]:
    return [dict(probe=probe, position=key[0], layer=key[1], set=split, metric=name,
                 value=iv.value, low=iv.low, high=iv.high) for name, iv in metrics.items()]


def _best(values: Mapping[Key, float]) -> Key:
    """The key with the highest value (NaN lowest; ties: the first in order)."""
    return max(values, key=lambda k: -math.inf if math.isnan(values[k]) else values[k])


def run_study(keys: Sequence[Key], subset: Scored, entropy: np.ndarray,
              others: Mapping[str, Scored] = {}, *, l2: float, val_fraction: float,
              max_iter: int, seed: int, num_samples: int, confidence: float) -> Study:
    """Fit, assess and choose the probes (see the module doc). `subset`: the SE subset's
    features and errors; `entropy` [N]: its semantic entropies; `others`: sets to assess
    the probes on (those with errors)."""
    entropy = np.asarray(entropy, np.float64)
    train, val = split_indices(len(entropy), val_fraction, seed)
    threshold = best_split(entropy[train])
    high = entropy > threshold
    errors = subset.errors
    has_acc = _two_classes(errors[train] if errors is not None else None)
    stats = dict(num_samples=num_samples, confidence=confidence, seed=seed)
    fit = dict(l2=l2, max_iter=max_iter)
    rows: list[dict] = []
    val_auroc, acc_val_auroc = {}, {}
    for key in keys:
        x = subset.features(*key)
        probes = {"sep": fit_probe(x[train], high[train], **fit)}
        if has_acc:
            probes["acc"] = fit_probe(x[train], errors[train], **fit)
        for name, probe in probes.items():
            scores = probe.scores(x[val])
            metrics = interval_metrics(
                scores, errors=None if errors is None else errors[val],
                **(dict(high=high[val], entropy=entropy[val]) if name == "sep" else {}),
                **stats)
            rows += _rows(name, key, VAL, metrics)
            (val_auroc if name == "sep" else acc_val_auroc)[key] = (
                metrics["auroc_se" if name == "sep" else "auroc_errors"].value)
            for split, other in others.items():
                se_targets = (dict(high=other.entropy > threshold, entropy=other.entropy)
                              if name == "sep" and other.entropy is not None else {})
                if other.errors is not None or se_targets:
                    rows += _rows(name, key, split, interval_metrics(
                        probe.scores(other.features(*key)), errors=other.errors,
                        **se_targets, **stats))
    chosen = _best(val_auroc)
    sep = fit_probe(subset.features(*chosen), high, **fit)
    acc_chosen = _best(acc_val_auroc) if acc_val_auroc else None
    acc = (fit_probe(subset.features(*acc_chosen), errors, **fit)
           if acc_chosen is not None else None)
    sets = {VAL: (entropy[val], None if errors is None else errors[val]),
            **{k: (o.entropy, o.errors) for k, o in others.items()}}
    se_errors = {k: evaluation.bootstrap(evaluation.auroc, e, err, **stats)
                 for k, (e, err) in sets.items() if e is not None and err is not None}
    return Study(threshold, chosen, sep, acc_chosen, acc, rows, se_errors, len(train),
                 len(val))
