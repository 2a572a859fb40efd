"""The robust hash's and the embedding's tuned constants, in one named, versioned object; and
the version of everything a stored fingerprint holds.

A stored fingerprint records the version that made it; entries made by another version are
never compared with this one (their bits would mean something else). The stored features also
include the detail spectrum, the wide spectrum above it and the pitch contour, whose constants
live beside the code that uses them: the grid, bands and uint8 quantisation in
fingerprint/detail.py (HOP, WINDOW, N_FFT, BANDS, LOW_HZ, HIGH_HZ, WIDE_BANDS, WIDE_LOW_HZ,
WIDE_HIGH_HZ, _STEPS_PER_DB, _OFFSET_DB) and the tracker and its quantisation in
fingerprint/pitch.py (RATE, FRAME, MIN_HZ, MAX_HZ, VOICED_PEAK, SUBHARMONIC_RATIO,
_STEPS_PER_SEMITONE). Changing any of those changes stored bytes too, and needs a new `version`
here. (They are not fields of this object: detail.py and pitch.py are not given a config, so a
field here would suggest a choice that does not exist.) Their verification constants (floors,
burst lengths, weights) read nothing new and need no version.
"""

from __future__ import annotations

from dataclasses import dataclass

from earmark.fingerprint.decode import SAMPLE_RATE


@dataclass(frozen=True)
class FingerprintConfig:
    """Parameters of one fingerprint version."""

    # v3: frames padded at both ends, and the syllable-scale detail spectrum stored beside the
    # hash (fingerprint/detail.py). v4: each band's steady noise floor is taken out before the
    # hash and the embedding are made (fingerprint/spectrum.py's without_steady_noise), so the
    # hashes of noisy recordings changed. Verification changes that read nothing new need no version.
    version: str = "ehash-v4"
    sample_rate: int = SAMPLE_RATE
    # 128 ms analysis frames every 16 ms: long frames with heavy overlap make the energy
    # differences insensitive to the small time offsets a trimmed or re-encoded copy has
    # (the Haitsma-Kalker design uses 370 ms / 11.6 ms for music; speech moves faster).
    frame_length: int = 2048
    hop_length: int = 256
    # 33 log-spaced bands give 32 difference bits per frame. 300-3400 Hz is the telephone
    # band: an 8 kHz copy, a 24 kbps Opus or a 32 kbps MP3 all keep it.
    band_low_hz: float = 300.0
    band_high_hz: float = 3400.0
    n_bands: int = 33
    # Frames quieter than the loudest by more than this are silence when verifying: 35 dB keeps
    # a 30 dB-SNR copy's noise-filled pauses out of the comparison (measured in bench/README.md).
    silence_below_peak_db: float = 35.0
    # Query frames with no speech of the candidate's under them count only when they are within
    # this of the query's loud frames (their 95th percentile): quieter, they are noise that
    # filled a pause (babble, a 10 dB hiss), not words the query added. What the query lacks
    # always counts.
    added_sound_below_loud_db: float = 18.0
    # Verification looks at stretches of this many frames (~1 s) and judges by the worst.
    window_frames: int = 62
    # ...and, where both recordings have audio, stretches of ~0.25 s: about one word.
    short_window_frames: int = 16
    # Embedding layout: band-shape means, band modulation, and the loudness contour over the
    # speech extent (a coarse time grid that padding and trimming silence do not move).
    embedding_contour_points: int = 24

    @property
    def frames_per_second(self) -> float:
        """Sub-fingerprints per second of audio."""
        return self.sample_rate / self.hop_length


DEFAULT = FingerprintConfig()
