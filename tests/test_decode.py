"""Decoding, sniffing and the canonical hash, on real encoded files."""

from __future__ import annotations

import io
import shutil

import av
import numpy as np
import pytest
import soxr

from earmark.fingerprint.canonical import bytes_digest, pcm_digest
from earmark.fingerprint.decode import (
    SAMPLE_RATE,
    AudioError,
    AudioTooLongError,
    EmptyAudioError,
    NotAudioError,
    UndecodableAudioError,
    decode_audio,
    open_audio,
)
from earmark.fingerprint.sniff import sniff_format
from earmark.service.api.errors import http_status
from earmark.fingerprint.speech import has_sound, speech_extent
from tests.audio_tools import (
    EXTRA_CONTAINERS,
    encode,
    fixture_bytes,
    flac_without_length,
    in_container,
    read_pcm,
    silence_wav,
    wav_with_extra_chunk,
)

HOUR = 3600.0


@pytest.fixture(scope="module")
def wav() -> bytes:
    return fixture_bytes("recorded.wav")


@pytest.fixture(scope="module")
def samples(wav):
    return read_pcm(wav)


def test_decodes_to_16k_mono_float(wav):
    decoded = decode_audio(wav, HOUR)
    assert decoded.pcm_16k.dtype == np.float32
    assert decoded.source_rate == 22050
    assert decoded.duration_s == pytest.approx(len(read_pcm(wav)[0]) / 22050, abs=0.01)
    assert 0.05 < float(np.abs(decoded.pcm_16k).max()) <= 1.0


@pytest.mark.parametrize(
    "fmt,codec,label",
    [("flac", "flac", "flac"), ("mp3", "libmp3lame", "mp3"), ("ipod", "aac", "mp4"), ("ogg", "libopus", "ogg"),
     ("aiff", "pcm_s16be", "aiff"), ("wav", "pcm_mulaw", "wav")],
)
def test_sniffs_and_decodes_real_encodings(samples, fmt, codec, label):
    pcm, rate = samples
    if codec == "libopus":  # Opus only runs at 48 kHz (and a few lower rates)
        pcm, rate = soxr.resample(pcm, rate, 48000).astype(np.int16), 48000
    data = encode(pcm, rate, fmt=fmt, codec=codec, bitrate=64000 if codec not in ("flac", "pcm_s16be") else None)
    assert sniff_format(data) == label
    decoded = decode_audio(data, HOUR)
    assert decoded.duration_s == pytest.approx(len(pcm) / rate, abs=0.1)


@pytest.mark.parametrize("name", sorted(EXTRA_CONTAINERS))
def test_sniffs_and_decodes_the_further_containers_speech_comes_in(samples, name):
    if name == "nist sphere" and not shutil.which("sox"):
        pytest.skip("NIST SPHERE is written by Debian's sox, not installed")
    pcm, rate = samples
    data = in_container(name, pcm, rate)
    assert sniff_format(data) == EXTRA_CONTAINERS[name][0]
    decoded = decode_audio(data, HOUR)
    assert decoded.duration_s == pytest.approx(len(pcm) / rate, abs=0.1)
    assert has_sound(decoded.pcm_16k)


def _avi_without_audio() -> bytes:
    """An AVI holding one video stream and no audio (a real muxer and encoder)."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="avi") as container:
        stream = container.add_stream("mjpeg", rate=5)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuvj420p"
        for number in range(3):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), number * 60, np.uint8), format="rgb24")
            for packet in stream.encode(frame.reformat(format="yuvj420p")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


NOT_AUDIO = {
    "png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(200),
    "pdf": b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n" * 20,
    "zip": b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(300),
    "jpeg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(300),
    "gif": b"GIF89a" + bytes(300),
    "elf": b"\x7fELF\x02\x01\x01" + bytes(300),
    "html": b"<!doctype html><html><body>" + b"G" * 2000 + b"</body></html>",
    "json": b'{"text": "' + b"a" * 5000 + b'"}',
    "text starting with G": b"Good morning, this is a transcript and not audio.\n" * 100,
    "riff that is not wave": b"RIFF\x00\x10\x00\x00WEBPVP8 " + bytes(300),
    "riff that is not wave (W64 GUID, other form)": b"riff\x2e\x91\xcf\x11\xa5\xd6\x28\xdb\x04\xc1\x00\x00" + bytes(300),
    "mpeg start code that is not a pack": b"\x00\x00\x01\xba\x00" + bytes(300),
}


@pytest.mark.parametrize("name", sorted(NOT_AUDIO))
def test_bytes_that_are_not_audio_are_still_refused(name):
    assert sniff_format(NOT_AUDIO[name]) is None
    with pytest.raises(NotAudioError) as refused:
        decode_audio(NOT_AUDIO[name], HOUR)
    assert http_status(refused.value) == 415


def test_a_video_container_without_an_audio_stream_is_refused():
    data = _avi_without_audio()
    assert sniff_format(data) == "avi"
    with pytest.raises(NotAudioError, match="no audio stream") as refused:
        decode_audio(data, HOUR)
    assert http_status(refused.value) == 415


def test_the_ac3_sync_word_alone_is_not_taken_for_audio(samples):
    """0x0B77 turns up once in 65,536 byte pairs: a plausible header must also lead to a
    second frame's sync word. Random blobs that start with it, and a real first frame
    followed by anything else, are refused."""
    rng = np.random.default_rng(21)
    blobs = [b"\x0b\x77" + rng.integers(0, 256, 6000, dtype=np.uint8).tobytes() for _ in range(3000)]
    assert [blob[:8] for blob in blobs if sniff_format(blob) is not None] == []
    pcm, rate = samples
    ac3 = in_container("ac3 48 kHz", pcm, rate)
    frame = 2 * 2 * 96  # 96 kbps at 48 kHz: 192 words
    assert sniff_format(ac3) == "ac3" and ac3[frame:frame + 2] == b"\x0b\x77"
    assert sniff_format(ac3[:frame] + rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()) is None
    assert sniff_format(ac3[:frame]) == "ac3"  # a whole one-frame file


def test_same_pcm_in_other_containers_has_the_same_canonical_digest(wav, samples):
    reference = pcm_digest(decode_audio(wav, HOUR).pcm_16k)
    flac = encode(*samples, fmt="flac", codec="flac")
    tagged = wav_with_extra_chunk(wav)
    assert bytes_digest(tagged) != bytes_digest(wav)
    assert pcm_digest(decode_audio(flac, HOUR).pcm_16k) == reference
    assert pcm_digest(decode_audio(tagged, HOUR).pcm_16k) == reference


@pytest.mark.parametrize(("codec", "channels"), [("pcm_s16le", 1), ("pcm_s16le", 2), ("pcm_s24le", 2), ("pcm_mulaw", 1)])
def test_wav_read_in_large_packets_decodes_to_the_samples_of_ffmpegs_own_packets(samples, monkeypatch, codec, channels):
    """The WAV demuxer's packet size (64 KB here, 4 KB by default) changes the speed of a
    decoding pass, never its samples: a canonical digest of a WAV stays what it was."""
    import earmark.fingerprint.decode as decode

    pcm, rate = samples
    wav = encode(np.tile(pcm, 6), rate, fmt="wav", codec=codec, channels=channels)
    wav = wav[:len(wav) - 333]  # a damaged tail too: the same samples kept
    large = decode_audio(wav, HOUR).pcm_16k
    monkeypatch.setattr(decode, "_WAV_PACKETS", {})
    assert np.array_equal(large, decode_audio(wav, HOUR).pcm_16k) and large.size > 6 * len(pcm) * 0.9 * SAMPLE_RATE / rate


def test_mp3_with_changed_tags_has_the_same_canonical_digest(samples):
    first = encode(*samples, fmt="mp3", codec="libmp3lame", bitrate=64000, metadata={"title": "first"})
    second = encode(*samples, fmt="mp3", codec="libmp3lame", bitrate=64000, metadata={"title": "a different title"})
    assert first != second
    assert pcm_digest(decode_audio(first, HOUR).pcm_16k) == pcm_digest(decode_audio(second, HOUR).pcm_16k)


def test_lossy_copy_has_another_canonical_digest(wav, samples):
    mp3 = encode(*samples, fmt="mp3", codec="libmp3lame", bitrate=64000)
    assert pcm_digest(decode_audio(mp3, HOUR).pcm_16k) != pcm_digest(decode_audio(wav, HOUR).pcm_16k)


def test_empty_upload_is_refused():
    with pytest.raises(EmptyAudioError):
        decode_audio(b"", HOUR)


@pytest.mark.parametrize("data", [b"hello, this is a text file\n" * 50, bytes(range(256)) * 40, b"%PDF-1.7\n" + b"x" * 2000])
def test_non_audio_is_refused_as_not_audio(data):
    with pytest.raises(NotAudioError):
        decode_audio(data, HOUR)


def test_truncated_header_is_undecodable(wav):
    with pytest.raises((UndecodableAudioError, EmptyAudioError)):
        decode_audio(wav[:30], HOUR)


def test_garbage_after_an_mp3_sync_word_is_undecodable():
    rng = np.random.default_rng(7)
    data = b"\xff\xfb\x90\x64" + rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()
    with pytest.raises((UndecodableAudioError, EmptyAudioError)):
        decode_audio(data, HOUR)


def test_absurd_sample_rates_are_refused(samples):
    pcm, _ = samples
    with pytest.raises(UndecodableAudioError, match="sample rate"):
        decode_audio(encode(pcm[:100], 1000, fmt="wav", codec="pcm_s16le"), HOUR)


def test_declared_duration_over_the_limit_is_refused_before_decoding(wav):
    with pytest.raises(AudioTooLongError, match="limit"):
        decode_audio(wav, max_duration_s=1.0)


def looped(samples, seconds: float) -> tuple[np.ndarray, int]:
    """The recording repeated to `seconds` (int16 samples, and their rate)."""
    pcm, rate = samples
    return np.tile(pcm, int(np.ceil(seconds * rate / len(pcm))))[:int(seconds * rate)], rate


def _wav_with_data_size(data: bytes, size: int) -> bytes:
    """The WAV with its data chunk's size replaced (0 or 0xFFFFFFFF: a streaming writer's)."""
    at = data.index(b"data")
    return data[:at + 4] + size.to_bytes(4, "little") + data[at + 8:]


@pytest.mark.parametrize("kind", ["flac", "flac 48 kHz stereo", "wav size 0", "wav size 0xFFFFFFFF"])
def test_audio_that_declares_no_length_is_held_to_the_limit_by_what_decodes(samples, kind):
    pcm, rate = looped(samples, 40.0)
    if kind.startswith("flac"):
        if "stereo" in kind:
            pcm, rate = soxr.resample(pcm, rate, 48000).astype(np.int16), 48000
        data = flac_without_length(encode(pcm, rate, fmt="flac", codec="flac", channels=2 if "stereo" in kind else 1))
    else:
        wav = encode(pcm, rate, fmt="wav", codec="pcm_s16le")
        data = _wav_with_data_size(wav, 0 if kind.endswith(" 0") else 0xFFFFFFFF)
    decoded = 0
    with pytest.raises(AudioTooLongError, match="limit") as refused:
        audio = open_audio(data, 5.0)
        if kind.startswith("flac"):
            assert audio.declared_s is None  # the case at hand: nothing to refuse before decoding
        for chunk in audio.chunks:
            decoded += chunk.size
    assert http_status(refused.value) == 413
    # Decoding stopped at the limit (and its second of slack, give or take a block), long
    # before the 40 s the file holds.
    assert decoded < 10 * SAMPLE_RATE


def test_silence_has_no_sound_and_speech_does(wav):
    silence = decode_audio(silence_wav(2.0), HOUR).pcm_16k
    assert not has_sound(silence)
    assert speech_extent(silence).duration_s == 0.0
    speech = decode_audio(wav, HOUR).pcm_16k
    assert has_sound(speech)
    padded = np.concatenate([np.zeros(SAMPLE_RATE, np.float32), speech])
    assert speech_extent(padded).start_s == pytest.approx(1.0 + speech_extent(speech).start_s, abs=0.03)
    assert speech_extent(padded).duration_s == pytest.approx(speech_extent(speech).duration_s, abs=0.03)


@pytest.mark.parametrize("codec", ["pcm_s16le", "aac"])
@pytest.mark.parametrize("gain_db", [0.0, -20.0])
def test_a_padded_copy_of_a_recording_with_room_tone_has_the_same_speech_extent(codec, gain_db):
    # A real recording (LibriVox) whose pauses hold room tone at about -48 dBFS: half a second of
    # digital silence at each end of a copy must not drag its noise floor to -120 dB and its
    # extent out over the room tone (it did: 3.30 s of "speech" against 2.60 s, a refused copy).
    # 20 dB quieter, the room tone sits at about -68 dBFS, under the -60 dBFS absolute floor, as
    # in pocketsphinx's and TIDIGITS' quiet recordings: still room tone, not digital silence
    # (taking it for digital silence measured 2.72 s of speech against 2.14 s for one of those).
    data = fixture_bytes("librivox_0930.flac")
    samples, rate = read_pcm(data)
    quiet = np.round(samples * 10 ** (gain_db / 20)).astype(np.int16)
    original = speech_extent(decode_audio(encode(quiet, rate, fmt="wav", codec="pcm_s16le"), HOUR).pcm_16k)
    pad = np.zeros(rate // 2, np.int16)
    fmt = "wav" if codec == "pcm_s16le" else "adts"
    copy = encode(np.concatenate([pad, quiet, pad]), rate, fmt=fmt, codec=codec, bitrate=64000)
    padded = speech_extent(decode_audio(copy, HOUR).pcm_16k)
    assert padded.duration_s == pytest.approx(original.duration_s, abs=0.06)
    assert padded.start_s == pytest.approx(original.start_s + 0.5, abs=0.06)


@pytest.mark.parametrize("name", ["weather.wav", "librivox_0930.flac", "minimal_pairs/cmn_tone_005_a.flac"])
def test_a_dc_offset_is_not_sound(name):
    # A constant offset (a cheap sound card's) held every pause at its level: a copy with one
    # measured 0.3 to 0.7 s more speech than its original (issue 23, "linear" channels).
    samples, rate = read_pcm(fixture_bytes(name))
    original = speech_extent(decode_audio(fixture_bytes(name), HOUR).pcm_16k)
    shifted = np.round(samples * 0.9 + 0.05 * 32768).astype(np.int16)
    copy = speech_extent(decode_audio(encode(shifted, rate, fmt="wav", codec="pcm_s16le"), HOUR).pcm_16k)
    assert copy.duration_s == pytest.approx(original.duration_s, abs=0.06)
    assert copy.start_s == pytest.approx(original.start_s, abs=0.06)
    offset_only = np.full(2 * SAMPLE_RATE, 0.05, np.float32)
    assert not has_sound(offset_only) and speech_extent(offset_only).duration_s == 0.0


def test_corrupted_files_only_ever_raise_audio_errors(samples):
    """Mutated real files (bytes flipped, spans cut, tails lost) are refused cleanly, never crash."""
    import random

    pcm, rate = samples
    seeds = [
        encode(pcm[:20000], rate, fmt="wav", codec="pcm_s16le"),
        encode(pcm[:20000], rate, fmt="mp3", codec="libmp3lame", bitrate=32000),
        encode(pcm[:20000], rate, fmt="flac", codec="flac"),
        encode(pcm[:22050], rate, fmt="ipod", codec="aac", bitrate=32000),
    ]
    rng = random.Random(1)
    for _ in range(300):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 20)):
            choice = rng.random()
            if choice < 0.6 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif choice < 0.8 and len(data) > 2:
                start = rng.randrange(len(data))
                del data[start : start + rng.randint(1, 500)]
            elif len(data) > 2:
                data = data[: rng.randrange(1, len(data))]
        try:
            decoded = decode_audio(bytes(data), HOUR)
        except AudioError as exc:
            assert 400 <= http_status(exc) < 500
        else:
            assert np.isfinite(decoded.pcm_16k).all()


def test_a_stereo_copy_of_mono_audio_decodes_to_the_same_pcm_unclipped():
    """FFmpeg's downmix adds identical channels at +3 dB; averaging keeps the PCM (and the
    canonical digest) of a loud mono recording and its stereo copy identical."""
    samples, rate = read_pcm(fixture_bytes("recorded.wav"))
    loud = (samples.astype(np.float64) * 32000 / np.abs(samples).max()).astype(np.int16)  # peaks at -0.2 dBFS
    mono = decode_audio(encode(loud, rate, fmt="wav", codec="pcm_s16le"), 3600).pcm_16k
    stereo = decode_audio(encode(loud, rate, fmt="wav", codec="pcm_s16le", channels=2), 3600).pcm_16k
    assert np.array_equal(mono, stereo)
