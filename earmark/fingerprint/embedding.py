"""A fixed-size vector per recording for candidate search (not for deciding a match).

Time-pooled, so padding or trimming silence does not move it: the average spectral shape of the
speech, how much each band modulates, and the loudness contour resampled over the speech
extent. Cosine similarity (inner product of unit vectors) ranks candidates; the robust hash
then verifies them.
"""

from __future__ import annotations

import numpy as np

from earmark.fingerprint.config import FingerprintConfig

EMBEDDING_DIM = 64
_SHAPE_DIMS = 24
_MODULATION_DIMS = 16
_LOUD_CORE_DB = 25.0
# Cosine similarity of the whole vector is the weight-squared mix of the blocks' similarities:
# spectral shape 0.5, modulation 0.25, contour 0.25. The contour says most about *what* was
# said but shifts most under trimming, hence not more.
_BLOCK_WEIGHTS = (0.5**0.5, 0.25**0.5, 0.25**0.5)


def embedding_from_energies(energies: np.ndarray, config: FingerprintConfig) -> np.ndarray:
    """Unit-length float32 vector of `EMBEDDING_DIM` for band energies (frames, n_bands)."""
    # In place after the first copy: an hour's energies are 28 MB, and each temporary as much.
    log_energy = energies + 1e-10
    np.log10(log_energy, out=log_energy)
    log_energy *= 10.0
    level = log_energy.mean(axis=1)
    voiced = level > level.max() - config.silence_below_peak_db
    # Only the loud core of the speech shapes the spectrum: quiet frames are where noise
    # and codec artefacts dominate.
    loud = level > level.max() - _LOUD_CORE_DB
    if loud.sum() < 2:
        return np.zeros(EMBEDDING_DIM, dtype=np.float32)
    first, last = np.flatnonzero(voiced)[[0, -1]]
    speech = log_energy[loud]
    del log_energy  # each whole-recording array is as large as the energies: one at a time
    steps = np.diff(speech, axis=0)
    modulation = np.abs(steps, out=steps).mean(axis=0)
    del steps
    # Spectral shape, gain removed: each frame's bands relative to its own mean.
    speech -= speech.mean(axis=1, keepdims=True)
    shape = speech.mean(axis=0)
    # Pauses read as the floor whether they hold digital silence or a noise floor.
    contour = np.maximum(level[first : last + 1], level.max() - _LOUD_CORE_DB)
    contour_points = _segment_means(contour, config.embedding_contour_points)
    blocks = [
        _BLOCK_WEIGHTS[0] * _unit(_fold(shape, _SHAPE_DIMS) - _fold(shape, _SHAPE_DIMS).mean()),
        _BLOCK_WEIGHTS[1] * _unit(_fold(modulation, _MODULATION_DIMS) - _fold(modulation, _MODULATION_DIMS).mean()),
        _BLOCK_WEIGHTS[2] * _unit(contour_points - contour_points.mean()),
    ]
    return _unit(np.concatenate(blocks)).astype(np.float32)


def _segment_means(values: np.ndarray, points: int) -> np.ndarray:
    """Average `values` over `points` equal segments (pooling, so a few frames' shift barely
    moves it), interpolating when there are fewer values than points."""
    if len(values) < points * 2:
        return np.interp(np.linspace(0, len(values) - 1, points), np.arange(len(values)), values)
    edges = np.linspace(0, len(values), points + 1).astype(int)
    sums = np.add.reduceat(values, edges[:-1])
    return sums / np.diff(edges)


def _fold(values: np.ndarray, size: int) -> np.ndarray:
    """Resample a band profile to `size` points."""
    return np.interp(np.linspace(0, len(values) - 1, size), np.arange(len(values)), values)


def _unit(vector: np.ndarray) -> np.ndarray:
    """Unit length; a block flat to within float32 rounding (digital silence) stays all zeros rather
    than having its float noise blown up to a direction."""
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 1e-3 else np.zeros_like(vector)  # blocks are in dB: 0.001 dB is noise


def at_stored_precision(embedding: np.ndarray) -> np.ndarray:
    """The embedding rounded to half precision, as entries keep it (issue 25: 128 bytes in the
    store instead of 256), in float32. An entry's vector is rounded before anything uses it, so
    the index of the process that wrote it and one rebuilt from the store hold the same vector.
    The rounding moves a cosine similarity by about 1e-4, against thresholds of 0.3 and over."""
    return np.asarray(embedding, dtype=np.float32).astype(np.float16).astype(np.float32)

