"""Real encoders for tests: make re-encoded copies of fixtures with PyAV's bundled codecs."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_bytes(name: str) -> bytes:
    """Bytes of a committed fixture file."""
    return (FIXTURES / name).read_bytes()


def read_pcm(data: bytes) -> tuple[np.ndarray, int]:
    """Decode bytes to int16 mono samples and their rate (no resampling)."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        chunks = [frame.to_ndarray().reshape(-1) for frame in container.decode(stream)]
        return np.concatenate(chunks).astype(np.int16), stream.rate


def encode(samples: np.ndarray, rate: int, *, fmt: str, codec: str, bitrate: int | None = None,
           channels: int = 1, metadata: dict | None = None) -> bytes:
    """Encode int16 mono `samples` with a real encoder into container `fmt`."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=fmt) as container:
        for key, value in (metadata or {}).items():
            container.metadata[key] = value
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "stereo" if channels == 2 else "mono"
        if bitrate:
            stream.bit_rate = bitrate
        data = samples.astype(np.int16)
        if channels == 2:
            data = np.repeat(data[None, :], 2, axis=0)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data.T.reshape(1, -1)), format="s16", layout="stereo")
        else:
            frame = av.AudioFrame.from_ndarray(data[None, :], format="s16", layout="mono")
        frame.rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def wav_with_extra_chunk(data: bytes) -> bytes:
    """The same WAV with a LIST/INFO metadata chunk inserted before the data chunk."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    position = 12
    while position < len(data):
        chunk_id, size = data[position:position + 4], int.from_bytes(data[position + 4:position + 8], "little")
        if chunk_id == b"data":
            break
        position += 8 + size + (size & 1)
    info = b"INFO" + b"INAM" + (10).to_bytes(4, "little") + b"A title!!\x00"
    chunk = b"LIST" + len(info).to_bytes(4, "little") + info
    body = data[12:position] + chunk + data[position:]
    return b"RIFF" + (len(body) + 4).to_bytes(4, "little") + b"WAVE" + body


def silence_wav(seconds: float, rate: int = 16000) -> bytes:
    """Digital silence as a WAV file."""
    return encode(np.zeros(int(seconds * rate), dtype=np.int16), rate, fmt="wav", codec="pcm_s16le")


def flac_without_length(data: bytes) -> bytes:
    """The same FLAC with STREAMINFO's 36-bit total-samples field zeroed ("unknown", as a
    streaming encoder writes it), so that the header declares no duration."""
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0, "STREAMINFO must be the first block"
    # STREAMINFO starts at byte 8; its total samples are the low 4 bits of byte 8 + 13 and
    # the 4 bytes after them (after block sizes, frame sizes, rate, channels and bit depth).
    out = bytearray(data)
    out[21] &= 0xF0
    out[22:26] = bytes(4)
    return bytes(out)
