"""The fuzzy tier's verification: is this candidate the same recording as the query?

Pure policy over features (no store, no index, no I/O), so `earmark tune`, the audit, the
benchmarks and the tests judge exactly as the service does. A candidate is accepted only when
all of these hold, each a named reason in /lookup's evidence when it does not: it was made by
this fingerprint version, it is not a "no speech" entry, both recordings have enough speech to
judge, their speech durations agree within the contract's tolerance in both directions, every
stretch of the aligned recordings matches (the worst decides), no syllable-sized stretch
differs more than the recording's own codec noise explains (a changed word, a dropped word or a
cut end is a different recording: fingerprint/detail.py), the line is not so coarse that its own
distortion could hide a changed syllable, no 50 ms of speech on one side meets only noise on the
other (an end cut short under noise: fingerprint/missing_speech.py, in the telephone band and
above it), and no 200 ms of pitch shifts as a changed tone does (fingerprint/pitch.py).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from earmark.fingerprint.clipping import BLOCKS_PER_S, NO_BLOCKS
from earmark.fingerprint.config import DEFAULT, FingerprintConfig
from earmark.fingerprint.decode import DecodedAudio
from earmark.fingerprint.detail import (
    CLIPPED_RANGE_DB,
    LIMITED_RANGE_DB,
    PHASES,
    WIDE_BANDS,
    DetailSpectrum,
    DetailVerdict,
    wide_band_name,
    compare_detail_phased,
    detail_and_wide_spectra,
    detail_from_bytes,
    detail_phases,
    speech_durations_s,
    wide_from_bytes,
)
from earmark.fingerprint.embedding import at_stored_precision, embedding_from_energies
from earmark.fingerprint.matcher import Verification, verify
from earmark.fingerprint.missing_speech import NOISE_ADDED_DB, MissingSpeech, missing_speech
from earmark.fingerprint.pitch import PitchContour, PitchVerdict, compare_pitch, pitch_contour
from earmark.fingerprint.robust_hash import RobustHash, robust_hash_from_energies
from earmark.fingerprint.spectrum import BandEnergies, without_steady_noise
from earmark.fingerprint.speech import FrameLevels, extent_from_levels
from earmark.index.entry import Entry
from earmark.index.excerpt import detail_frames, hash_frames, speech_seconds
from earmark.service.config import FuzzyThresholds


# The features a query may defer (`Verifier.deferred_features`), in the order the checks use them.
DEFERRED_PARTS = ("detail", "pitch", "wide")
# ...and the deferred parts an entry never stores: only a query's verification compares them.
QUERY_ONLY_PARTS = ("detail_phases",)
NO_WIDE = np.zeros((0, WIDE_BANDS), dtype=np.uint8)


def _detail_and_wide(pcm_16k: np.ndarray) -> dict[str, np.ndarray]:
    """The detail and wide spectra, from one pass over the same frames."""
    return dict(zip(("detail", "wide"), detail_and_wide_spectra(pcm_16k), strict=True))


# How each deferred part is computed from the PCM: {part: parts made with it}.
_COMPUTE: dict[str, Callable[[np.ndarray], dict[str, Any]]] = {
    "detail": _detail_and_wide, "wide": _detail_and_wide,
    "pitch": lambda pcm: {"pitch": pitch_contour(pcm)},
    "detail_phases": lambda pcm: {"detail_phases": detail_phases(pcm)},
}


@dataclass(frozen=True, eq=False, init=False)
class QueryFeatures:
    """What the fuzzy tier knows of one recording: its hash, embedding and speech duration, and
    the detail spectrum ((frames, bands) uint8: fingerprint/detail.py), pitch contour (uint8
    per 10 ms frame: fingerprint/pitch.py) and wide spectrum above the detail's band (`wide`:
    `wide_spectrum`) that only the last checks compare, and the detail spectrum at finer phases
    (`detail_phases`), which the detail check compares and no entry stores (empty: none, as for
    a stored entry judged against others by the audit). `clipped`: the 10 ms blocks where the
    upload's source held runs at full scale (fingerprint/clipping.py, from the decoder:
    `note_clipping`), which the detail check compares by their peaks; no entry stores them
    either. A `wide` left out where no PCM is given is empty (as an entry stored before it has
    none): the missing-speech check above the telephone band is then skipped.

    They cost about as much again as the rest (bench/README.md, "Compute only what a
    request needs"), and most queries have no candidate that gets past the hashes, so a
    query's may be deferred: given the recording's PCM (`pcm_16k`) instead, each is computed
    on first use, once (whichever candidate asks first; thread-safe), and kept. Deferred or
    not, the arrays are the same (`Verifier.deferred_features`)."""

    hash: RobustHash
    embedding: np.ndarray
    speech_s: float
    detail: np.ndarray
    pitch: np.ndarray
    detail_phases: tuple[np.ndarray, ...]
    wide: np.ndarray
    clipped: np.ndarray

    def __init__(self, hash: RobustHash, embedding: np.ndarray, speech_s: float, detail: np.ndarray | None = None,
                 pitch: np.ndarray | None = None, detail_phases: tuple[np.ndarray, ...] | None = None, *,
                 wide: np.ndarray | None = None, pcm_16k: np.ndarray | None = None,
                 bands: np.ndarray | None = None, clipped: np.ndarray = NO_BLOCKS) -> None:
        if pcm_16k is None and (detail is None or pitch is None or detail_phases is None):
            raise ValueError("a feature left out needs the PCM to compute it from")
        if pcm_16k is None and wide is None:
            wide = NO_WIDE
        given = {"hash": hash, "embedding": embedding, "speech_s": speech_s, "detail": detail, "pitch": pitch,
                 "detail_phases": detail_phases, "wide": wide}
        for name, value in given.items():
            if value is not None:
                object.__setattr__(self, name, value)
        object.__setattr__(self, "clipped", clipped)
        object.__setattr__(self, "_pcm", pcm_16k)
        object.__setattr__(self, "_bands", bands)
        object.__setattr__(self, "_lock", threading.Lock())
        object.__setattr__(self, "_on_computed", None)

    def __getattr__(self, name: str) -> Any:
        # Only called for an attribute not set: a deferred part, computed now.
        state = self.__dict__
        if name not in _COMPUTE or "_lock" not in state:
            raise AttributeError(name)
        with state["_lock"]:
            if name not in state:
                for part, value in _COMPUTE[name](state["_pcm"]).items():
                    if part in state:
                        continue  # given, or computed before: kept as it is
                    object.__setattr__(self, part, value)
                    if state["_on_computed"] is not None:
                        state["_on_computed"](part)
                if all(part in state for part in _COMPUTE):
                    object.__setattr__(self, "_pcm", None)  # nothing left to compute from it
        return state[name]

    def has(self, part: str) -> bool:
        """Whether `part` ("detail", "pitch", "wide" or "detail_phases") is at hand, without computing it."""
        return part in self.__dict__

    def note_clipping(self, blocks: np.ndarray) -> QueryFeatures:
        """Record where the decoder found the source clipped (`DecodedAudio.clipped_blocks`, or
        an `AudioStream`'s once read to its end); returns self."""
        object.__setattr__(self, "clipped", blocks)
        return self

    def report_to(self, on_computed: Callable[[str], None] | None) -> None:
        """Tell `on_computed` the name of each deferred part as it is computed from now on (the
        service counts them by what asked)."""
        object.__setattr__(self, "_on_computed", on_computed)

    def take_bands(self) -> np.ndarray | None:
        """The band energies the hash was made from (steady noise taken out), handed over once
        and not kept: the segment search embeds the upload's stretches from them instead of
        analysing the upload again (a sixth of an hour-long upload's search). None when they
        were not kept (a recording analysed as a stream without `keep_bands`, or already taken)."""
        bands = self.__dict__["_bands"]
        object.__setattr__(self, "_bands", None)
        return bands

    def complete(self) -> QueryFeatures:
        """Every part an entry stores computed (not a query's finer phases); returns self."""
        for part in DEFERRED_PARTS:
            getattr(self, part)
        return self

    def cut(self, start_s: float, end_s: float, config: FingerprintConfig) -> QueryFeatures:
        """The features of [start_s, end_s) of this recording, cut from the whole recording's
        frames as a stored entry's stretch is (index/excerpt.py), so both sides of the verdict
        are measured alike; every part is computed first (once, for however many cuts). The
        embedding is the whole recording's (the verdict takes the similarity as given)."""
        self.complete()
        hashed, detailed = hash_frames(config, start_s, end_s), detail_frames(start_s, end_s)
        part = RobustHash(self.hash.bits[hashed], self.hash.strong[hashed], self.hash.level_db[hashed])
        first, last = round(start_s * BLOCKS_PER_S), round(end_s * BLOCKS_PER_S)
        clipped = self.clipped[(self.clipped >= first) & (self.clipped < last)] - first
        return QueryFeatures(part, self.embedding, speech_seconds(part.level_db, config), self.detail[detailed],
                             self.pitch[detailed], tuple(phase[detailed] for phase in self.detail_phases),
                             wide=self.wide[detailed], clipped=clipped)

    def __getstate__(self) -> dict:
        # Pickled (the benchmarks' feature caches) with every part, without the PCM, lock or callback.
        return {name: getattr(self, name) for name in ("hash", "embedding", "speech_s", "clipped", *_COMPUTE)}

    def __setstate__(self, state: dict) -> None:
        # Pickled before verification revision 6 kept no finer phases: judged at the stored one;
        # before revision 10, no wide spectrum: judged without it.
        QueryFeatures.__init__(self, **{"detail_phases": (), "wide": NO_WIDE, **state})


@dataclass(frozen=True)
class Judgement:
    """One candidate's verdict, and what /lookup's evidence and the metrics add to it."""

    accepted: bool
    score: float
    reason: str
    # (query time, score) of every ~1 s stretch; empty when rejected before the hashes were compared
    stretches: tuple[tuple[float, float], ...] = ()
    level_compressed: bool = False  # the detail check judged a limiter or compressor on one side
    offset_s: float = 0.0  # where the query lies on the entry's timeline: entry time = query time + offset_s
    # Where in the query the check that refused found its worst stretch (start, end in seconds):
    # segment reuse keeps the rest of a long stretch. None when accepted, or refused as a whole.
    refused_at: tuple[float, float] | None = None
    # The detail check vouched for a line coarser than EXCUSED_MEDIAN_DB: a low-rate codec's
    # (`excused_median_db`).
    coarse_line_excused: bool = False


@dataclass(frozen=True)
class Evidence:
    """What the comparisons of a query with one candidate found, before any threshold: the
    aligned hashes' stretch scores, the worst syllable of the detail spectra, the worst 50 ms of
    speech one side lacks where it holds only noise, and the worst 200 ms of the pitch contours."""

    window: Verification
    detail: DetailVerdict
    pitch: PitchVerdict
    missing: MissingSpeech


# Changed whenever the verification changes while the stored features do not (the comparisons
# in fingerprint/matcher.py, detail.py and pitch.py, the score scales below), so that verdicts
# remembered for bytes seen before are judged afresh. 2: the pitch check's signed 200 ms shift,
# its ceiling, and room tone no longer counted as a missing word. 3: a level-compressed pair
# (a limiter on one side) compared within 30 dB of each frame's peak; speech durations that
# disagree measured again over the pair's common noise floor. 4: a coarse line is held to a
# stricter detail limit, and one coarser than EXCUSED_MEDIAN_DB is refused; speech with no
# counterpart at all (a word cut off the end) is judged over its own recording's noise floor.
# 5: the pitch check leaves out a tracker's harmonic stretches (a short piece jumped into, or a
# frame over 10 semitones from its counterpart: band-limited speech on a telephone line).
# 6: the detail burst is measured over, and excused by, the median with each 0.2 s at its own
# alignment (a changed phone's drift after it is not a codec's distortion), and a burst quieter
# than the recording's loud frames is held to the coarse line's limit, and the query's detail is
# also compared at finer phases (2.5, 5, 7.5 ms), judged at the best-aligned one when it scores lower.
# 7: in a tone language, a line that hid a syllable's pitch cannot vouch for it
# (`pitch_unverifiable`); where the entry has no speech, a query frame over 18 dB under the
# query's loud frames is noise that filled a pause, not an added word (fingerprint/matcher.py).
# 8: speech durations are measured about each 20 ms frame's mean, so a DC offset is not speech
# (fingerprint/speech.py); an entry's stored duration is compared with a query's measured so.
# A level-compressed pair under loud added noise is also judged unlevelled, the worse deciding.
# 9: speech one side holds where the other holds only its noise is refused (an end cut short
# under noise: fingerprint/missing_speech.py).
# 10: the same above the telephone band, on the wide spectrum entries now store (a cut final /s/).
# 11: a line up to COARSEST_EXCUSED_MEDIAN_DB is vouched for where the pair shows a low-rate
# codec and nothing else (`excused_median_db`), its burst at most CODEC_BURST_DB over the median.
# 12: a pair's level compression is also measured without its worst 80 ms, the lesser deciding
# (fingerprint/detail.py, `_compression_db`): a changed loud vowel read as compression by itself.
# 13: frames over the query's hard clipping (runs of samples at full scale, marked by the
# decoder at the source's rate: fingerprint/clipping.py) are compared by their peaks alone
# (fingerprint/detail.py, `CLIPPED_RANGE_DB`): clipping's harmonics are not a changed syllable.
VERIFICATION_REVISION = 13


class Verifier:
    """Features of a recording, and the verdict on a query against one candidate entry."""

    def __init__(self, thresholds: FuzzyThresholds, config: FingerprintConfig = DEFAULT) -> None:
        self.thresholds = thresholds
        self.config = config
        # Who judged a match: verdicts recorded under other thresholds, another fingerprint
        # version or another verification are not reused (bytes once matched are judged again
        # after `earmark tune`, or after an upgrade that changed how copies are told apart).
        self.judged_by = hashlib.blake2b(f"{config.version}|{VERIFICATION_REVISION}|{thresholds!r}".encode(),
                                         digest_size=6).hexdigest()

    def features(self, pcm_16k: np.ndarray) -> QueryFeatures:
        """Every feature of a recording, its finer detail phases included (CPU work: call off
        the loop). Keeps nothing of `pcm_16k` (what `earmark tune` needs of the many originals
        it holds); a new entry's, which never needs the phases, is `deferred_features(...).complete()`."""
        return self.features_of([pcm_16k])

    def features_of_decoded(self, decoded: DecodedAudio) -> QueryFeatures:
        """`features` of a decoded upload, with where its source clipped (`note_clipping`)."""
        return self.features(decoded.pcm_16k).note_clipping(decoded.clipped_blocks)

    def features_of(self, chunks: Iterable[np.ndarray], keep_bands: bool = False) -> QueryFeatures:
        """`features` of a recording that arrives in pieces (a decoder's), holding only the
        features: the same result however it is cut. With `keep_bands`, the band energies its
        hash was made from are kept for the segment search (`take_bands`)."""
        energies, levels, detail, pitch = BandEnergies(self.config), FrameLevels(), DetailSpectrum(wide=True), PitchContour()
        phases = [DetailSpectrum(phase) for phase in PHASES]
        streams: list[BandEnergies | FrameLevels | DetailSpectrum | PitchContour] = [energies, levels, detail, pitch, *phases]
        for chunk in chunks:
            for stream in streams:
                stream.push(chunk)
        # The detail streams first: their levels are freed for their codes before the hash's
        # whole-recording arrays are made (issue 8 holds a lookup to 2x its PCM: bench/README.md).
        detail_codes, pitch_codes = detail.finish(), pitch.finish()
        wide_codes = detail.wide
        phase_codes = tuple(stream.finish() for stream in phases)
        del detail, pitch, phases, streams
        parts = self._hash_parts(energies, levels)
        bands = parts.pop("bands")
        return QueryFeatures(**parts, detail=detail_codes, pitch=pitch_codes, detail_phases=phase_codes,
                             wide=wide_codes, bands=bands if keep_bands else None)

    def deferred_features(self, pcm_16k: np.ndarray) -> QueryFeatures:
        """`features`, with the detail spectrum and pitch contour deferred until a check asks for
        them (computed from `pcm_16k`, which the result keeps until then): what a lookup needs
        first (hash, embedding, speech duration) for about half the work. The parts are the
        same arrays `features` gives, however they are computed."""
        energies, levels = BandEnergies(self.config), FrameLevels()
        for stream in (energies, levels):
            stream.push(pcm_16k)
        parts = self._hash_parts(energies, levels)
        bands = parts.pop("bands")
        return QueryFeatures(**parts, pcm_16k=pcm_16k, bands=bands)

    def _hash_parts(self, energies: BandEnergies, levels: FrameLevels) -> dict:
        """The hash, embedding and speech duration of a recording fully pushed into `energies`
        and `levels`: what every lookup needs first; and under "bands" the band energies they
        were made from."""
        band = without_steady_noise(energies.finish())
        return {"hash": robust_hash_from_energies(band), "embedding": embedding_from_energies(band, self.config),
                "speech_s": extent_from_levels(levels.finish()).duration_s, "bands": band}

    def attach(self, entry: Entry, features: QueryFeatures) -> Entry:
        """The entry with its perceptual evidence, ready to store."""
        bits, levels = features.hash.to_bytes()
        return replace(
            entry,
            fingerprint=bits,
            fingerprint_levels=levels,
            embedding=at_stored_precision(features.embedding).astype("<f4").tobytes(),
            fingerprint_version=self.config.version,
            detail=features.detail.tobytes(),
            pitch=features.pitch.tobytes(),
            wide=features.wide.tobytes(),
        )

    def judge(self, features: QueryFeatures, profile_id: str, similarity: float, entry: Entry | None) -> tuple[bool, float, str]:
        """(accepted, score, reason) for one candidate, the service's verdict (`earmark tune` and
        the benchmarks call this too): the score is the worst of the ~1 s window, the rescaled
        ~0.25 s window, the detail and the pitch scores, and the reason names the check, and
        the stretch, that decided."""
        judgement = self.evaluate(features, profile_id, similarity, entry)
        return judgement.accepted, judgement.score, judgement.reason

    def evaluate(self, features: QueryFeatures, profile_id: str, similarity: float, entry: Entry | None, *,
                 stop_at_hashes: bool = False) -> Judgement:
        """`judge`'s verdict with what /lookup's evidence and the metrics add to it: the checks in
        order.

        `stop_at_hashes` (the service's lookup): a candidate the hashes refuse is not compared
        further, so a query's deferred detail and pitch are computed only for a candidate that
        gets past them. The verdict and reason are the same either way; such a candidate's
        score is then the worst of the checks it reached (the ~1 s and rescaled ~0.25 s
        windows), not of all four, which is what `earmark tune` and the benchmarks, judging
        with every check, need to place a threshold."""
        hashed = self._compared_hashes(features, profile_id, similarity, entry)
        if isinstance(hashed, Judgement):
            return hashed
        verdict, entry_detail = hashed
        refused = self._hash_verdict(verdict) if stop_at_hashes else None
        if refused is not None:
            score = min(verdict.worst_score, short_score_of(verdict.worst_short_score))
            return Judgement(False, score, refused, verdict.stretches, offset_s=verdict.offset_s,
                             refused_at=self._refused_at(verdict, None, None, None, EXCUSED_MEDIAN_DB))
        assert entry is not None
        evidence = self._compared_detail(features, entry, verdict, entry_detail)
        detail, pitch, missing = evidence.detail, evidence.pitch, evidence.missing
        excused_db = excused_median_db(detail, missing, pitch)
        detail_score = detail_verdict_score(detail, excused_db)
        missing_score = missing_score_of(missing)
        pitch_score = pitch_score_of(pitch.burst_semitones)
        tones_hidden = speaks_in_tones(entry.language) and pitch.least_covered < MIN_TONE_COVERAGE
        if tones_hidden:
            pitch_score = min(pitch_score, self.thresholds.min_pitch_score * pitch.least_covered / MIN_TONE_COVERAGE)
        # The reported score is the worst evidence; each check keeps its own threshold.
        score = min(verdict.worst_score, short_score_of(verdict.worst_short_score), detail_score, missing_score,
                    pitch_score)
        accepted, reason = self._verdict(verdict, detail, detail_score, missing, missing_score, pitch, pitch_score,
                                         tones_hidden, excused_db)
        refused_at = None if accepted else self._refused_at(verdict, detail, missing, pitch, excused_db)
        coarse = detail.median_db > EXCUSED_MEDIAN_DB and excused_db > EXCUSED_MEDIAN_DB
        return Judgement(accepted, score, reason, verdict.stretches, detail.limited, verdict.offset_s, refused_at,
                         coarse_line_excused=coarse)

    def _refused_at(self, verdict: Verification, detail: DetailVerdict | None, missing: MissingSpeech | None,
                    pitch: PitchVerdict | None, excused_db: float) -> tuple[float, float] | None:
        """The query stretch (start, end in seconds) where the check that refuses (in `_verdict`'s
        order) found the two apart: the first ~1 s window under its threshold (what comes before
        it agrees at this alignment: a piece cut before it is likely accepted, and an edit that
        shifts the rest of the recording is found where it begins, not somewhere in the shifted
        rest), else the worst ~0.25 s window, 80 ms of detail, 50 ms of missing speech, 200 ms of
        pitch; None for a refusal of the whole (a line coarser than `excused_db`)."""
        limits = self.thresholds
        config = self.config
        if verdict.worst_score < limits.min_window_score:
            first_s = next((start_s for start_s, score in verdict.stretches if score < limits.min_window_score),
                           verdict.worst_at_s)
            return first_s, first_s + config.window_frames / config.frames_per_second
        if verdict.worst_short_score < limits.min_short_window_score:
            return verdict.worst_short_at_s, verdict.worst_short_at_s + config.short_window_frames / config.frames_per_second
        if detail is not None and detail_verdict_score(detail, excused_db) < limits.min_detail_score:
            return None if detail.median_db > excused_db else (detail.query_s, detail.query_s + 0.08)
        if missing is not None and missing_score_of(missing) < limits.min_detail_score:
            return missing.query_s, missing.query_s + 0.05
        if pitch is not None:
            return pitch.query_s, pitch.query_s + 0.2
        return None

    def evidence(self, features: QueryFeatures, profile_id: str, similarity: float,
                 entry: Entry | None) -> Evidence | Judgement:
        """The compared hashes, detail spectra and pitch contours of a query and a candidate, or
        the refusal of a candidate that cannot be compared that far (gone, another version or
        profile, no speech, durations or embeddings too far apart). Every comparison, whatever
        the thresholds say (what `earmark tune` fits them on)."""
        hashed = self._compared_hashes(features, profile_id, similarity, entry)
        if isinstance(hashed, Judgement):
            return hashed
        assert entry is not None
        return self._compared_detail(features, entry, *hashed)

    def _compared_hashes(self, features: QueryFeatures, profile_id: str, similarity: float,
                         entry: Entry | None) -> tuple[Verification, np.ndarray] | Judgement:
        """`evidence` as far as the aligned hashes (with the entry's detail spectrum, checked
        usable), or the refusal of a candidate that cannot be compared that far."""
        limits = self.thresholds
        if entry is None:
            return Judgement(False, 0.0, "gone: the entry expired, was evicted or deleted")
        if entry.fingerprint_version != self.config.version or not entry.fingerprint:
            return Judgement(False, 0.0, f"fingerprint_version: entry has {entry.fingerprint_version or 'none'}")
        if entry.profile_id != profile_id:
            return Judgement(False, 0.0, "profile_mismatch: the entry belongs to another profile")
        if entry.negative:
            return Judgement(False, 0.0, "negative_entry: no-speech entries are never fuzzy-matched")
        if entry.speech_s < limits.min_speech_s:
            return Judgement(False, 0.0, f"too_short: entry has {entry.speech_s:.2f} s of speech")
        entry_detail = detail_from_bytes(entry.detail)
        if entry_detail is not None and len(entry_detail) == 0:
            entry_detail = None  # nothing to compare: as unusable as a damaged value
        longer = max(entry.speech_s, features.speech_s)
        tolerance = max(limits.duration_tolerance_s, limits.duration_tolerance_ratio * longer)
        if abs(entry.speech_s - features.speech_s) > tolerance:
            # Measured apart, each over its own noise floor; measured again over the louder of
            # the two floors before the pair is refused.
            remeasured = speech_durations_s(features.detail, entry_detail) if entry_detail is not None else None
            if remeasured is None or abs(remeasured[0] - remeasured[1]) > tolerance:
                again = "" if remeasured is None else (f"; over their common noise floor {remeasured[0]:.2f} s "
                                                       f"vs {remeasured[1]:.2f} s")
                return Judgement(False, 0.0, f"duration_mismatch: speech {features.speech_s:.2f} s vs entry "
                                             f"{entry.speech_s:.2f} s (tolerance {tolerance:.2f} s{again})")
        if similarity < limits.min_embedding_similarity:
            return Judgement(False, 0.0, f"embedding_below_threshold: {similarity:.3f} < {limits.min_embedding_similarity}")
        reference = RobustHash.from_bytes(entry.fingerprint, entry.fingerprint_levels)
        verdict = verify(features.hash, reference, self.config)
        if verdict.windows == 0:
            return Judgement(False, 0.0, "no_comparable_stretch", verdict.stretches)
        if entry_detail is None or not entry.pitch:
            return Judgement(False, 0.0, "no_detail: the entry has no (usable) detail spectrum or pitch contour",
                             verdict.stretches)
        return verdict, entry_detail

    @staticmethod
    def _compared_detail(features: QueryFeatures, entry: Entry, verdict: Verification,
                         entry_detail: np.ndarray) -> Evidence:
        """The detail spectra, pitch contours and wide spectra compared where the hashes aligned
        them (the query's computed now, if deferred). The detail is judged at the stored phase, or at the
        query's finer phase that aligns best when that one scores lower: a finer alignment can
        only refuse (`compare_detail_phased`)."""
        stored, aligned = (_worse_of_both(found) for found in
                           compare_detail_phased(features.detail, features.detail_phases, entry_detail, verdict.offset_s,
                                                 features.clipped))
        detail = aligned if detail_verdict_score(aligned) < detail_verdict_score(stored) else stored
        pitch = compare_pitch(features.pitch, np.frombuffer(entry.pitch, dtype=np.uint8), stored.offset_frames)
        # The wide spectra when both have one (an entry stored before revision 10 has none).
        missing = missing_speech(features.detail, entry_detail, stored.offset_frames, features.wide,
                                 wide_from_bytes(entry.wide))
        return Evidence(verdict, detail, pitch, missing)

    def _hash_verdict(self, verdict: Verification) -> str | None:
        """The reason the compared hashes refuse a candidate (the ~1 s, then the ~0.25 s
        windows, against their thresholds), or None when they do not."""
        limits = self.thresholds
        if verdict.worst_score < limits.min_window_score:
            return (f"window_below_threshold: worst stretch {verdict.worst_score:.3f} "
                    f"< {limits.min_window_score} (mean {verdict.mean_score:.3f}) "
                    f"at query {verdict.worst_at_s:.2f} s / entry {verdict.worst_at_s + verdict.offset_s:.2f} s")
        if verdict.worst_short_score < limits.min_short_window_score:
            return (f"short_window_below_threshold: worst 0.25 s stretch "
                    f"{verdict.worst_short_score:.3f} < {limits.min_short_window_score} "
                    f"at query {verdict.worst_short_at_s:.2f} s / entry "
                    f"{verdict.worst_short_at_s + verdict.offset_s:.2f} s")
        return None

    def _verdict(self, verdict, detail: DetailVerdict, detail_score: float, missing: MissingSpeech,
                 missing_score: float, pitch, pitch_score: float, tones_hidden: bool,
                 excused_db: float) -> tuple[bool, str]:
        """(accepted, reason) from the compared hashes, detail, missing speech and pitch, each against
        its threshold (missing speech against the detail's: both judge syllables; `tones_hidden`:
        in a tone language, the pitch could not be compared over a syllable; `excused_db`: how
        coarse a line the detail check vouches for on this pair, `excused_median_db`)."""
        limits = self.thresholds
        refused = self._hash_verdict(verdict)
        if refused is not None:
            return False, refused
        if detail_score < limits.min_detail_score and detail.median_db > excused_db:
            return False, (f"line_too_coarse: {detail_score:.3f} < {limits.min_detail_score}: every 80 ms "
                           f"differs by {detail.median_db:.1f} dB (a line this coarse, over {excused_db} dB, "
                           f"could hide a changed syllable in its own distortion: a codec under about 24 kbit/s)"
                           f"{_coarse_note(detail, missing, pitch)}")
        if detail_score < limits.min_detail_score:
            return False, (f"detail_below_threshold: {detail_score:.3f} < {limits.min_detail_score}: the 80 ms "
                           f"at query {detail.query_s:.2f} s / entry {detail.entry_s:.2f} s differ "
                           f"{detail.burst_db:.1f} dB more than the rest ({detail.rest_db:.1f} dB)"
                           f"{_limited_note(detail)}{_quiet_note(detail)}{_clipped_note(detail)}")
        if missing_score < limits.min_detail_score:
            lacking, holding = ("entry", "query") if missing.in_query else ("query", "entry")
            band = f" {wide_band_name()}" if missing.wide else ""
            return False, (f"speech_missing: {missing_score:.3f} < {limits.min_detail_score}: the 50 ms at query "
                           f"{missing.query_s:.2f} s / entry {missing.entry_s:.2f} s hold nothing{band} over the "
                           f"{lacking}'s noise floor, {missing.missing_db:.1f} dB less than the {holding}'s speech "
                           f"there (a copy lacks at most {missing.limit_db:.1f} dB: a word cut short, or hidden "
                           f"under added noise)")
        if tones_hidden and pitch_score < limits.min_pitch_score:
            return False, (f"pitch_unverifiable: {pitch_score:.3f} < {limits.min_pitch_score}: in the 200 ms "
                           f"least covered, only {pitch.least_covered:.0%} of the cached voice's pitched frames "
                           f"could be compared (under {MIN_TONE_COVERAGE:.0%}): the line hides the pitch a "
                           f"changed tone would show, and the entry's language has tones")
        if pitch_score < limits.min_pitch_score:
            return False, (f"pitch_below_threshold: {pitch_score:.3f} < {limits.min_pitch_score}: the pitch "
                           f"200 ms from query {pitch.query_s:.2f} s / entry {pitch.entry_s:.2f} s differs by "
                           f"{pitch.burst_semitones:.1f} semitones (a different tone or intonation)")
        return True, (f"accepted: worst stretch {verdict.worst_score:.3f} over {verdict.windows} "
                      f"stretches (worst 0.25 s stretch {verdict.worst_short_score:.3f}), detail "
                      f"{detail_score:.3f} (worst 80 ms at query {detail.query_s:.2f} s, "
                      f"+{detail.burst_db:.1f} dB over {detail.rest_db:.1f} dB{_limited_note(detail)}"
                      f"{_clipped_note(detail)}), "
                      f"missing speech {missing_score:.3f}, pitch {pitch_score:.3f}, offset {verdict.offset_s:+.3f} s")

    def warm_up(self) -> None:
        """Compute the features of a second of noise once: the first call imports scipy.signal
        and builds the filter banks, which the first request after start would otherwise pay."""
        self.features(np.random.default_rng(0).normal(0.0, 0.1, 16000).astype(np.float32))


def _quiet_note(detail: DetailVerdict) -> str:
    """The evidence's word on a burst judged by the stricter limit for quiet ones."""
    if detail.loud_burst or detail.median_db > COARSE_LINE_MEDIAN_DB:
        return ""
    return "; the burst lies under the recording's loud frames, so it is held to the stricter limit"


def _limited_note(detail: DetailVerdict) -> str:
    """The evidence's word on a level-compressed pair (a limiter on one side), judged differently."""
    if not detail.limited:
        return ""
    return (f"; levels compressed by {abs(detail.compression_db):.1f} dB on the "
            f"{'query' if detail.compression_db > 0 else 'entry'}'s side (a limiter or compressor): "
            f"compared within {LIMITED_RANGE_DB:.0f} dB of each frame's peak")


def _clipped_note(detail: DetailVerdict) -> str:
    """The evidence's word on a query whose hard clipping was compared by its peaks."""
    if not detail.clipped:
        return ""
    return f"; the query's clipped frames compared within {CLIPPED_RANGE_DB:.0f} dB of each frame's peak"


# The ~0.25 s stretch score enters the reported score rescaled so that its default threshold
# (0.65) sits where the others' do (0.74): with default thresholds, a candidate is accepted
# exactly when its reported score reaches 0.74.
SHORT_SCALE = (1.0 - 0.74) / (1.0 - 0.65)


def short_score_of(worst_short_score: float) -> float:
    """The ~0.25 s stretch check on the reported score's scale."""
    return max(0.0, 1.0 - (1.0 - worst_short_score) * SHORT_SCALE)


# A stretch's detail excess (dB above what the recording's own distortion explains) that
# scores 0: about what a syllable against silence measures. It puts the detail score on the
# scale of the window score (0.74 = 5.7 dB), so that one reported score (the worst evidence)
# is compared with thresholds of one kind.
DETAIL_ZERO_DB = 22.0
# How coarse a line the detail check can vouch for, by its median difference per frame (a
# codec's distortion, which the check forgives 1.5 times over). Chosen on the channel benchmark
# (bench/README.md, "Channels"): through codecs under 24 kbit/s (MP3 at 8, Opus at 6 to 12, AAC
# at 16 and 24 kbit/s, Speex), 12 of 1,080 minimal-pair copies were served at the old limits, a
# name changed among them, because such a codec blurs a changed syllable (a 13.6 dB burst
# becomes 6.9) while its own distortion earns the allowance. Above COARSE_LINE_MEDIAN_DB the
# excess that reaches the threshold falls from 5.7 to 4.5 dB; above EXCUSED_MEDIAN_DB the line
# cannot vouch for a syllable at all. With these, none of the benchmark's minimal pairs is
# served through any channel; recall through low-bitrate codecs fell from 92% to 57% (those
# copies now go to the engine).
# A fine line earns the wider limit only for a burst at the recording's loudest frames, where
# clipping and limiting distort a copy (fingerprint/detail.py, LOUD_BURST_DB); a quieter burst
# (a weak consonant: /h/ against /f/, /p/ against /t/) is held to the coarse line's 4.5 dB
# (bench/README.md, "Weak consonants": 431 -> 229 of those pairs served; copies lost: 9 of
# 4,958 on the benchmarks it was chosen on, 12 of 1,286 on the channel benchmark held out).
COARSE_LINE_MEDIAN_DB = 1.5
COARSE_DETAIL_ZERO_DB = 4.5 / (1.0 - 0.74)
EXCUSED_MEDIAN_DB = 2.0
# A line coarser than that, up to COARSEST_EXCUSED_MEDIAN_DB, is vouched for by the same 4.5 dB
# limit where the pair shows a low-rate codec and nothing else (`excused_median_db`).
# EXCUSED_MEDIAN_DB was set before the missing-speech check (verification revision 9) and the
# locally aligned median (revision 6) existed; judged with them, on the benchmarks (bench/README.md,
# "Coarse codecs excused", tenth pass), no minimal pair through a codec below a 4.1 dB median
# shows under 6.4 dB of excess but a tone pair, which only the pitch can tell, and the first one
# the codec hides entirely (a name changed, through MP3 at 8 kbit/s) lies at 4.16 dB. What else can make a pair's median that coarse, and
# must not be excused:
# - a level-compressed judgement (`DetailVerdict.limited`): levelled, a changed name through
#   Opus at 6 kbit/s or Speex ("Don" / "Dan", "Logan" / "Morgan") kept a burst of 2.4-4.8 dB;
# - noise added to the query (its floor NOISE_ADDED_DB over the entry's): babble at 20 dB SNR
#   makes a line as coarse as a codec and hides a cut end under its own syllables (8 such cuts);
# - a pitch the line hid (under MIN_TONE_COVERAGE of some 200 ms compared): a Mandarin tone pair
#   through Opus at 6 kbit/s showed no detail burst at all, and only its pitch could tell it;
# - a changed phone's drift: the one-offset median over the locally aligned one by more than
#   DRIFT_DB (a codec distorts alike at every alignment: on the copies gained, at most 0.11 dB,
#   99% under 0.03; weak-consonant pairs through MP3 32k and Opus 24k, 0.16 to 0.84 dB);
# - a line that carries every band above the telephone band (a wideband codec at a normal rate):
#   "Ferry" / "Very them over." through Opus at 24 kbit/s, the changed consonant in the first of
#   its hundred frames, measured 2.1 dB with no drift and no burst; copies through such lines
#   rarely reach 2 dB (Opus 12k, a tandem ending in Opus 24k: 29 of the copies gained).
# On every coarse line (over COARSE_LINE_MEDIAN_DB) judged unlevelled, the burst may also stand
# at most CODEC_BURST_DB over the line's median, not only 4.5 dB over 1.5 times it: a low-rate
# codec spreads its distortion evenly (the copies gained over 2 dB: 95% under 2.2 dB over their
# median), while a changed syllable through it still stands out: "Don" / "Dan" through Opus at 8
# kbit/s judged unlevelled, 6.6 dB over a 2.4 dB median (an excess of 3.0 under the 4.5 limit),
# and through GSM 7.1 over 2.0 (served before), and 27 of the 172 weak-consonant pairs served
# through MP3 at 32 kbit/s, Opus at 24 and the telephone band. Its price is paid by codecs whose
# onsets burst (pre-echo): copies through MP3 at 16 kbit/s and AAC at 16 and 24 go to the engine
# more often (bench/README.md, tenth pass).
COARSEST_EXCUSED_MEDIAN_DB = 3.0
DRIFT_DB = 0.1
CODEC_BURST_DB = 3.0


def excused_median_db(detail: DetailVerdict, missing: MissingSpeech, pitch: PitchVerdict) -> float:
    """How coarse a line (median difference per frame) the detail check vouches for on a pair:
    COARSEST_EXCUSED_MEDIAN_DB where its coarseness is a low-rate codec's (judged unlevelled, no
    noise added to the query, its pitch compared throughout, no drift, a line short of the whole
    band above the telephone band), EXCUSED_MEDIAN_DB otherwise, and for an entry stored without
    a wide spectrum (its line above the telephone band is unknown)."""
    return EXCUSED_MEDIAN_DB if _not_a_codec(detail, missing, pitch) else COARSEST_EXCUSED_MEDIAN_DB


def _not_a_codec(detail: DetailVerdict, missing: MissingSpeech, pitch: PitchVerdict) -> str | None:
    """What shows on a pair besides a low-rate codec (`excused_median_db`), in the words of a
    reason; None when nothing does."""
    if detail.limited:
        return "the pair was judged as level-compressed"
    if missing.query_noise_rise_db >= NOISE_ADDED_DB:
        return f"noise was added to the query (its floor {missing.query_noise_rise_db:.1f} dB over the entry's)"
    if pitch.least_covered < MIN_TONE_COVERAGE:
        return f"the line hid the pitch (only {pitch.least_covered:.0%} of it compared in one 200 ms)"
    drift_db = detail.median_db - detail.rest_db
    if drift_db > DRIFT_DB:
        return f"the recordings drift apart ({drift_db:.2f} dB over the locally aligned median)"
    if missing.wide_bands_carried < 0:
        return "the entry was stored without a wide spectrum"
    if missing.wide_bands_carried >= WIDE_BANDS:
        return "the line carries the whole band over the telephone band (not a low-rate codec)"
    return None


def detail_score_of(excess_db: float, median_db: float = 0.0, loud_burst: bool = True,
                    excused_db: float = EXCUSED_MEDIAN_DB) -> float:
    """The detail check's score in [0, 1]: 1 - excess / DETAIL_ZERO_DB (COARSE_DETAIL_ZERO_DB on
    a coarse line, or for a burst quieter than the recording's loud frames: `loud_burst`
    False), and no more than the line's distortion allows (EXCUSED_MEDIAN_DB reaches the
    threshold; a line up to `excused_db`, vouched for further by `excused_median_db`, stays at
    the threshold: it is served at the default threshold and refused under any stricter one)."""
    fine = median_db <= COARSE_LINE_MEDIAN_DB and loud_burst
    zero = DETAIL_ZERO_DB if fine else COARSE_DETAIL_ZERO_DB
    line_db = min(median_db, EXCUSED_MEDIAN_DB) if median_db <= excused_db else median_db
    return max(0.0, min(1.0 - excess_db / zero, 1.0 - line_db * (1.0 - 0.74) / EXCUSED_MEDIAN_DB))


def detail_verdict_score(detail: DetailVerdict, excused_db: float = EXCUSED_MEDIAN_DB) -> float:
    """`detail_score_of` a detail verdict; on a coarse line (over COARSE_LINE_MEDIAN_DB) judged
    unlevelled, no more than its burst over the median allows (CODEC_BURST_DB reaches the
    threshold)."""
    score = detail_score_of(detail.excess_db, detail.median_db, detail.loud_burst, excused_db)
    if detail.median_db <= COARSE_LINE_MEDIAN_DB or detail.limited:
        return score
    over = max(0.0, detail.burst_db - detail.rest_db)
    return max(0.0, min(score, 1.0 - over * (1.0 - 0.74) / CODEC_BURST_DB))


def _coarse_note(detail: DetailVerdict, missing: MissingSpeech, pitch: PitchVerdict) -> str:
    """Why a line over EXCUSED_MEDIAN_DB was not excused up to COARSEST_EXCUSED_MEDIAN_DB."""
    why = _not_a_codec(detail, missing, pitch)  # None: it was (`excused_median_db`)
    if why is None or detail.median_db > COARSEST_EXCUSED_MEDIAN_DB:
        return ""
    return f"; a line up to {COARSEST_EXCUSED_MEDIAN_DB} dB is excused only for a low-rate codec, and here {why}"


def _worse_of_both(detail: DetailVerdict) -> DetailVerdict:
    """A level-compressed verdict, or the same pair judged unlevelled when that scores lower (a
    query under loud added noise, which lifts its quiet frames as a compressor would:
    fingerprint/detail.py, NOISE_RISE_DB)."""
    plain = detail.unlevelled
    return plain if plain is not None and detail_verdict_score(plain) < detail_verdict_score(detail) else detail


# Languages whose words differ by tone alone (ISO 639-1 and -3 codes as engines report them):
# there a syllable whose pitch the query's line hid cannot be vouched for by the pitch check.
TONE_LANGUAGES = frozenset({"zh", "cmn", "yue", "vi", "th", "lo"})
# The share of the cached voice's pitched frames, in every 200 ms, that must be compared for the
# pitch check to vouch for a tone language's syllable: a Mandarin tone pair (买 / 卖, a 60-75 Hz
# voice) through an 8th-order Butterworth telephone band kept 42% of its low tone's frames (the
# rest read at the tracker's ceiling) and was served. Held out (bench/bench_tone_lines.py): of
# 551 Mandarin copies, codecs at normal bitrates, resampling, gain, padding and 30 dB noise keep
# all 209; band-limited telephone lines keep 48 of the 102 they kept, low bitrates 96 of 123
# (those go to the engine). No minimal pair was served there before or after.
MIN_TONE_COVERAGE = 0.5


def speaks_in_tones(language: str | None) -> bool:
    """True for an entry whose language distinguishes words by tone."""
    return (language or "").split("-")[0].lower() in TONE_LANGUAGES


# A consistent pitch shift over ~200 ms of 1.2 semitones scores 0.74, where the window and detail
# thresholds sit: between the copies' highest (1.0, a copy through a limiter, whose distortion
# biases the tracker) and the tone pairs' lowest (1.5) on the minimal-pair benchmark.
PITCH_ZERO_SEMITONES = 1.2 / (1.0 - 0.74)


def pitch_score_of(burst_semitones: float) -> float:
    """The pitch check's score in [0, 1]: 1 - burst / PITCH_ZERO_SEMITONES."""
    return max(0.0, 1.0 - burst_semitones / PITCH_ZERO_SEMITONES)


def missing_score_of(missing: MissingSpeech) -> float:
    """The missing-speech check's score in [0, 1], on the detail score's scale: 0.74 where the
    speech one side lacks reaches what a copy may lack (`MissingSpeech.limit_db`)."""
    return max(0.0, 1.0 - missing.excess * (1.0 - 0.74))
