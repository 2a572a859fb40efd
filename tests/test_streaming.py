"""Decoding and fingerprinting as a stream: the canonical digest, the perceptual hash, the
embedding and every verification feature are the same whether the audio is processed in one
piece or in any pieces, so a long upload can be analysed in bounded memory."""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from earmark.fingerprint.canonical import PcmDigest, pcm_digest
from earmark.fingerprint.config import DEFAULT
from earmark.fingerprint.decode import decode_audio, open_audio
from earmark.fingerprint.framing import BLOCK_FRAMES, Framer
from earmark.service.config import FuzzyThresholds
from earmark.service.pipeline.verification import Verifier
from tests.audio_tools import encode, fixture_bytes, read_pcm


@pytest.fixture(scope="module")
def long_pcm() -> np.ndarray:
    """About 40 s of real speech with noise between: many blocks of every feature's frames."""
    speech = decode_audio(fixture_bytes("recorded.wav"), 3600).pcm_16k
    noise = (np.random.default_rng(7).standard_normal(16000 * 3) * 0.01).astype(np.float32)
    return np.concatenate([speech, noise, speech[::-1], noise, speech] * 3)


def _pieces(signal: np.ndarray, seed: int) -> list[np.ndarray]:
    """`signal` cut at random places, from one sample to several blocks long."""
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, len(signal)), size=60, replace=False))
    cuts = np.concatenate([cuts[:50], [1, 2, 3]])  # a few one-sample pieces too
    return [piece for piece in np.split(signal, np.unique(cuts)) if piece.size]


def _same(a, b) -> None:
    assert a.hash.bits.tolist() == b.hash.bits.tolist() and a.hash.strong.tolist() == b.hash.strong.tolist()
    assert np.array_equal(a.hash.level_db, b.hash.level_db) and np.array_equal(a.embedding, b.embedding)
    assert np.array_equal(a.detail, b.detail) and np.array_equal(a.pitch, b.pitch) and a.speech_s == b.speech_s


def test_features_and_digest_do_not_depend_on_how_the_audio_is_cut(long_pcm):
    verifier = Verifier(FuzzyThresholds())
    whole = verifier.features(long_pcm)
    for seed in (1, 2):
        pieces = _pieces(long_pcm, seed)
        _same(verifier.features_of(pieces), whole)
        digest = PcmDigest()
        for piece in pieces:
            digest.push(piece)
        assert digest.hexdigest() == pcm_digest(long_pcm)
    assert len(whole.hash.bits) > 2 * BLOCK_FRAMES  # the test spans several blocks


def test_the_framer_gives_the_frames_of_the_padded_signal_in_order():
    signal = np.arange(10_000, dtype=np.float32)
    padded = np.pad(signal, (300, 500))
    expected = np.lib.stride_tricks.sliding_window_view(padded, 400)[::160]
    framer = Framer(400, 160, 300, 500, block_frames=7)
    blocks = [block.copy() for piece in np.array_split(signal, 13) for block in framer.push(piece)]
    blocks += [block.copy() for block in framer.finish()]
    assert all(len(block) == 7 for block in blocks[:-1])
    assert np.array_equal(np.concatenate(blocks), expected)


def test_streamed_decoding_resamples_exactly_as_one_call():
    """soxr's stream gives the samples of one whole-signal call, so the canonical digest of a
    44.1 kHz stereo file is what it was before decoding became a stream."""
    samples, rate = read_pcm(fixture_bytes("recorded.wav"))
    long = np.tile(samples, 12)
    data = encode(long, 44100 if rate != 44100 else 48000, fmt="wav", codec="pcm_s16le", channels=2)
    source_rate = 44100 if rate != 44100 else 48000
    decoded = decode_audio(data, 3600).pcm_16k
    stereo_mean = long.astype(np.float32) / 32768.0  # both channels are the same samples
    assert np.array_equal(decoded, soxr.resample(stereo_mean, source_rate, 16000, quality="HQ").astype(np.float32))
    chunks = list(open_audio(data, 3600).chunks)
    assert len(chunks) > 1 and np.array_equal(np.concatenate(chunks), decoded)


def test_features_of_a_decoder_stream_equal_those_of_the_decoded_array():
    data = fixture_bytes("weather.wav")
    verifier = Verifier(FuzzyThresholds())
    _same(verifier.features_of(open_audio(data, 3600).chunks), verifier.features(decode_audio(data, 3600).pcm_16k))
    assert DEFAULT.version == "ehash-v4"  # the features did not change: stored entries stay comparable


@pytest.mark.parametrize("layout", ["stereo", "mono"])
@pytest.mark.parametrize("codec, fmt", [("pcm_s16le", "wav"), ("flac", "flac")])
def test_16_bit_frames_are_scaled_and_averaged_exactly_as_ffmpeg_converts_them(codec, fmt, layout):
    """Whether a frame is scaled on its own (stereo) or a chunk of mono frames at once, the
    samples are FFmpeg's own conversion to float, channels averaged."""
    import io

    import av

    from earmark.fingerprint.decode import _mono, decode_audio

    rng = np.random.default_rng(5)
    channels = 2 if layout == "stereo" else 1
    planes = [rng.integers(-32768, 32767, 48000, dtype=np.int16) for _ in range(channels)]
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=16000)
        stream.layout = layout
        frame = av.AudioFrame.from_ndarray(np.stack(planes, axis=1).reshape(1, -1), format="s16", layout=layout)
        frame.rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    to_float = av.AudioResampler(format="fltp", rate=16000)
    converted = []
    with av.open(io.BytesIO(buffer.getvalue())) as container:
        for frame in container.decode(audio=0):
            assert frame.format.name in ("s16", "s16p")
            converted += [_mono(piece) for piece in to_float.resample(frame)]
    assert np.array_equal(decode_audio(buffer.getvalue(), 60.0).pcm_16k, np.concatenate(converted))
