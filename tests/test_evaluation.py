"""Metrics: AED on the paper's example, hand-computed AUROC / AURAC / PRR, bootstrap, outcomes."""
from __future__ import annotations

import math

import numpy as np
import pytest

from se_jax.abstention import evaluation as E
from se_jax.abstention import judges


def test_aed_paper_example():
    # Tjandra et al. 2024: I=750, C=1750, |D|=2500 -> 0.30.
    assert E.aed(1750, 750, 2500) == pytest.approx(0.30, abs=1e-12)
    m = E.abstention_metrics([True] * 1750 + [False] * 750, [False] * 2500)
    assert (m.correct, m.incorrect, m.abstained, m.n) == (1750, 750, 0, 2500)
    assert m.aed == pytest.approx(0.30, abs=1e-12)
    assert m.accuracy == pytest.approx(0.7) and m.engagement == pytest.approx(1.0)


def test_aed_extremes_and_abstentions():
    assert E.aed(10, 0, 10) == 0.0                               # all right
    assert E.aed(0, 0, 10) == pytest.approx(math.sqrt(0.5))      # all abstain
    assert E.aed(0, 10, 10) == pytest.approx(1.0)                # all wrong
    # 2 right, 1 wrong, 1 abstained (its `correct` flag is ignored).
    m = E.abstention_metrics([True, True, False, True], [False, False, False, True])
    assert (m.correct, m.incorrect, m.abstained) == (2, 1, 1)
    assert m.accuracy == pytest.approx(2 / 3) and m.engagement == pytest.approx(0.75)
    assert m.aed == pytest.approx(math.sqrt((1 + 4) / (2 * 16)))
    assert math.isnan(E.abstention_metrics([False], [True]).accuracy)


def test_auroc_hand_computed():
    # incorrect answers score 0.35 and 0.8; correct ones 0.1 and 0.4: 3 of 4 pairs ordered.
    assert E.auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
    assert E.auroc([1.0, 1.0], [True, False]) == pytest.approx(0.5)   # a tie counts 1/2
    assert E.auroc([0.0, 1.0], [False, True]) == pytest.approx(1.0)
    assert np.isnan(E.auroc([0.1, 0.2], [True, True]))               # one class only


def test_auroc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(100):
        n = int(rng.integers(2, 25))
        s = rng.integers(0, 4, n).astype(float)
        y = rng.random(n) < 0.4
        if y.all() or not y.any():
            continue
        ref = np.mean([(p > q) + 0.5 * (p == q) for p in s[y] for q in s[~y]])
        assert E.auroc(s, y) == pytest.approx(ref, abs=1e-12)


def test_aurac_and_prr_hand_computed():
    scores, incorrect = [0.1, 0.2, 0.3, 0.4], [False, True, False, True]
    # Kept answers, most certain first: right, wrong, right, wrong.
    # Rejecting 0..3: accuracies 2/4, 2/3, 1/2, 1/1.
    np.testing.assert_allclose(E.rejection_curve(scores, ~np.array(incorrect)),
                               [0.5, 2 / 3, 0.5, 1.0])
    assert E.aurac(scores, incorrect) == pytest.approx((0.5 + 2 / 3 + 0.5 + 1) / 4)
    # Random = 0.5; oracle rejects the wrong ones first: 2/4, 2/3, 1, 1.
    oracle = (0.5 + 2 / 3 + 1 + 1) / 4
    expected = ((0.5 + 2 / 3 + 0.5 + 1) / 4 - 0.5) / (oracle - 0.5)
    assert expected == pytest.approx(4 / 7)
    assert E.prr(scores, incorrect) == pytest.approx(4 / 7)
    assert E.prr([0.1, 0.9, 0.2, 0.8], incorrect) == pytest.approx(1.0)    # oracle order
    assert E.prr([0.9, 0.1, 0.8, 0.2], incorrect) < 0                      # worse than random


def test_metrics_vectorise_over_rows():
    rng = np.random.default_rng(1)
    s, y = rng.random((5, 30)), rng.random((5, 30)) < 0.5
    for fn in E.UNCERTAINTY_METRICS.values():
        np.testing.assert_allclose(fn(s, y), [fn(s[i], y[i]) for i in range(5)])


def test_bootstrap_interval():
    rng = np.random.default_rng(2)
    y = rng.random(300) < 0.3
    perfect = E.bootstrap(E.auroc, y.astype(float), y, num_samples=200)
    assert (perfect.value, perfect.low, perfect.high) == (1.0, 1.0, 1.0)
    noisy = E.uncertainty_metrics(y + rng.normal(0, 1.0, 300), y, num_samples=300)
    for iv in noisy.values():
        assert iv.low <= iv.value <= iv.high and iv.low < iv.high
    assert 0.5 < noisy["auroc"].value < 1.0


def test_judge_outcomes_counts_abstentions_and_names_judge():
    qs = [{"id": "a", "question": "capital of France?", "answers": ["Paris"]},
          {"id": "b", "question": "who wrote Hamlet?", "answers": ["William Shakespeare"]},
          {"id": "c", "question": "largest planet?", "answers": ["Jupiter"]},
          {"id": "d", "question": "2+2?", "answers": ["four", "4"]}]
    preds = ["Paris.", "Christopher Marlowe", "I don't know the answer.", "Shakespeare"]
    out = E.judge_outcomes(qs, preds, judges.F1Judge(0.5))
    assert [o["correct"] for o in out] == [True, False, False, False]
    assert [o["abstained"] for o in out] == [False, False, True, False]
    assert {o["judge"] for o in out} == {"f1>=0.5"}
    m = E.outcome_metrics(out)
    assert (m.correct, m.incorrect, m.abstained) == (1, 2, 1)
    # A configured variant list without "i dont know" no longer sees an abstention.
    out2 = E.judge_outcomes(qs, preds, judges.AliasJudge(), abstention_variants=("unsure",),
                            abstention_phrase="Pass.")
    assert not any(o["abstained"] for o in out2)
