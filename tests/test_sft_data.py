"""SFT batches: the shared prompt head and the loss columns (`sft_data.BatchLayout`) carry
exactly the tokens, positions and targets of the whole rows; the numbers they give are
compared with PEFT in tests/test_training_parity.py."""
from __future__ import annotations

import numpy as np
import pytest

from se_jax.tuning import sft_data


def _example(i: int, head: list[int], rest: list[int], target_len: int):
    ids = np.asarray(head + rest, np.int32)
    return sft_data.TokenizedExample(str(i), ids, len(ids) - target_len)


def _rows(head_len: int = 19):
    head = list(range(100, 100 + head_len))
    return [_example(0, head, [7, 8, 9, 10, 11], 3),
            _example(1, head, [5, 6, 12, 13, 14, 15, 16, 17], 5),
            _example(2, head, [4, 20, 21], 1)]


def test_shared_prefix_is_the_common_head_rounded_down_and_stops_before_targets():
    rows = _rows()
    assert sft_data.shared_prefix_length(rows, multiple=8) == 16
    assert sft_data.shared_prefix_length(rows, multiple=1) == 19
    # A target starting inside the common head caps it: position start-1 predicts it.
    capped = rows + [_example(3, list(range(100, 119)), [1], 12)]
    assert sft_data.shared_prefix_length(capped, multiple=1) == 7
    assert sft_data.shared_prefix_length(_rows(head_len=5), multiple=8) == 0
    # Folded into rows of the batch's padded length: a head longer than the shortest padded
    # row (22 - 19 = 3 tokens -> 8) is cut to whole rows of it; one that fits stays whole.
    assert sft_data.shared_prefix_length(rows, multiple=1, pad_multiple=8) == 16
    assert sft_data.shared_prefix_length(rows, multiple=1, pad_multiple=32) == 19


def test_loss_width_holds_the_longest_target_in_a_power_of_two():
    assert sft_data.loss_width(_rows()) == 8                   # 5 targets
    assert sft_data.loss_width(_rows(), minimum=2) == 8
    assert sft_data.loss_width(_rows()[:1], minimum=2) == 4    # 3 targets
    assert sft_data.loss_width(_rows() + [_example(3, [1, 2], list(range(9)), 9)]) == 16


def test_narrowed_batch_holds_the_same_tokens_positions_and_targets():
    rows = _rows()
    full = sft_data.make_batch(rows, 4, pad_multiple=8)
    p = sft_data.shared_prefix_length(rows)
    narrow = sft_data.BatchLayout(pad_multiple=8, prefix_len=p,
                                  loss_columns=sft_data.loss_width(rows)).batch(rows, 4)
    assert narrow["tokens"].shape == (4, 16) and narrow["loss_index"].shape == (4, 8)
    for b, row in enumerate(rows):
        n = len(row.ids)
        np.testing.assert_array_equal(narrow["tokens"][b, :n - p], row.ids[p:])
        np.testing.assert_array_equal(narrow["positions"][b, :n - p], np.arange(p, n))
        assert (narrow["positions"][b, n - p:] == -1).all()
        # The loss columns are exactly the supervised positions, with their targets.
        k = int(narrow["loss_mask"][b].sum())
        cols = narrow["loss_index"][b, :k] + p
        np.testing.assert_array_equal(cols, np.flatnonzero(full["loss_mask"][b]))
        np.testing.assert_array_equal(narrow["targets"][b, :k], full["targets"][b, cols])
    assert narrow["loss_mask"][3].sum() == 0                   # the padding row
    assert narrow["loss_mask"].sum() == full["loss_mask"].sum()


def test_a_prefix_reaching_a_target_or_the_whole_sequence_loss_is_refused():
    rows = _rows()
    with pytest.raises(ValueError, match="example '0'.*reaches its target"):
        sft_data.make_batch(rows, 4, prefix_len=22)
    with pytest.raises(ValueError, match="target-only loss"):
        sft_data.make_batch(rows, 4, prefix_len=8, target_only=False)
    with pytest.raises(ValueError, match="row 1 has 5 supervised tokens; loss_columns=4"):
        sft_data.make_batch(rows, 4, loss_columns=4)


def test_per_example_weights_sum_to_one_per_row_and_survive_the_loss_columns():
    rows = _rows()
    for layout in (sft_data.BatchLayout(pad_multiple=8, per_example=True),
                   sft_data.BatchLayout(pad_multiple=8, prefix_len=16, loss_columns=8,
                                        per_example=True)):
        mask = layout.batch(rows, 4)["loss_mask"]
        np.testing.assert_allclose(mask.sum(axis=1), [1.0, 1.0, 1.0, 0.0], rtol=1e-6)
        # Each row's supervised tokens weigh alike: 1 / (its target + eos tokens - 1 shift).
        for b, n in enumerate((3, 5, 1)):
            assert np.allclose(mask[b][mask[b] > 0], 1.0 / n)
