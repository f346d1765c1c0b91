"""Each estimator on a hand-computed case (natural log), with padding slots ignored."""
from __future__ import annotations

import math

import numpy as np

from se_jax.semantic import uncertainty as U

VALID4 = np.ones((1, 4), bool)


def test_discrete_semantic_entropy():
    got = U.cluster_entropy(np.array([[0, 0, 1, 2]]), VALID4)
    # p = (1/2, 1/4, 1/4): 1/2 ln 2 + 2 * 1/4 ln 4 = 1.5 ln 2
    assert math.isclose(float(got[0]), 1.5 * math.log(2), rel_tol=1e-6)
    assert float(U.cluster_entropy(np.array([[0, 0, 0, 0]]), VALID4)[0]) == 0.0


def test_semantic_entropy_likelihood_weighted():
    probs = np.array([0.4, 0.2, 0.3, 0.1])
    ids = np.array([[0, 0, 1, 2]])
    expected = -(0.6 * math.log(0.6) + 0.3 * math.log(0.3) + 0.1 * math.log(0.1))
    got = U.semantic_entropy(ids, np.log(probs)[None], VALID4)
    assert math.isclose(float(got[0]), expected, rel_tol=1e-5)
    # Normalised over all answers: a shared offset (unnormalised likelihoods) changes nothing.
    shifted = U.semantic_entropy(ids, np.log(probs)[None] - 3.0, VALID4)
    assert math.isclose(float(shifted[0]), expected, rel_tol=1e-5)


def test_naive_entropy():
    got = U.naive_entropy(np.array([[-1.0, -2.0, -3.0, -4.0]]), VALID4)
    assert math.isclose(float(got[0]), 2.5, rel_tol=1e-6)


def test_exact_string_entropy():
    ids = U.exact_string_ids(["Paris", "paris.", "The Paris", "London"])
    assert ids.tolist() == [0, 0, 0, 1]
    got = U.cluster_entropy(ids[None], VALID4)
    assert math.isclose(float(got[0]), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)),
                        rel_tol=1e-6)


def test_padding_slots_ignored():
    valid = np.array([[True, True, True, False]])
    ids = np.array([[0, 1, 1, -1]])
    lp = np.array([[math.log(0.5), math.log(0.25), math.log(0.25), 100.0]])
    two_to_one = -(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3))
    assert math.isclose(float(U.cluster_entropy(ids, valid)[0]), two_to_one, rel_tol=1e-6)
    assert math.isclose(float(U.semantic_entropy(ids, lp, valid)[0]), math.log(2), rel_tol=1e-6)
    assert math.isclose(float(U.naive_entropy(lp, valid)[0]),
                        -(math.log(0.5) + 2 * math.log(0.25)) / 3, rel_tol=1e-6)
