"""Minimal pairs are never served: one changed word, digit, tone or a cut end is a different
recording, while real re-encoded copies of the same recordings still match."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from earmark.fingerprint.decode import decode_audio
from earmark.fingerprint.speech import speech_extent
from earmark.index.entry import Entry
from earmark.service.config import FuzzyThresholds
from earmark.service.pipeline.verification import Verifier, detail_score_of
from tests.audio_tools import encode, fixture_bytes, read_pcm

pytestmark = pytest.mark.any_store  # nothing here depends on the store server (tests/conftest.py)

PAIRS = ["name_changed_011", "teen_ty_010", "cut_end_005", "cmn_tone_005", "cmn_digit_017",
         "cmn_tone_002", "cmn_tone_017"]  # 002 and 017: 买 / 卖, accepted before pitch was judged per 100 ms of time
PROFILE = "profile-minimal-pairs"


def _features(verifier: Verifier, data: bytes):
    return verifier.features(decode_audio(data, 3600).pcm_16k)


def _entry(verifier: Verifier, features, language: str = "en") -> Entry:
    entry = Entry(entry_id="a" * 32, profile_id=PROFILE, pcm_digest="pcm", text="cached", normalized_text="cached",
                  language=language, duration_s=0.0, speech_s=features.speech_s, engine_seconds=1.0, generation="g")
    return verifier.attach(entry, features)


def _judge(verifier: Verifier, entry_features, query_features, language: str = "en"):
    similarity = float(query_features.embedding @ entry_features.embedding)
    return verifier.judge(query_features, PROFILE, similarity, _entry(verifier, entry_features, language))


@pytest.fixture(scope="module")
def verifier() -> Verifier:
    return Verifier(FuzzyThresholds())


@pytest.mark.parametrize("pair", PAIRS)
def test_a_minimal_pair_is_refused_with_a_margin(verifier, pair):
    original = _features(verifier, fixture_bytes(f"minimal_pairs/{pair}_a.flac"))
    changed = _features(verifier, fixture_bytes(f"minimal_pairs/{pair}_b.flac"))
    for query, entry in ((changed, original), (original, changed)):  # whichever was cached first
        accepted, score, reason = _judge(verifier, entry, query)
        assert not accepted, reason
        assert score <= FuzzyThresholds().min_window_score - 0.05, reason
        assert " s" in reason  # the refusal names where to listen


@pytest.mark.parametrize("pair", PAIRS)
def test_real_copies_of_the_same_recordings_still_match(verifier, pair):
    data = fixture_bytes(f"minimal_pairs/{pair}_a.flac")
    samples, rate = read_pcm(data)
    original = _features(verifier, data)
    copies = {
        "mp3 32 kbps": encode(samples, rate, fmt="mp3", codec="libmp3lame", bitrate=32_000),
        "opus 24 kbps": encode(_resample(samples, rate, 48_000), 48_000, fmt="ogg", codec="libopus", bitrate=24_000),
        "8 kHz": encode(_resample(samples, rate, 8_000), 8_000, fmt="wav", codec="pcm_s16le"),
        "padded": encode(np.concatenate([np.zeros(rate // 2, np.int16), samples]), rate, fmt="wav", codec="pcm_s16le"),
    }
    for name, copy in copies.items():
        accepted, score, reason = _judge(verifier, original, _features(verifier, copy))
        assert accepted, f"{name}: {reason}"


def test_lookup_names_the_stretch_that_refused_a_minimal_pair(client):
    original, changed = (fixture_bytes(f"minimal_pairs/teen_ty_010_{s}.flac") for s in "ab")
    first = client.post("/recognize", files={"file": ("a.flac", original, "application/octet-stream")}).json()
    assert first["cache"]["tier"] == "miss"
    lookup = client.post("/lookup", files={"file": ("b.flac", changed, "application/octet-stream")}).json()
    assert lookup["cache"]["tier"] == "miss"
    refusal = next(c for c in lookup["cache"]["candidates"] if c["entry"] == first["cache"]["entry"])
    assert not refusal["accepted"] and refusal["score"] < 0.69 and "at query" in refusal["reason"]


def _resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    import soxr

    return np.round(soxr.resample(samples.astype(np.float32), rate, target)).astype(np.int16)


def test_a_louder_clipped_copy_of_a_minimal_pair_is_still_refused(verifier):
    """Loudness and clipping at the peaks must not hide the changed vowel (Don / Dan)."""
    original_data = fixture_bytes("minimal_pairs/name_changed_011_a.flac")
    changed, rate = read_pcm(fixture_bytes("minimal_pairs/name_changed_011_b.flac"))
    louder = np.clip(changed.astype(np.float64) * (32767 / np.abs(changed).max()) * 10 ** (3 / 20), -32768, 32767)
    query = _features(verifier, encode(louder.astype(np.int16), rate, fmt="wav", codec="pcm_s16le"))
    accepted, score, reason = _judge(verifier, _features(verifier, original_data), query)
    assert not accepted and score < FuzzyThresholds().min_window_score, reason


def test_room_tone_trimmed_off_a_real_recording_is_a_copy_but_a_cut_first_word_is_not(verifier):
    """A real recording (LibriVox, speech from 0.28 s) under a steady room tone (noise at
    -50 dBFS, as a quiet office's): an editor trimming 0.2 s of the lead-in leaves the same
    recording (room tone with no counterpart is not a missing word); cutting 0.4 s takes the
    start of the first word with it."""
    samples, rate = read_pcm(fixture_bytes("librivox_0890.flac"))
    tone = np.random.default_rng(7).normal(0.0, 32768 * 10 ** (-50 / 20), samples.size)
    roomy = np.clip(np.round(samples + tone), -32768, 32767).astype(np.int16)
    original = _features(verifier, encode(roomy, rate, fmt="wav", codec="pcm_s16le"))
    for cut_s, same in ((0.2, True), (0.4, False)):
        copy = encode(roomy[int(cut_s * rate):], rate, fmt="wav", codec="pcm_s16le")
        accepted, score, reason = _judge(verifier, original, _features(verifier, copy))
        assert accepted == same, f"cut {cut_s} s: {reason}"


def _through_a_limiter(samples: np.ndarray, gain_db: float = 6.0, knee: float = 0.5) -> np.ndarray:
    """`gain_db` louder through a per-sample soft limiter (as sox's `gain -l`): linear up to
    `knee` of full scale, then bent smoothly under it, so the loud syllables are held down and
    their spectra filled in."""
    x = samples.astype(np.float64) / 32768 * 10 ** (gain_db / 20)
    over = np.abs(x) > knee
    bent = np.sign(x) * (knee + (1 - knee) * np.tanh((np.abs(x) - knee) / (1 - knee)))
    return np.round(np.where(over, bent, x) * 32767).astype(np.int16)


@pytest.mark.parametrize("pair", ["name_changed_011"])
def test_a_limiter_on_one_side_is_a_copy_but_does_not_hide_a_changed_word(verifier, pair):
    """A prompt made louder through a limiter before it reaches the cache: the same prompt is
    a copy whichever side went through it, and a minimal pair stays refused (the limiter fills
    the valleys where Don and Dan differ, and raised the level of difference that excused them)."""
    a, rate = read_pcm(fixture_bytes(f"minimal_pairs/{pair}_a.flac"))
    b, _ = read_pcm(fixture_bytes(f"minimal_pairs/{pair}_b.flac"))
    plain_a, plain_b = (_features(verifier, encode(x, rate, fmt="wav", codec="pcm_s16le")) for x in (a, b))
    limited_a, limited_b = (_features(verifier, encode(_through_a_limiter(x), rate, fmt="wav", codec="pcm_s16le"))
                            for x in (a, b))
    for query, entry in ((limited_a, plain_a), (plain_a, limited_a)):
        accepted, score, reason = _judge(verifier, entry, query)
        assert accepted, reason
    for query, entry in ((limited_b, plain_a), (plain_a, limited_b), (plain_b, limited_a)):
        accepted, score, reason = _judge(verifier, entry, query)
        assert not accepted and score <= FuzzyThresholds().min_window_score - 0.05, reason


def test_a_limited_copy_is_served_and_counted_as_level_compressed(client):
    """Through the service: the limited copy of a cached prompt is a fuzzy hit, and the
    comparison that took it is counted on /metrics."""
    samples, rate = read_pcm(fixture_bytes("minimal_pairs/name_changed_011_a.flac"))
    original = encode(samples, rate, fmt="wav", codec="pcm_s16le")
    louder = encode(_through_a_limiter(samples), rate, fmt="wav", codec="pcm_s16le")
    first = client.post("/recognize", files={"file": ("a.wav", original, "audio/wav")}).json()
    again = client.post("/recognize", files={"file": ("louder.wav", louder, "audio/wav")}).json()
    assert again["cache"]["tier"] == "fuzzy" and again["cache"]["entry"] == first["cache"]["entry"], again["cache"]
    assert 'earmark_fuzzy_level_compressed_total{accepted="true"} 1.0' in client.get("/metrics").text


def test_speech_durations_that_disagree_are_measured_again_over_a_common_floor(verifier):
    """Each recording's speech duration is measured alone, over its own noise floor: a codec's
    noise in a real recording's quiet room tone moved one by 0.44 s (pocketsphinx's 0930 through
    GSM), past the 0.4 s tolerance. Before such a pair is refused both are measured again over
    the louder of their floors; a recording's first 60% is still refused."""
    data = fixture_bytes("librivox_0930.flac")
    samples, rate = read_pcm(data)
    original = _features(verifier, data)
    copy = _features(verifier, encode(samples, rate, fmt="mp3", codec="libmp3lame", bitrate=32_000))
    measured_alone = replace(copy, speech_s=original.speech_s + 0.44)  # what the GSM copy measured
    accepted, _, reason = _judge(verifier, original, measured_alone)
    assert accepted, reason
    prefix = _features(verifier, encode(samples[: len(samples) * 6 // 10], rate, fmt="wav", codec="pcm_s16le"))
    accepted, _, reason = _judge(verifier, original, prefix)
    assert not accepted and reason.startswith("duration_mismatch") and "common noise floor" in reason, reason


def test_a_changed_name_through_a_coarse_telephone_codec_is_refused(verifier):
    """Emma / Anna through the telephone band and G.726 at 16 kbit/s (the channel benchmark's
    one served pair, issue 23): the codec distorts every frame so much (median 5.4 dB) that its
    allowance hid the changed name (accepted at 0.806). A line that coarse cannot vouch for a
    syllable, so A's own copy through it goes to the engine too (median 4.1 dB); the same copy
    at 8 kHz without the codec still matches."""
    original_data = fixture_bytes("minimal_pairs/name_changed_002_a.flac")
    original = _features(verifier, original_data)
    for name in ("name_changed_002_b_g726_16k.wav", "name_changed_002_a_g726_16k.wav"):
        accepted, score, reason = _judge(verifier, original, _features(verifier, fixture_bytes(f"minimal_pairs/{name}")))
        assert not accepted and score < FuzzyThresholds().min_window_score, f"{name}: {reason}"
        assert reason.startswith("line_too_coarse") and "could hide a changed syllable" in reason
    samples, rate = read_pcm(original_data)
    narrowband = encode(_resample(samples, rate, 8_000), 8_000, fmt="wav", codec="pcm_s16le")
    accepted, score, reason = _judge(verifier, original, _features(verifier, narrowband))
    assert accepted, reason


def _telephone(samples: np.ndarray, rate: int) -> bytes:
    """A telephone line: band-passed to 300-3400 Hz (nothing of a voice's fundamental left),
    8 kHz, G.711 mu-law, really encoded."""
    from scipy.signal import butter, sosfilt

    band = sosfilt(butter(8, (300.0, 3400.0), btype="bandpass", fs=rate, output="sos"), samples.astype(np.float64))
    return encode(_resample(np.clip(band, -32768, 32767), rate, 8_000), 8_000, fmt="wav", codec="pcm_mulaw")



def test_a_dc_offset_is_a_copy_and_hides_no_changed_tone(verifier):
    """A DC offset (issue 23's linear channels) is not sound: the copy was refused for speech
    durations that disagreed (2.64 s against 2.22), and B with the same offset stays refused."""
    def shifted(data: bytes) -> bytes:
        samples, rate = read_pcm(data)
        return encode(np.round(samples * 0.9 + 0.05 * 32768).astype(np.int16), rate, fmt="wav", codec="pcm_s16le")

    a, b = fixture_bytes("minimal_pairs/cmn_tone_005_a.flac"), fixture_bytes("minimal_pairs/cmn_tone_005_b.flac")
    original = _features(verifier, a)
    accepted, _, reason = _judge(verifier, original, _features(verifier, shifted(a)))
    assert accepted, reason
    accepted, score, reason = _judge(verifier, original, _features(verifier, shifted(b)))
    assert not accepted and score <= 0.69, reason


def _cut_short_under_noise(name: str, cut_s: float, snr_db: float) -> tuple[np.ndarray, np.ndarray]:
    """(the recording, the recording with its last `cut_s` of speech taken out and white noise
    added at `snr_db` under its speech's RMS): a negative by the contract (speech lost at an
    end), through a noisy line."""
    pcm = decode_audio(fixture_bytes(name), 3600).pcm_16k
    end = speech_extent(pcm).end_s
    edited = np.concatenate([pcm[: int((end - cut_s) * 16000)], pcm[int(end * 16000):]])
    return pcm, _under_noise(edited, _speech_rms(pcm), snr_db)


def _speech_rms(pcm: np.ndarray) -> float:
    """The RMS of a recording's 20 ms frames over 5% of its loudest: its speech's level."""
    frames = pcm[: len(pcm) // 320 * 320].reshape(-1, 320)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    return float(np.sqrt(np.mean(rms[rms > 0.05 * rms.max()] ** 2)))


def _under_noise(pcm: np.ndarray, speech_rms: float, snr_db: float) -> np.ndarray:
    """`pcm` with white noise `snr_db` under `speech_rms` (seeded: the same noise every time)."""
    noise = np.random.default_rng(7).standard_normal(len(pcm)) * speech_rms / 10 ** (snr_db / 20)
    return (pcm + noise).astype(np.float32)


def test_a_reading_cut_short_under_loud_noise_is_judged_unlevelled(verifier):
    """Loud noise lifts a copy's quiet frames against its loud ones as a compressor does; the
    level-compressed comparison (each frame's top 30 dB) then compared noise with noise and
    scored a reading that lost its last 0.1 s, under white noise at 8 dB SNR, 0.66 on its detail.
    Where the query's noise floor rose over NOISE_RISE_DB, the plain comparison is judged too
    and the worse decides (issue 23, sixth pass: the channel benchmark's highest negative under
    10 dB of noise 0.734 -> 0.631, no copy lost)."""
    pcm, cut = _cut_short_under_noise("librivox_0930.flac", 0.1, 8.0)
    original, query = verifier.features(pcm), verifier.features(cut)
    found = verifier.evidence(query, PROFILE, float(query.embedding @ original.embedding), _entry(verifier, original))
    assert not found.detail.limited
    assert detail_score_of(found.detail.excess_db, found.detail.median_db, found.detail.loud_burst) < 0.5
    accepted, score, reason = _judge(verifier, original, query)
    assert not accepted and score <= 0.69, reason


@pytest.mark.parametrize("name, cut_s, snr_db", [
    ("minimal_pairs/teen_ty_010_a.flac", 0.2, 20.0),
    ("minimal_pairs/name_changed_011_a.flac", 0.1, 20.0),
    ("weather.wav", 0.1, 30.0),
    ("librivox_0890.flac", 0.15, 30.0),
])
def test_a_reading_cut_short_under_moderate_noise_is_refused(verifier, name, cut_s, snr_db):
    """'The train departs from platform thirteen.' without its last 0.2 s, under white noise at
    20 dB SNR, was served at 0.76 (and each reading here was served before, a real one among
    them: `weather.wav` at 0.86): the cut tail lies near the copy's noise floor, where the detail
    check compares little. The query holds only noise where the entry's "-teen" fades, with
    12 dB less power than that speech: noise only adds power, so no copy lacks it
    (fingerprint/missing_speech.py)."""
    pcm, cut = _cut_short_under_noise(name, cut_s, snr_db)
    accepted, score, reason = _judge(verifier, verifier.features(pcm), verifier.features(cut))
    assert not accepted and reason.startswith("speech_missing"), reason
    assert score < FuzzyThresholds().min_detail_score - 0.05, reason


def test_a_real_reading_cut_short_above_the_telephone_band_is_refused(verifier):
    """LibriVox 0890 without its last 0.15 s, under white noise at 20 dB SNR, was served at 0.78
    (verification revision 9): what was cut lies mostly above 3.8 kHz, where the detail spectrum
    does not reach. The wide spectrum entries now store finds it missing there; an entry stored
    before it (none) is judged as before, and the uncut reading under the same noise stays a copy."""
    pcm, cut = _cut_short_under_noise("librivox_0890.flac", 0.15, 20.0)
    original, query = verifier.features(pcm), verifier.features(cut)
    accepted, score, reason = _judge(verifier, original, query)
    assert not accepted and "above the telephone band" in reason, reason
    assert score < FuzzyThresholds().min_detail_score - 0.05, reason
    entry = replace(_entry(verifier, original, "en"), wide=b"")
    assert verifier.judge(query, PROFILE, float(query.embedding @ original.embedding), entry)[0]
    copy = verifier.features(_under_noise(pcm, _speech_rms(pcm), 20.0))
    accepted, _, reason = _judge(verifier, original, copy)
    assert accepted, reason


def test_the_same_reading_uncut_under_the_same_noise_is_a_copy(verifier):
    """The copy beside it: the whole reading under the same noise lacks nothing of its speech."""
    pcm = decode_audio(fixture_bytes("minimal_pairs/teen_ty_010_a.flac"), 3600).pcm_16k
    copy = _under_noise(pcm, _speech_rms(pcm), 20.0)
    accepted, _, reason = _judge(verifier, verifier.features(pcm), verifier.features(copy))
    assert accepted, reason


def test_a_reading_through_the_telephone_band_is_a_copy(verifier):
    """A real reading over a telephone line (issue 23): without its fundamental the pitch
    tracker reads a harmonic for stretches (the third, 19 semitones up, or a fourth or fifth
    above), which pitch classes took for a changed tone (LibriVox 0890: 'differs by 4.0
    semitones', refused). Those stretches are the tracker's, not the voice's."""
    data = fixture_bytes("librivox_0890.flac")
    samples, rate = read_pcm(data)
    accepted, _, reason = _judge(verifier, _features(verifier, data), _features(verifier, _telephone(samples, rate)))
    assert accepted, reason


@pytest.mark.parametrize("pair", ["cmn_tone_017", "cmn_tone_005"])
def test_a_tone_pair_through_the_telephone_band_is_still_refused(verifier, pair):
    """The harmonic stretches forgiven above are not a changed tone's: B through the same line
    is refused with the margin, by its pitch or its 0.25 s stretch."""
    original = _features(verifier, fixture_bytes(f"minimal_pairs/{pair}_a.flac"))
    samples, rate = read_pcm(fixture_bytes(f"minimal_pairs/{pair}_b.flac"))
    accepted, score, reason = _judge(verifier, original, _features(verifier, _telephone(samples, rate)))
    assert not accepted and score < FuzzyThresholds().min_window_score - 0.05, reason


def test_a_low_voiced_tone_pair_through_the_telephone_band_is_refused_in_mandarin(verifier):
    """买 / 卖 (cmn_tone_002) through an 8th-order Butterworth telephone band: the low tone's
    frames read at the tracker's ceiling on the line and are left out, so the pitch that did get
    compared cannot hold the changed tone (B scored pitch 0.783, and was served). In a tone
    language such a line cannot vouch for the syllable: B is refused, and so is A's own copy
    through the same line (it goes to the engine), while clean and re-encoded copies of A, which
    keep the low tone's frames, are still served. An English entry is not held to it: its words
    do not change with the tone."""
    original_data = fixture_bytes("minimal_pairs/cmn_tone_002_a.flac")
    original = _features(verifier, original_data)
    for side in "ba":
        samples, rate = read_pcm(fixture_bytes(f"minimal_pairs/cmn_tone_002_{side}.flac"))
        line = _features(verifier, _telephone(samples, rate))
        accepted, score, reason = _judge(verifier, original, line, language="zh")
        assert not accepted and score < FuzzyThresholds().min_pitch_score, reason
        assert reason.startswith("pitch_unverifiable") and "the line hides the pitch" in reason
        assert _judge(verifier, original, line, language="en")[2].split(":")[0] != "pitch_unverifiable"
    samples, rate = read_pcm(original_data)
    for copy in (original_data, encode(samples, rate, fmt="mp3", codec="libmp3lame", bitrate=32_000),
                 encode(_resample(samples, rate, 8_000), 8_000, fmt="wav", codec="pcm_s16le")):
        accepted, _, reason = _judge(verifier, original, _features(verifier, copy), language="zh")
        assert accepted, reason


def test_the_lookup_stopping_at_the_hashes_gives_the_same_verdicts_and_defers_what_it_skips(verifier):
    """The service's lookup (deferred detail and pitch, `stop_at_hashes`) gives every pair, and
    every pair of different recordings, the verdict and reason of the full judgement, and a
    candidate the hashes refuse never computes the query's pitch."""
    pcm = {f"{pair}_{side}": decode_audio(fixture_bytes(f"minimal_pairs/{pair}_{side}.flac"), 3600).pcm_16k
           for pair in PAIRS[:4] for side in "ab"}
    full = {name: verifier.features(samples) for name, samples in pcm.items()}
    refused_at_hashes = 0
    for query in pcm:
        for cached in pcm:
            entry = _entry(verifier, full[cached])
            similarity = float(full[query].embedding @ full[cached].embedding)
            deferred = verifier.deferred_features(pcm[query])
            accepted, score, reason = verifier.judge(full[query], PROFILE, similarity, entry)
            judgement = verifier.evaluate(deferred, PROFILE, similarity, entry, stop_at_hashes=True)
            assert (judgement.accepted, judgement.reason) == (accepted, reason)
            if reason.startswith(("window_below_threshold", "short_window_below_threshold")):
                refused_at_hashes += 1
                assert not deferred.has("pitch") and judgement.score >= score
            else:
                assert judgement.score == score
    assert refused_at_hashes > 0


# Minimal pairs that differ in one weak consonant (espeak-ng 1.51; tests/fixtures/README.md): the
# fricative or burst that tells them apart is quiet and, within the detail spectrum's telephone
# band (250-3800 Hz), differs mostly in shape at a low level; their 4-8 kHz energy is not stored.
WEAK_PAIRS = ["weak_hire_fire", "weak_hold_fold", "weak_free_three", "weak_pick_tick"]
# Refused since verification revision 6 (fingerprint/detail.py: the allowance at local
# alignment, the stricter limit for a burst under the loud frames, the query's finer phases),
# at 0.64 to 0.69.
WEAK_REFUSED = [("weak_hire_fire", "as recorded"), ("weak_hire_fire", "telephone"), ("weak_hold_fold", "as recorded"),
                ("weak_hold_fold", "telephone"), ("weak_free_three", "as recorded")]
# Still served (0.77 and 0.83); free/three through the telephone band is refused (by
# line_too_coarse, at 0.736: no margin), so it is in neither list.
WEAK_SERVED = [("weak_pick_tick", "as recorded"), ("weak_pick_tick", "telephone")]


def _weak_pair_verdict(verifier, pair: str, line: str) -> tuple[bool, float, str]:
    original = _features(verifier, fixture_bytes(f"minimal_pairs/{pair}_a.flac"))
    data = fixture_bytes(f"minimal_pairs/{pair}_b.flac")
    if line == "telephone":
        data = _telephone(*read_pcm(data))
    return _judge(verifier, original, _features(verifier, data))


@pytest.mark.parametrize(("pair", "line"), WEAK_REFUSED)
def test_a_weak_consonant_pair_is_refused_with_a_margin(verifier, pair, line):
    """"We will hire him tomorrow." against "...fire...", "Please hold the line..." against
    "...fold..." (as recorded and through a telephone line), "He is free now." against
    "...three...": the changed consonant's burst is measured over the rest of the recording at
    its own alignment, to the sample (what follows a changed phone drifts, rarely by whole
    10 ms frames) and, lying under the loud frames, held to the stricter limit. Served at 0.75
    to 0.82 before revision 6; now refused 0.05 or more under the threshold."""
    accepted, score, reason = _weak_pair_verdict(verifier, pair, line)
    assert not accepted, reason
    assert reason.startswith("detail_below_threshold"), reason
    assert score <= FuzzyThresholds().min_detail_score - 0.05, reason


@pytest.mark.xfail(strict=True, reason="open: a pair differing in one plosive (/p/-/t/) is served: its burst is "
                                       "too short and quiet for the stored detail spectrum to tell from a codec's "
                                       "distortion (bench/README.md, 'Weak consonants')")
@pytest.mark.parametrize(("pair", "line"), WEAK_SERVED)
def test_a_weak_consonant_pair_is_refused(verifier, pair, line):
    """"Tick the one you like." against "Pick...", as recorded or through a telephone line,
    must not be served A's transcript. Accepted today at 0.77 and 0.83."""
    accepted, _, reason = _weak_pair_verdict(verifier, pair, line)
    assert not accepted, reason


@pytest.mark.parametrize("pair", WEAK_PAIRS)
def test_copies_of_the_weak_consonant_recordings_match(verifier, pair):
    """What a fix for the pairs above must keep: A through a telephone line, MP3 at 32 kbit/s and
    8 kHz is still A (scored 0.88 to 1.0 today)."""
    data = fixture_bytes(f"minimal_pairs/{pair}_a.flac")
    samples, rate = read_pcm(data)
    original = _features(verifier, data)
    copies = {
        "telephone": _telephone(samples, rate),
        "mp3 32 kbps": encode(samples, rate, fmt="mp3", codec="libmp3lame", bitrate=32_000),
        "8 kHz": encode(_resample(samples, rate, 8_000), 8_000, fmt="wav", codec="pcm_s16le"),
    }
    for name, copy in copies.items():
        accepted, _, reason = _judge(verifier, original, _features(verifier, copy))
        assert accepted, f"{name}: {reason}"
