"""Real encoders for tests: make re-encoded copies of fixtures with PyAV's bundled codecs."""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from pathlib import Path

import av
import numpy as np
import soxr

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


def wav_of(samples_16k: np.ndarray) -> bytes:
    """16 kHz float samples (a decoder's `pcm_16k`) as a 16-bit WAV upload."""
    return encode(np.clip(samples_16k * 32767, -32768, 32767), 16000, fmt="wav", codec="pcm_s16le")


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


# The containers the sniffer accepts beyond the common ones (issue 21, item 10), each made here
# by a real muxer and encoder (PyAV's, or SoX for NIST SPHERE): (label, rate, encode kwargs).
EXTRA_CONTAINERS = {
    "flv nellymoser": ("flv", 16000, dict(fmt="flv", codec="nellymoser")),
    "flv aac": ("flv", 22050, dict(fmt="flv", codec="aac", bitrate=48000)),
    "flv adpcm_swf": ("flv", 22050, dict(fmt="flv", codec="adpcm_swf")),
    "ac3 48 kHz": ("ac3", 48000, dict(fmt="ac3", codec="ac3", bitrate=96000)),
    "ac3 44.1 kHz": ("ac3", 44100, dict(fmt="ac3", codec="ac3", bitrate=96000)),
    "ac3 32 kHz": ("ac3", 32000, dict(fmt="ac3", codec="ac3", bitrate=96000)),
    "eac3": ("eac3", 48000, dict(fmt="eac3", codec="eac3", bitrate=96000)),
    "tta": ("tta", None, dict(fmt="tta", codec="tta")),
    "w64": ("w64", None, dict(fmt="w64", codec="pcm_s16le")),
    "voc u8": ("voc", 8000, dict(fmt="voc", codec="pcm_u8")),
    "voc s16": ("voc", None, dict(fmt="voc", codec="pcm_s16le")),
    "avi": ("avi", None, dict(fmt="avi", codec="pcm_s16le")),
    "mpeg program stream": ("mpeg", 48000, dict(fmt="mpeg", codec="mp2", bitrate=128000)),
    "mpeg-ts aac": ("mpegts", 48000, dict(fmt="mpegts", codec="aac", bitrate=64000)),
    "mpeg-ts mp2": ("mpegts", 48000, dict(fmt="mpegts", codec="mp2", bitrate=128000)),
    "realmedia 14.4": ("rm", 8000, dict(fmt="rm", codec="real_144")),
    "sox": ("sox", None, dict(fmt="sox", codec="pcm_s32le")),
    "bw64": ("wav", None, None),
    "nist sphere": ("nistsphere", None, None),
}


def in_container(name: str, samples: np.ndarray, rate: int) -> bytes:
    """int16 mono `samples` in one of `EXTRA_CONTAINERS` (resampled to the rate it needs).
    NIST SPHERE needs Debian's sox: the caller skips when `shutil.which("sox")` is None."""
    _, needed, kwargs = EXTRA_CONTAINERS[name]
    if needed is not None and needed != rate:
        samples, rate = soxr.resample(samples, rate, needed).astype(np.int16), needed
    if kwargs is not None:
        return encode(samples, rate, **kwargs)
    if name == "bw64":  # broadcast WAV 64 is RF64 under another name (ITU-R BS.2088)
        buffer = io.BytesIO()
        with av.open(buffer, mode="w", format="wav", options={"rf64": "always"}) as container:
            stream = container.add_stream("pcm_s16le", rate=rate)
            stream.layout = "mono"
            frame = av.AudioFrame.from_ndarray(samples.astype(np.int16)[None, :], format="s16", layout="mono")
            frame.rate = rate
            for packet in [*stream.encode(frame), *stream.encode(None)]:
                container.mux(packet)
        data = buffer.getvalue()
        assert data[:4] == b"RF64"
        return b"BW64" + data[4:]
    assert shutil.which("sox"), "NIST SPHERE is written by sox"
    with tempfile.TemporaryDirectory() as tmp:
        wav, sph = f"{tmp}/in.wav", f"{tmp}/out.sph"
        with open(wav, "wb") as out:
            out.write(encode(samples, rate, fmt="wav", codec="pcm_s16le"))
        subprocess.run(["sox", wav, sph], check=True, capture_output=True)
        with open(sph, "rb") as written:
            return written.read()
