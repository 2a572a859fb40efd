"""fingerprint/mel.py: the detail spectrum's filter bank, bit-identical to librosa's."""

import numpy as np
import pytest

from earmark.fingerprint import detail
from earmark.fingerprint.mel import hz_to_mel, mel_filter_bank, mel_to_hz


@pytest.mark.parametrize("shape", [(16000, 512, 16, 250.0, 3800.0), (16000, 400, 40, 0.0, 8000.0), (22050, 2048, 64, 50.0, 8000.0)])
def test_the_filter_bank_is_bit_identical_to_librosas(shape):
    # librosa made the stored detail spectra before this module replaced it: any difference
    # could move a half-dB step of a stored feature. librosa stays in the test extra for this.
    librosa = pytest.importorskip("librosa")
    sample_rate, n_fft, bands, low_hz, high_hz = shape
    expected = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=bands, fmin=low_hz, fmax=high_hz, htk=True)
    assert np.array_equal(mel_filter_bank(sample_rate, n_fft, bands, low_hz, high_hz), expected)


def test_each_band_is_a_triangle_inside_the_range_with_unit_area():
    weights = mel_filter_bank(16000, 512, detail.BANDS, detail.LOW_HZ, detail.HIGH_HZ)
    fft_hz = np.fft.rfftfreq(512, 1 / 16000)
    assert weights.shape == (detail.BANDS, 257) and weights.dtype == np.float32
    assert not weights[:, (fft_hz < detail.LOW_HZ) | (fft_hz > detail.HIGH_HZ)].any()
    peaks = fft_hz[weights.argmax(axis=1)]
    assert np.all(np.diff(peaks) > 0)  # bands in rising order
    area = weights.sum(axis=1) * (fft_hz[1] - fft_hz[0])  # Slaney: height 2 / width, so the area is 1
    assert np.allclose(area, 1.0, atol=0.02)


def test_the_mel_scale_round_trips():
    hz = np.array([0.0, 250.0, 1000.0, 3800.0])
    assert np.allclose(mel_to_hz(hz_to_mel(hz)), hz)
    assert hz_to_mel(1000.0) == pytest.approx(1000.0, abs=0.5)  # HTK's scale is anchored there
