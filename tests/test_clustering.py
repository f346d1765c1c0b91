"""Jitted greedy semantic ids against a plain Python transcription of the reference loop."""
from __future__ import annotations

import numpy as np
import pytest

from se_jax.semantic.clustering import semantic_ids


def reference_ids(equivalent, valid=None, overwrite=True) -> list[int]:
    """jlko/semantic_uncertainty get_semantic_ids, with are_equivalent(i, j) = equivalent[i][j]
    (invalid slots skipped, id -1); overwrite=False claims only unassigned answers."""
    n = len(equivalent)
    valid = [True] * n if valid is None else valid
    ids = [-1] * n
    next_id = 0
    for i in range(n):
        if valid[i] and ids[i] == -1:
            ids[i] = next_id
            for j in range(i + 1, n):
                if valid[j] and equivalent[i][j] and (overwrite or ids[j] == -1):
                    ids[j] = next_id
            next_id += 1
    return ids


def test_non_transitive_chain_and_overwrite():
    # 0~1, 1~2, not 0~2: 2 opens its own cluster (no transitivity).
    chain = np.array([[1, 1, 0], [1, 1, 1], [0, 1, 1]], bool)
    assert semantic_ids(chain[None])[0].tolist() == [0, 0, 1]
    # 0~2, 1~2, not 0~1: 1 opens cluster 1 and takes 2 away from cluster 0 (the reference
    # overwrites).
    steal = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 1]], bool)
    assert semantic_ids(steal[None])[0].tolist() == [0, 1, 1] == reference_ids(steal)


def test_unassigned_rule_keeps_first_cluster():
    steal = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 1]], bool)
    assert semantic_ids(steal[None], rule="unassigned")[0].tolist() == [0, 1, 0]
    assert reference_ids(steal, overwrite=False) == [0, 1, 0]
    with pytest.raises(ValueError, match="rule"):
        semantic_ids(steal[None], rule="transitive")


@pytest.mark.parametrize("rule", ["reference", "unassigned"])
@pytest.mark.parametrize("m", [1, 5, 10])
def test_random_matrices_match_reference(m, rule):
    rng = np.random.default_rng(m)
    q = 2000
    density = rng.uniform(0, 1, size=(q, 1, 1))
    raw = rng.uniform(size=(q, m, m)) < density
    # Half symmetric (what the backends produce), half arbitrary (non-symmetric).
    sym = raw | raw.transpose(0, 2, 1)
    equivalent = np.where((np.arange(q) % 2 == 0)[:, None, None], sym, raw)
    valid = rng.uniform(size=(q, m)) < 0.9
    valid[: q // 2] = True
    ours = np.asarray(semantic_ids(equivalent, valid, rule=rule))
    expected = np.array([reference_ids(e, v, overwrite=rule == "reference")
                         for e, v in zip(equivalent, valid)])
    np.testing.assert_array_equal(ours, expected)
    # Not a vacuous check: the batch holds non-transitive, multi-cluster cases.
    if m >= 5:
        assert (ours.max(axis=1) >= 2).sum() > q // 10


def test_ids_are_first_appearance_order_and_all_valid_assigned():
    rng = np.random.default_rng(0)
    eq = rng.uniform(size=(200, 10, 10)) < 0.3
    eq = eq | eq.transpose(0, 2, 1)
    ids = np.asarray(semantic_ids(eq))
    for row in ids:
        assert row.min() == 0
        firsts = [row.tolist().index(c) for c in range(row.max() + 1)]
        assert firsts == sorted(firsts)
