"""Rows kept in memory maps until read out (fingerprint/rows.py): the same rows, in order, however
they were appended, and nothing kept once drained."""

from __future__ import annotations

import numpy as np
import pytest

from earmark.fingerprint import rows as rows_module
from earmark.fingerprint.rows import RowStore


@pytest.mark.parametrize("blocks", [[7], [3, 0, 5, 11], [64] * 9, [1] * 40])
def test_rows_come_back_in_order_across_segments(monkeypatch, blocks):
    monkeypatch.setattr(rows_module, "SEGMENT_BYTES", 16 * 4 * 10)  # 10 rows a segment: blocks straddle them
    rng = np.random.default_rng(3)
    appended = [rng.standard_normal((count, 16)).astype(np.float32) for count in blocks]
    store = RowStore(16)
    for block in appended:
        store.append(block)
    expected = np.concatenate(appended)
    assert store.rows == len(expected)
    peeked = np.concatenate(list(store.peek()))
    assert np.array_equal(peeked, expected) and np.array_equal(np.concatenate(list(store.peek())), expected)
    drained = [view.copy() for view in store.drain()]
    assert np.array_equal(np.concatenate(drained), expected)
    assert store.rows == 0 and list(store.peek()) == [] and list(store.drain()) == []


def test_an_empty_store_reads_as_no_rows():
    store = RowStore(4, np.uint8)
    assert list(store.peek()) == [] and store.rows == 0


def test_rows_of_another_type_or_width_are_refused_not_rounded():
    store = RowStore(16)
    for block in (np.zeros((3, 16), np.float64), np.zeros((3, 8), np.float32)):
        with pytest.raises(ValueError):
            store.append(block)
    assert store.rows == 0
