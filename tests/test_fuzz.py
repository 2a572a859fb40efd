"""Property-based fuzzing (hypothesis), bounded in examples: the decoder and every endpoint
against malformed multipart, truncated and lying containers, absurd rates and channel counts,
huge and non-UTF-8 fields. Every answer is a 200 or a 4xx in the contract's shape (a 503 with
Retry-After when the service is full), nothing is cached for a refused request, and the
service stays up."""

from __future__ import annotations

import shutil
import struct

import numpy as np
import pytest
import soxr
from hypothesis import HealthCheck, event, given, settings as hypothesis_settings, strategies as st

from earmark.fingerprint.decode import AudioError, decode_audio
from earmark.service.api.errors import http_status
from tests.audio_tools import EXTRA_CONTAINERS, encode, fixture_bytes, in_container, read_pcm
from tests.test_app import keys_under

pytestmark = pytest.mark.any_store  # nothing here depends on the store server (tests/conftest.py)

FUZZ = hypothesis_settings(max_examples=60, deadline=None, derandomize=True,
                           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _seeds() -> dict[str, bytes]:
    """One short real recording in each container family the decoder meets most."""
    pcm, rate = read_pcm(fixture_bytes("recorded.wav"))
    pcm = pcm[: rate]  # one second keeps engine runs on fuzzed audio cheap
    return {
        "wav": encode(pcm, rate, fmt="wav", codec="pcm_s16le"),
        "flac": encode(pcm, rate, fmt="flac", codec="flac"),
        "mp3": encode(pcm, rate, fmt="mp3", codec="libmp3lame", bitrate=32000),
        "ogg": encode(soxr.resample(pcm, rate, 48000).astype(np.int16), 48000, fmt="ogg", codec="libopus"),
    }


SEEDS = _seeds()


def _wav_header(rate: int, channels: int, bits: int, data_size: int, riff_size: int | None = None) -> bytes:
    """A WAV header that says whatever it is told to, lies included."""
    block = max(1, channels * bits // 8) & 0xFFFF
    fmt = struct.pack("<HHIIHH", 1, channels & 0xFFFF, rate & 0xFFFFFFFF, (rate * block) & 0xFFFFFFFF, block, bits & 0xFFFF)
    riff = 4 + 8 + len(fmt) + 8 + data_size if riff_size is None else riff_size
    return (b"RIFF" + struct.pack("<I", riff & 0xFFFFFFFF) + b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + b"data" + struct.pack("<I", data_size & 0xFFFFFFFF))


@st.composite
def hostile_audio(draw) -> bytes:
    """Real files damaged (truncated, bytes flipped, garbage appended) or headers that lie."""
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "lying_wav", "noise"]))
    if kind == "lying_wav":
        header = _wav_header(
            rate=draw(st.sampled_from([0, 1, 3999, 8000, 384001, 2**31, 2**32 - 1])),
            channels=draw(st.sampled_from([0, 1, 2, 7, 255, 65535])),
            bits=draw(st.sampled_from([0, 1, 8, 16, 24, 33, 64])),
            data_size=draw(st.sampled_from([0, 10, 2**31, 2**32 - 1])),
            riff_size=draw(st.sampled_from([None, 0, 2**32 - 1])),
        )
        return header + draw(st.binary(max_size=2048))
    if kind == "noise":
        return draw(st.sampled_from([b"RIFF", b"fLaC", b"OggS", b"ID3", b"\xff\xfb", b""])) + draw(st.binary(max_size=4096))
    return draw(mutated(SEEDS))


@st.composite
def mutated(draw, seeds: dict[str, bytes]) -> bytes:
    """One of `seeds` truncated, with bytes flipped, or with garbage appended."""
    data = bytearray(seeds[draw(st.sampled_from(sorted(seeds)))])
    for _ in range(draw(st.sampled_from([0, 0, 1, 2, 8]))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    data = data[: draw(st.integers(0, len(data)))] if not draw(st.integers(0, 3)) else data
    return bytes(data) + (draw(st.binary(max_size=64)) if not draw(st.integers(0, 3)) else b"")


def _further_seeds() -> dict[str, bytes]:
    """A second of the recording in each container accepted since issue 21 (FLV, AC-3, TTA,
    Wave64, VOC, MPEG-TS...), for the decoders that reach now."""
    pcm, rate = read_pcm(fixture_bytes("recorded.wav"))
    return {name: in_container(name, pcm[:rate], rate) for name in EXTRA_CONTAINERS
            if name != "nist sphere" or shutil.which("sox")}


FURTHER_SEEDS = _further_seeds()


def _noise_after_a_magic_number(draw) -> bytes:
    """Random bytes behind the first bytes of a further container: the sniffer lets them in."""
    seed = FURTHER_SEEDS[draw(st.sampled_from(sorted(FURTHER_SEEDS)))]
    return seed[:draw(st.sampled_from([4, 16, 64, 1024]))] + draw(st.binary(max_size=4096))


@FUZZ
@given(data=st.one_of(mutated(FURTHER_SEEDS), st.composite(_noise_after_a_magic_number)()))
def test_the_further_containers_damaged_give_audio_or_a_clear_audio_error(data):
    _audio_or_a_clear_audio_error(data)


@FUZZ
@given(data=hostile_audio())
def test_the_decoder_gives_audio_or_a_clear_audio_error(data):
    _audio_or_a_clear_audio_error(data)


def _audio_or_a_clear_audio_error(data: bytes) -> None:
    try:
        decoded = decode_audio(data, max_duration_s=600)
    except AudioError as exc:
        assert 400 <= http_status(exc) < 500 and str(exc)
        return
    assert decoded.pcm_16k.dtype == np.float32 and np.isfinite(decoded.pcm_16k).all()
    assert decoded.duration_s <= 601


_NAMES = st.sampled_from(["language", "language", "use_itn", "hotwords", "prompt", "response_format", "model",
                          "temperature", "timestamp_granularities[]", "x", "", "fi\x00le", "языка"])
_VALUES = st.one_of(st.binary(max_size=256), st.sampled_from([b"en", b"zh", b"true", b"maybe", b"json", b"srt",
                                                                b"\xff\xfe\x00", b"x" * 70_000]))


def _mostly(draw, usual, *rare):
    """`usual` three times in four, else one of `rare`: most examples get deep into the service."""
    return usual if draw(st.integers(0, 3)) else draw(st.sampled_from(rare))


@st.composite
def hostile_form(draw) -> tuple[str, bytes]:
    """A Content-Type and a body: a multipart form, well-formed or not, around hostile audio."""
    boundary = _mostly(draw, "b0undary", "x" * 70, "a b", "-", "")
    parts = []
    if draw(st.integers(0, 7)):
        parts.append(("file", draw(hostile_audio()), "upload.bin"))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 3]))):
        name = draw(_NAMES)
        filename = _mostly(draw, None, "a.wav", "é\"; x=\"y")
        parts.append((name, draw(hostile_audio()) if name == "file" else draw(_VALUES), filename))
    draw(st.randoms()).shuffle(parts)
    body = b""
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"
    body += _mostly(draw, f"--{boundary}--\r\n".encode(), b"", b"--")
    if not draw(st.integers(0, 7)):
        body = body[: draw(st.integers(0, len(body)))]
    content_type = _mostly(draw, f"multipart/form-data; boundary={boundary}", "multipart/form-data",
                           "application/octet-stream", f"multipart/form-data; boundary=\"{boundary}\"",
                           f"multipart/form-data; boundary={boundary}; charset=latin-1")
    return content_type, body


@FUZZ
@given(request=hostile_form(), path=st.sampled_from(["/recognize", "/lookup", "/v1/audio/transcriptions"]))
def test_every_endpoint_answers_hostile_forms_in_the_contract_shape(client, redis_client, settings, request, path):
    content_type, body = request
    before = keys_under(redis_client, settings.key_prefix)
    response = client.post(path, content=body, headers={"Content-Type": content_type})
    event(f"status {response.status_code}")
    assert response.status_code == 200 or 400 <= response.status_code < 500, response.text[:300]
    if response.status_code != 200:
        payload = response.json()
        assert payload["code"] == response.status_code and isinstance(payload["msg"], str) and payload["msg"]
        assert len(response.content) < 2048  # never an echo of what was sent
        assert keys_under(redis_client, settings.key_prefix) == before
    assert client.get("/health").json()["status"] == "ok"


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE", "OPTIONS"])
@FUZZ
@given(path=st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs"), exclude_characters="#?"), max_size=40))
def test_any_path_and_method_answers_in_the_contract_shape(client, method, path):
    response = client.request(method, "/" + path.lstrip("/"), follow_redirects=False)
    assert response.status_code < 500
    if response.status_code >= 400:
        payload = response.json()
        assert payload["code"] == response.status_code and payload["msg"]
