"""Where the speech is: the extent of sound between leading and trailing silence.

Used to refuse "no speech" uploads before they reach the engine, and to measure speech
duration for the contract's same-recording test, which sets leading and trailing silence aside.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from earmark.fingerprint.decode import SAMPLE_RATE
from earmark.fingerprint.framing import Framer

FRAME_S = 0.02
FRAME = int(FRAME_S * SAMPLE_RATE)
# Frames below this level are silence whatever the recording: -60 dBFS is under the noise
# floor of any real microphone chain but above dithered digital silence.
ABSOLUTE_FLOOR_DB = -60.0
# Relative to the loudest frame, so a quiet recording's speech still counts as speech while
# its room tone does not.
RELATIVE_FLOOR_DB = -40.0
# The quietest frames estimate the noise floor; speech starts this far above it. The cap keeps
# a recording with no pauses at all (whose quietest frames are speech) from losing its speech.
NOISE_FLOOR_PERCENTILE = 5
# Digital silence: under the dither of 16-bit audio (about -96 dBFS RMS). A real microphone
# chain's quietest room tone sits well above it (-62 to -66 dBFS in the quiet TIDIGITS and
# pocketsphinx recordings), even under ABSOLUTE_FLOOR_DB.
DIGITAL_SILENCE_DB = -90.0
ABOVE_NOISE_DB = 10.0
MAX_RELATIVE_DB = -20.0


@dataclass(frozen=True)
class SpeechExtent:
    """The span from the first to the last sounding frame, in seconds."""

    start_s: float
    end_s: float
    peak_db: float

    @property
    def duration_s(self) -> float:
        """Length of the span between leading and trailing silence."""
        return max(0.0, self.end_s - self.start_s)


class FrameLevels:
    """`frame_levels_db` of a signal pushed in pieces."""

    def __init__(self) -> None:
        self._framer = Framer(FRAME, FRAME)
        self._levels: list[np.ndarray] = []
        self._head: list[np.ndarray] = []  # the first samples, kept only while under one frame
        self._total = 0

    def push(self, pcm_16k: np.ndarray) -> None:
        """Add the next samples (16 kHz mono float)."""
        if self._total < FRAME:
            self._head.append(np.array(pcm_16k[:FRAME], dtype=np.float32))
        self._total += len(pcm_16k)
        self._levels.extend(_rms_db(block) for block in self._framer.push(pcm_16k))

    def finish(self) -> np.ndarray:
        """RMS level of each 20 ms frame in dBFS, about the frame's mean (a shorter signal is one frame)."""
        self._levels.extend(_rms_db(block) for block in self._framer.finish())
        if self._total < FRAME:
            head = np.concatenate(self._head) if self._head else np.zeros(0, dtype=np.float32)
            return np.full(1, -120.0) if head.size == 0 else _rms_db(head[None, :])
        return np.concatenate(self._levels)


def frame_levels_db(pcm_16k: np.ndarray) -> np.ndarray:
    """RMS level of each 20 ms frame in dBFS, about the frame's mean (a DC offset is silence)."""
    stream = FrameLevels()
    stream.push(pcm_16k)
    return stream.finish()


def _rms_db(frames: np.ndarray) -> np.ndarray:
    # About each frame's own mean: a DC offset (a cheap sound card's, or a recorder's) is not
    # sound. Counted, it held every pause at the offset's level, and a copy with one measured
    # its speech over the whole file (1.98 s against its original's 1.56: refused as another
    # recording; bench/README.md, "Linear channels and containers").
    samples = frames.astype(np.float64)
    samples -= samples.mean(axis=1, keepdims=True)
    return _db(np.sqrt(np.mean(samples * samples, axis=1)))


def speech_extent(pcm_16k: np.ndarray) -> SpeechExtent:
    """Find the sounding span; an all-silent signal gives a zero-length extent.

    Over a noise floor (a noisy copy of a clean recording, room tone), the threshold rises to
    just above the floor, so the extent is that of the speech and not of the noise around it.
    """
    return extent_from_levels(frame_levels_db(pcm_16k))


def extent_from_levels(levels: np.ndarray) -> SpeechExtent:
    """`speech_extent` from the frame levels (`FrameLevels`), for a signal seen in pieces."""
    peak = float(levels.max())
    sounding = np.flatnonzero(levels > sound_threshold_db(levels))
    if peak <= ABSOLUTE_FLOOR_DB or sounding.size == 0:
        return SpeechExtent(0.0, 0.0, peak)
    return SpeechExtent(float(sounding[0] * FRAME_S), float((sounding[-1] + 1) * FRAME_S), peak)


def sound_threshold_db(levels: np.ndarray) -> float:
    """The level (dBFS) above which a 20 ms frame of this recording is sound: just above its
    noise floor, never under ABSOLUTE_FLOOR_DB nor more than 40 dB under its loudest frame."""
    peak = float(levels.max())
    noise_floor = float(np.percentile(_floor_frames(levels), NOISE_FLOOR_PERCENTILE))
    return max(ABSOLUTE_FLOOR_DB, peak + RELATIVE_FLOOR_DB, min(noise_floor + ABOVE_NOISE_DB, peak + MAX_RELATIVE_DB))


def _floor_frames(levels: np.ndarray) -> np.ndarray:
    """The frames the noise floor is estimated from. Digital silence before the first and after
    the last audible frame is padding (an editor's, or a copy's), not the recording's floor:
    counted, it would drag the floor of a padded copy of a recording with room tone from the
    room tone to -120 dB and its extent out over the room tone. When digital silence also
    sits between audible frames (synthetic speech, a gated recording), it is the floor. Room
    tone quieter than ABSOLUTE_FLOOR_DB is not digital silence: only DIGITAL_SILENCE_DB is."""
    audible = np.flatnonzero(levels > DIGITAL_SILENCE_DB)
    if audible.size == 0:
        return levels
    inner = levels[audible[0] : audible[-1] + 1]
    return levels if (inner <= DIGITAL_SILENCE_DB).any() else inner


def has_sound(pcm_16k: np.ndarray, min_duration_s: float = 0.1) -> bool:
    """True when the signal holds at least `min_duration_s` of sound above the silence floor."""
    return sound_in_levels(frame_levels_db(pcm_16k), min_duration_s)


def sound_in_levels(levels: np.ndarray, min_duration_s: float = 0.1) -> bool:
    """`has_sound` from the frame levels."""
    return int(np.count_nonzero(levels > ABSOLUTE_FLOOR_DB)) * FRAME_S >= min_duration_s


def _db(rms):
    return 20.0 * np.log10(np.maximum(rms, 1e-6))
