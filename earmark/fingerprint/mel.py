"""A mel filter bank (HTK mel scale, Slaney area normalisation): the detail spectrum's bands.

Written here rather than taken from librosa, which the project used for this one matrix and
which brings numba, llvmlite and scikit-learn (about 260 MB installed, a second to import). It
computes what `librosa.filters.mel(..., htk=True)` computes, operation for operation, so the
matrix is bit-identical (tests/test_mel.py compares them) and stored detail spectra do not change.
"""

from __future__ import annotations

import numpy as np


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK's mel scale: 2595 log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """The inverse of `hz_to_mel`."""
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filter_bank(sample_rate: int, n_fft: int, bands: int, low_hz: float, high_hz: float) -> np.ndarray:
    """(bands, n_fft // 2 + 1) float32 triangular filters, evenly spaced in mel between `low_hz`
    and `high_hz`, each scaled to unit area (so a band's level does not grow with its width)."""
    edges = mel_to_hz(np.linspace(hz_to_mel(low_hz), hz_to_mel(high_hz), bands + 2))
    fft_hz = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    widths = np.diff(edges)
    ramps = np.subtract.outer(edges, fft_hz)
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    # float32 before the area scaling, as librosa does: the order of roundings is the result
    weights = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    weights *= 2.0 / (edges[2:] - edges[:-2])[:, None]
    return weights
