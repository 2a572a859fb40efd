"""Decode uploaded audio bytes into the one PCM form every later stage works on.

Every tier after the byte hash compares audio, not files, so all inputs are brought to 16 kHz
mono float32 here. Decoding happens at the source rate with a per-sample downmix, and the
resampling to 16 kHz is one deterministic whole-signal call: the same PCM in two containers
(WAV and FLAC, say) therefore yields bit-identical output, which the canonical hash relies on.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from collections.abc import Iterator
from typing import BinaryIO

import av
import numpy as np
import soxr

from earmark.errors import EarmarkError, Kind
from earmark.fingerprint.clipping import NO_BLOCKS, ClippingMarks
from earmark.fingerprint.sniff import SNIFF_BYTES, sniff_format

SAMPLE_RATE = 16000
MIN_SOURCE_RATE = 4000
MAX_SOURCE_RATE = 384000
LOWEST_BYTES_PER_S = 1000  # 8 kbps: below any speech codec's usual rate
CHUNK_SAMPLES = 1 << 16  # source samples handed on at a time: about 4 s at 16 kHz
_SELF_DESCRIBING = ("wav", "flac", "aiff")
_HEADER_ONLY_PROBE = {"probesize": "4096", "analyzeduration": "0"}
# FFmpeg's WAV demuxer hands PCM over in small packets (its `max_size`, 4 KB): 9,375 frames for
# 10 minutes of 16 kHz mono, whose per-frame Python cost made the canonical digest pass slower
# than fpcalc on the same file. 64 KB packets decode to the same samples (issue 25).
_WAV_PACKETS = {"max_size": str(1 << 16)}
NOT_AUDIO_HINT = ("send audio in a container that says what it is: WAV, FLAC, MP3, AAC/M4A, Ogg, WebM/Matroska, "
                  "AIFF, or another listed in docs/api.md (raw headerless PCM is not accepted)")


class AudioError(EarmarkError, ValueError):
    """An upload that cannot be turned into audio; its `kind` says why (the API answers each
    kind with its status: service/api/errors.py)."""

    kind = Kind.INVALID


class NotAudioError(AudioError):
    """The bytes are not a recognised audio container (or hold no audio stream)."""

    kind = Kind.NOT_AUDIO


class UndecodableAudioError(AudioError):
    """The bytes look like audio but the decoder could not read them."""

    kind = Kind.INVALID


class EmptyAudioError(AudioError):
    """The upload is empty or decodes to no samples."""

    kind = Kind.INVALID


class AudioTooLongError(AudioError):
    """The audio is longer than the configured duration limit."""

    kind = Kind.TOO_LARGE


@dataclass(frozen=True)
class DecodedAudio:
    """An upload decoded to 16 kHz mono, with what the source looked like."""

    pcm_16k: np.ndarray  # float32, mono, nominally in [-1, 1]
    container: str
    codec: str
    source_rate: int
    source_channels: int
    # Where the source held runs of samples at full scale (fingerprint/clipping.py): 10 ms
    # blocks of time, none for a recording that did not clip.
    clipped_blocks: np.ndarray = field(default_factory=lambda: NO_BLOCKS)

    @property
    def duration_s(self) -> float:
        """Length of the decoded audio in seconds."""
        return len(self.pcm_16k) / SAMPLE_RATE


@dataclass
class AudioStream:
    """An upload being decoded: what the source is, and its 16 kHz mono float32 samples as they
    come (`chunks` may be iterated once; it raises an `AudioError` for a file that fails midway).

    Resampling is soxr's stream, which gives the same samples as one call over the whole
    signal, so nothing about the result depends on how the container cut its packets.
    """

    container: str
    codec: str
    source_rate: int
    source_channels: int
    declared_s: float | None  # what the header says, if anything: a hint, never trusted
    chunks: Iterator[np.ndarray]
    _container: object = field(default=None, repr=False)
    # Runs of full-scale samples in the source, marked as `chunks` decodes it: complete once
    # `chunks` has been read to its end (fingerprint/clipping.py).
    clipping: ClippingMarks = field(default_factory=ClippingMarks)

    def close(self) -> None:
        """Stop decoding (when `chunks` is not read to its end; harmless when it was)."""
        self.chunks.close()  # type: ignore[attr-defined]
        self._container.close()  # type: ignore[attr-defined]


def open_audio(source: bytes | BinaryIO, max_duration_s: float) -> AudioStream:
    """Open `source` (bytes, or a seekable file positioned at its start) for decoding, or raise
    an `AudioError` saying what was wrong.

    The declared duration is checked here, and the decoded length while decoding, so a long or
    lying file is refused without holding hours of PCM in memory.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(source)
    head = source.read(SNIFF_BYTES)
    source.seek(0)
    if not head:
        raise EmptyAudioError("the uploaded file is empty; send the audio bytes in the 'file' field")
    container_label = sniff_format(head)
    if container_label is None:
        raise NotAudioError(f"the upload is not a recognised audio format; {NOT_AUDIO_HINT}")
    try:
        # A header that says everything needs no probing of the data: FFmpeg's default probe
        # read and parsed about 3 ms of a WAV for nothing, on every decoding pass.
        options = _HEADER_ONLY_PROBE if container_label in _SELF_DESCRIBING else {}
        if container_label == "wav":
            options = options | _WAV_PACKETS
        container = av.open(source, mode="r", metadata_errors="ignore", options=options)
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise UndecodableAudioError(
            f"the upload looks like {container_label} but could not be opened ({_short(exc)}); "
            "check that the file is complete and not corrupted"
        ) from exc
    try:
        if not container.streams.audio:
            raise NotAudioError("the file holds no audio stream; send a file with an audio track")
        stream = container.streams.audio[0]
        declared = _declared_duration(container, stream)
        if declared is not None and declared > max_duration_s:
            raise AudioTooLongError(_too_long_message(declared, max_duration_s))
        context = stream.codec_context
        if context is None:
            raise UndecodableAudioError("the audio stream uses no codec we can decode; re-export it as WAV, FLAC or MP3")
        source_rate = int(getattr(context, "sample_rate", 0) or 0)
        if not MIN_SOURCE_RATE <= source_rate <= MAX_SOURCE_RATE:
            # A tiny file at 1 Hz would otherwise resample into hours of audio for the engine.
            raise UndecodableAudioError(
                f"the audio's sample rate is {source_rate} Hz; send audio sampled between "
                f"{MIN_SOURCE_RATE} and {MAX_SOURCE_RATE} Hz"
            )
    except BaseException:
        container.close()
        raise
    clipping = ClippingMarks()
    return AudioStream(
        container=container_label,
        codec=context.name,
        source_rate=source_rate,
        source_channels=int(getattr(context, "channels", 0) or 0),
        declared_s=declared,
        chunks=_chunks_16k(container, stream, source_rate, max_duration_s, clipping),
        _container=container,
        clipping=clipping,
    )


def budget_seconds(audio: AudioStream, size: int, max_duration_s: float) -> float:
    """How long the audio is, for budgeting, before decoding it: the header's duration, or
    when it gives none the longest the upload could hold at a low bit rate (8 kbps), never
    more than the limit."""
    if audio.declared_s is not None:
        return audio.declared_s
    return min(max_duration_s, size / LOWEST_BYTES_PER_S)


def decode_audio(source: bytes | BinaryIO, max_duration_s: float) -> DecodedAudio:
    """Decode `source` whole to 16 kHz mono float32 (see `open_audio`), for the engine."""
    audio = open_audio(source, max_duration_s)
    # The header's duration sizes the buffer; the pages are only touched as samples arrive,
    # so a header that lies about its length costs address space, not memory.
    expected = min(audio.declared_s or max_duration_s, max_duration_s) + 1.0
    buffer = np.empty(int(expected * SAMPLE_RATE), dtype=np.float32)
    filled = 0
    for chunk in audio.chunks:
        if filled + chunk.size > buffer.size:
            grown = np.empty(max(filled + chunk.size, buffer.size * 3 // 2), dtype=np.float32)
            grown[:filled] = buffer[:filled]
            buffer = grown
        buffer[filled:filled + chunk.size] = chunk
        filled += chunk.size
    return DecodedAudio(
        pcm_16k=buffer[:filled],
        container=audio.container,
        codec=audio.codec,
        source_rate=audio.source_rate,
        source_channels=audio.source_channels,
        clipped_blocks=audio.clipping.blocks(),
    )


def _declared_duration(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _chunks_16k(container, stream, source_rate: int, max_duration_s: float,
                clipping: ClippingMarks) -> Iterator[np.ndarray]:
    """The stream's samples at 16 kHz mono, clean (no NaN, within [-1, 1]), in pieces of about
    `CHUNK_SAMPLES` (a decoder's packets are too small to pay each step's overhead on); the
    source's runs at full scale are marked in `clipping` on the way, at its own rate."""
    with container:
        resampler = None if source_rate == SAMPLE_RATE else soxr.ResampleStream(
            source_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        total = 0
        for mono in _coalesced(_decode_mono(container, stream, source_rate, max_duration_s), CHUNK_SAMPLES):
            if mono.dtype == np.int16:  # mono 16-bit PCM, scaled here once a chunk rather than once a frame
                mono = mono.astype(np.float32) * np.float32(1.0 / 32768.0)
            # Float formats can carry NaN or infinity; nothing downstream should ever see them.
            mono = np.clip(np.nan_to_num(mono, copy=False, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)
            clipping.push(mono, source_rate)
            total += mono.size
            out = mono if resampler is None else resampler.resample_chunk(mono)
            if out.size:
                yield np.ascontiguousarray(out, dtype=np.float32)
        if total == 0:
            raise EmptyAudioError("the audio decodes to no samples; send a file that contains sound")
        if resampler is not None:
            tail = resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            if tail.size:
                yield np.ascontiguousarray(tail, dtype=np.float32)


def _coalesced(pieces: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """The same samples in pieces of at least `size` (the last, or one before a change of
    sample type, may be shorter)."""
    pending: list[np.ndarray] = []
    count = 0
    for piece in pieces:
        if pending and piece.dtype != pending[0].dtype:
            yield np.concatenate(pending) if len(pending) > 1 else pending[0]
            pending, count = [], 0
        pending.append(piece)
        count += piece.size
        if count >= size:
            yield np.concatenate(pending) if len(pending) > 1 else pending[0]
            pending, count = [], 0
    if pending:
        yield np.concatenate(pending)


def _decode_mono(container, stream, source_rate: int, max_duration_s: float) -> Iterator[np.ndarray]:
    """Decode the stream at its own rate, downmixed to mono float32, enforcing the limit."""
    # One second of slack over the limit: a file of exactly the limit's length, cut into
    # frames that straddle it, is not refused.
    max_samples = int(max_duration_s * source_rate) + source_rate
    total = 0
    try:
        for samples in _mono_pieces(container, stream, source_rate):
            # Every piece counts against the limit before it is handed on, whatever its sample
            # format: a header that declares no length (FLAC's STREAMINFO zeroed) or too short
            # a one is held to the limit by what actually decodes, and decoding stops at the
            # first frame past it.
            total += samples.size
            if total > max_samples:
                raise AudioTooLongError(_too_long_message(total / source_rate, max_duration_s, at_least=True))
            yield samples
    except AudioError:
        raise  # over the limit: refused as too long, not a damaged tail to keep
    except (av.FFmpegError, ValueError, RuntimeError) as exc:
        if total == 0:
            raise UndecodableAudioError(
                f"the audio could not be decoded ({_short(exc)}); check that the file is complete"
            ) from exc
        # A damaged tail after good audio: keep what decoded, as players do.


def _mono_pieces(container, stream, source_rate: int) -> Iterator[np.ndarray]:
    """The stream's frames as mono float32 at the source rate, one piece per frame (mono 16-bit
    PCM as its int16 samples: `_chunks_16k` scales them)."""
    # Same rate in and out: the resampler only converts to planar float, sample by sample, so
    # the output does not depend on how the container chunks its packets. The channels are
    # then averaged here: FFmpeg's own downmix adds identical channels at +3 dB (its pan law),
    # which clipped the loud peaks of every stereo copy of a mono recording.
    to_float = av.AudioResampler(format="fltp", rate=source_rate)
    for frame in container.decode(stream):
        if frame.format.name in ("s16", "s16p"):
            # 16-bit PCM (WAV, FLAC): scaled here, exactly as FFmpeg's converter scales it
            # (x / 32768, exact in float32), without its per-frame cost.
            yield _mono_s16(frame)
        elif frame.format.name == "fltp" or (frame.format.name == "flt" and len(frame.layout.channels) == 1):
            # Already planar float (MP3, AAC, Opus decoders give it): converting is a no-op.
            yield _mono(frame)
        else:
            for converted in to_float.resample(frame):
                yield _mono(converted)
    for converted in to_float.resample(None):
        yield _mono(converted)


def _samples(frame, dtype) -> np.ndarray:
    """The frame's samples as (planes, values per plane), read straight from its planes: what
    PyAV's `to_ndarray` gives, without its per-frame stacking, which cost as much as decoding
    an MP3 frame (issue 25)."""
    planes = frame.planes
    count = frame.samples * (1 if frame.format.is_planar else len(frame.layout.channels))
    if len(planes) == 1:
        return np.frombuffer(planes[0], dtype=dtype, count=count).reshape(1, count)
    return np.stack([np.frombuffer(plane, dtype=dtype, count=count) for plane in planes])


def _mono_s16(frame) -> np.ndarray:
    """A 16-bit frame as planar float, channels averaged as `_mono` averages them; a mono
    frame as its own int16 samples (copied), which `_chunks_16k` scales a chunk at a time."""
    channels = len(frame.layout.channels)
    samples = _samples(frame, np.int16)
    if channels == 1:
        return samples.reshape(-1).copy()
    if frame.format.is_planar:
        planar = samples.reshape(channels, -1)
    else:
        planar = np.ascontiguousarray(samples.reshape(-1, channels).T)
    planar = planar.astype(np.float32) * np.float32(1.0 / 32768.0)
    return planar.mean(axis=0, dtype=np.float32)


def _mono(frame) -> np.ndarray:
    """The frame's channels averaged (planar float, or packed mono, in), in memory of its own."""
    samples = _samples(frame, np.float32)
    if samples.shape[0] > 1 and frame.format.is_planar:
        return samples.mean(axis=0, dtype=np.float32)
    return samples.reshape(-1).copy()  # the frame's own buffer is not ours to clean in place


def _too_long_message(duration_s: float, max_duration_s: float, *, at_least: bool = False) -> str:
    """Why audio is refused as too long; `at_least` when decoding stopped at the limit, so the whole length is
    not known."""
    if at_least:
        return (f"the audio lasts longer than the {max_duration_s:.0f} s limit (found while decoding it); "
                "split it into shorter files")
    return f"the audio lasts {duration_s:.0f} s, over the {max_duration_s:.0f} s limit; split it into shorter files"


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."
