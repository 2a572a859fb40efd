"""The sorted medians are numpy's medians, float for float: the detail check's verdicts must
not move when it takes them (fingerprint/medians.py)."""

import numpy as np
import pytest

from earmark.fingerprint.medians import median, row_medians


@pytest.mark.parametrize("rows, columns", [(1, 1), (3, 2), (16, 7), (16, 1000), (1000, 16), (5, 20001)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_medians_are_numpys(rows, columns, dtype):
    values = (np.random.default_rng(rows * columns).normal(size=(rows, columns)) * 8).astype(dtype)
    values[:, ::3] = np.round(values[:, ::3])  # ties, as the half-dB codes make them
    found = row_medians(values)
    assert found.dtype == np.median(values, axis=1).dtype
    np.testing.assert_array_equal(found, np.median(values, axis=1))
    np.testing.assert_array_equal(row_medians(values.T), np.median(values, axis=0))  # a view's columns


def test_row_medians_leave_their_input_alone():
    values = np.array([[3.0, 1.0, 2.0]], dtype=np.float32)
    row_medians(values)
    np.testing.assert_array_equal(values, [[3.0, 1.0, 2.0]])


@pytest.mark.parametrize("size", [1, 2, 3, 999, 1000])
def test_median_is_numpys_scalar(size):
    rng = np.random.default_rng(size)
    for values in (rng.normal(size=size).astype(np.float32), rng.normal(size=size),
                   rng.integers(0, 255, size).astype(np.uint8)):
        expected = np.median(values)
        assert median(values) == expected
        assert type(median(values)) is type(expected)
