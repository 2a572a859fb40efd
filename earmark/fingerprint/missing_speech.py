"""Speech one recording holds where the other holds only its noise: an end cut short under noise.

The detail check (fingerprint/detail.py) compares two recordings only above the louder of their
noise floors, band by band, and averages the difference over its 16 bands. Added noise raises
the query's floor, so the tail of a word cut off a noisy copy is compared where little of it
rises above that floor, in a few bands: "...platform thirteen." without its last 0.2 s, under
white noise at 20 dB SNR, differed by 3 dB there and was served (0.76).

This check uses what noise cannot do: noise only adds power. Where a copy's frame holds nothing
over its own noise floor, its original held nothing much over that floor either; so an entry
frame whose power (seen through the line's per-band response) clearly exceeds the query frame's,
while the query frame is noise alone, is speech the query lacks. The same holds the other way
round where noise was added to the entry (speech of the query that the entry, noise alone
there, lacks). A codec or a limiter changes a frame's power too, but leaves speech in it, over
its floor: only frames that are noise alone are counted.

Measured on the channel benchmarks (bench/README.md, seventh pass): copies through added noise
lack at most 2.2 dB over 50 ms (a compander after the noise), an AC-3 encoder or a limiter,
whose queries carry no added noise, up to 4.9 dB; ends cut by 0.1 to 0.2 s under 10 to 30 dB of
noise lack up to 20 dB (bench/bench_cut_ends.py).

The same check also runs above the telephone band (`missing_wide_speech`, on the wide spectrum
stored beside the detail spectrum): a cut final /s/ or /t/ lies mostly over 3.8 kHz, where the
detail spectrum cannot see it missing. There it is gated, because lines treat that band unlike
the speech band: only bands the line carries are judged (a telephone or low-rate line drops
them), a frame counts only where it holds its noise (a low-bitrate encoder leaves holes where it
dropped a band in a quiet frame, which are not noise alone), a frame counts only where the
lacking side's telephone band is noise alone too (a low-rate AAC encoder drops the band over
3.8 kHz from a fricative whose lower part it keeps; a cut end leaves noise in every band), and a
copy may lack twice as much (bench/README.md, ninth pass). It looks both ways, as the telephone
band's check does; whether noise was added to the entry is judged from the telephone band's
floors.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from earmark.fingerprint.decode import SAMPLE_RATE
from earmark.fingerprint.detail import HOP, WINDOW, decibels, frame_levels, noise_floor, overlap
from earmark.fingerprint.medians import median

# A band of the entry this far over the pair's common floor is speech: the line's response in
# that band (a telephone line's lost lowest band) is measured on such cells.
SPEECH_OVER_FLOOR_DB = 10.0
# ...from at least this many of them; a band with fewer keeps its level.
MIN_SPEECH_CELLS = 5
# A frame no band of which rises this far over its recording's noise floor (`noise_floor`,
# whose own margin is 3 dB) is noise alone.
NOISE_ONLY_DB = 6.0
# Power under the common floor's, plus this, is not compared: both sides there are noise.
FLOOR_MARGIN_DB = 3.0
STRETCH_FRAMES = 5  # 50 ms: the shortest piece of a word an edit takes
# Where a recording's noise floor rose this far over the other's (mean over the bands), noise was
# added to it, and a copy lacks little under it: MISSING_UNDER_NOISE_DB. On the channel
# benchmarks, copies under noise alone lacked at most 0.17 dB over 50 ms; a compander after the
# noise (the speakerphone chain), which pushes quiet frames down, 2.2 dB. Otherwise a codec or a
# limiter may lower a quiet frame to its floor: MISSING_DB, over the 4.9 dB of AC-3 at 96 kbit/s
# and 4.7 of ffmpeg's alimiter (bench/README.md, seventh pass).
NOISE_ADDED_DB = 3.0
MISSING_UNDER_NOISE_DB = 3.0
MISSING_DB = 6.0
# Above the telephone band (`missing_wide_speech`): a band is judged only where the line carries
# it (its response over the speech cells above CARRIED_DB, from MIN_SPEECH_CELLS of them), and
# only with MIN_CARRIED_BANDS such bands; a frame with a band more than HOLE_DB under the
# holder's floor is a codec's hole, not noise alone; the limits are WIDE_LIMIT_SCALE times the
# speech band's.
CARRIED_DB = -6.0
MIN_CARRIED_BANDS = 2
HOLE_DB = 6.0
WIDE_LIMIT_SCALE = 2.0


@dataclass(frozen=True)
class MissingSpeech:
    """The worst 50 ms of speech one recording holds where the other holds only its noise."""

    missing_db: float  # how much power the noise-only side lacks there, on average over the stretch
    limit_db: float  # what a copy may lack (MISSING_UNDER_NOISE_DB or MISSING_DB)
    query_s: float  # where the stretch starts in the query
    entry_s: float  # ...and in the entry
    in_query: bool = False  # True: speech of the query that the entry lacks; False: the other way
    # Whether the lacking side's noise floor rose NOISE_ADDED_DB over the other's: noise was added to it.
    noise_added: bool = False
    wide: bool = False  # found above the telephone band (`missing_wide_speech`)
    # What this check measured of the line between the two, which the verification reads to
    # tell a low-rate codec from added noise or a wideband line (service/pipeline/
    # verification.py, `excused_median_db`): how far the query's noise floor lies over the
    # entry's (mean over the detail bands; NOISE_ADDED_DB or more: noise was added to the
    # query), and how many of the WIDE_BANDS over the telephone band the query's line carries
    # (`carried_bands`; -1: unknown, no wide spectrum on one side).
    query_noise_rise_db: float = 0.0
    wide_bands_carried: int = -1

    @property
    def excess(self) -> float:
        """`missing_db` over its limit: 1.0 is where a copy's allowance ends."""
        return self.missing_db / self.limit_db


NOTHING_MISSING = MissingSpeech(0.0, MISSING_DB, 0.0, 0.0)


def missing_speech(query: np.ndarray, entry: np.ndarray, offset_frames: int, query_wide: np.ndarray | None = None,
                   entry_wide: np.ndarray | None = None) -> MissingSpeech:
    """The worse (by `MissingSpeech.excess`) of the speech the query lacks and the speech the
    entry lacks under noise added to it, of two detail spectra (fingerprint/detail.py) aligned
    so that query frame k lies at entry frame k + offset_frames; given both recordings' wide
    spectra (`wide_spectrum`, on the same frames), the worse of that and the same above the
    telephone band (`missing_wide_speech`)."""
    narrow = _Narrow(query, entry)
    if len(narrow.q) < STRETCH_FRAMES or len(narrow.r) < STRETCH_FRAMES:
        return NOTHING_MISSING
    found = _both_ways(narrow.q, narrow.r, narrow.q_floor, narrow.r_floor, offset_frames, narrow.entry_noise_added)
    carried = -1
    if query_wide is not None and entry_wide is not None:  # none: an entry stored before the wide spectrum
        above, carried = narrow.above_band(query_wide, entry_wide, offset_frames)
        found = above if above.excess > found.excess else found
    return replace(found, query_noise_rise_db=round(narrow.query_noise_rise_db, 2), wide_bands_carried=carried)


def missing_wide_speech(query: np.ndarray, entry: np.ndarray, offset_frames: int, query_detail: np.ndarray,
                        entry_detail: np.ndarray) -> MissingSpeech:
    """`missing_speech` above the telephone band alone, of two wide spectra (fingerprint/detail.py,
    `wide_spectrum`) aligned alike, given the two recordings' detail spectra on the same frames:
    judged only in the bands the line carries, without a codec's holes, and only in frames whose
    telephone band is noise alone too, against twice the limits (see the module docstring)."""
    return _Narrow(query_detail, entry_detail).above_band(query, entry, offset_frames)[0]


class _Narrow:
    """Two recordings' detail spectra (dB) with their noise floors, and whether noise was added
    to the entry: what both bands' checks judge from the telephone band.

    Without noise added to the entry, speech of the query that it lacks is the detail check's
    to judge (over the entry's low floor), while a codec's pre-echo spreads into the query's
    silences before an onset: 4.2 dB over 50 ms through MP3 at 32 kbit/s. Above the telephone
    band, whether noise was added is judged here too: added noise raises the floor in both
    bands, while a codec that drops the band above lowers only the query's floor there (MP3 at
    16 kbit/s: 5 copies refused otherwise)."""

    def __init__(self, query: np.ndarray, entry: np.ndarray) -> None:
        self.q, self.r = decibels(query), decibels(entry)
        self.q_floor, self.r_floor = noise_floor(self.q), noise_floor(self.r)
        self.query_noise_rise_db = float(np.mean(self.q_floor - self.r_floor))
        self.entry_noise_added = -self.query_noise_rise_db >= NOISE_ADDED_DB

    def above_band(self, query_wide: np.ndarray, entry_wide: np.ndarray, offset: int) -> tuple[MissingSpeech, int]:
        """`_both_ways` on the two wide spectra, gated (`wide`), each side's frames counted only
        where its telephone band is noise alone, and how many wide bands the query's line
        carries; nothing (and -1) for wide spectra not on the detail spectra's frames (a damaged
        value) or too short."""
        q, r = decibels(query_wide), decibels(entry_wide)
        if len(q) != len(self.q) or len(r) != len(self.r) or len(q) < STRETCH_FRAMES or len(r) < STRETCH_FRAMES:
            return NOTHING_MISSING, -1
        q_floor, r_floor = noise_floor(q), noise_floor(r)
        found = _both_ways(q, r, q_floor, r_floor, offset, self.entry_noise_added, wide=True,
                           q_quiet=_noise_alone(self.q, self.q_floor), r_quiet=_noise_alone(self.r, self.r_floor))
        q_index, r_index = overlap(q, r, offset)
        if q_index.size < STRETCH_FRAMES:
            return found, -1
        held, sent, floor = q[q_index], r[r_index], np.maximum(q_floor, r_floor)
        return found, int(carried_bands(held, sent, floor, _line_response(held, sent, floor)).sum())


def _both_ways(q: np.ndarray, r: np.ndarray, q_floor: np.ndarray, r_floor: np.ndarray, offset: int,
               entry_noise_added: bool, wide: bool = False, q_quiet: np.ndarray | None = None,
               r_quiet: np.ndarray | None = None) -> MissingSpeech:
    """The worse of the speech the query lacks (`_lacked`) and, where noise was added to the
    entry, the speech the entry lacks, as seen from the query."""
    in_entry = _lacked(q, r, q_floor, r_floor, offset, wide, q_quiet)
    if not entry_noise_added:
        return in_entry
    found = _lacked(r, q, r_floor, q_floor, -offset, wide, r_quiet)
    in_query = MissingSpeech(found.missing_db, found.limit_db, found.entry_s, found.query_s, in_query=True,
                             noise_added=True, wide=wide)
    return in_query if in_query.excess > in_entry.excess else in_entry


def _noise_alone(levels: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """Per frame of a dB spectrum, whether no band rises NOISE_ONLY_DB over its noise `floor`."""
    return np.asarray((levels - floor).max(axis=1) < NOISE_ONLY_DB)


def _lacked(holder: np.ndarray, source: np.ndarray, h_floor: np.ndarray, s_floor: np.ndarray,
            offset: int, wide: bool = False, holder_quiet: np.ndarray | None = None) -> MissingSpeech:
    """The worst stretch of `source` (dB spectrum) whose power `holder` lacks where `holder` is
    noise alone, given both recordings' `noise_floor`s; holder frame k lies at source frame
    k + offset. Times as (holder, source) in (query_s, entry_s). With `wide`, gated and limited
    as `missing_wide_speech` says; `holder_quiet`: per holder frame, whether it may count at all."""
    h_index, s_index = overlap(holder, source, offset)
    if h_index.size < STRETCH_FRAMES:
        return NOTHING_MISSING
    held, sent = holder[h_index], source[s_index]
    floor = np.maximum(h_floor, s_floor)
    response = _line_response(held, sent, floor)
    if wide:
        carried = carried_bands(held, sent, floor, response)
        if carried.sum() < MIN_CARRIED_BANDS:
            return NOTHING_MISSING
        held, sent, floor, response = held[:, carried], sent[:, carried], floor[carried], response[carried]
        h_floor, s_floor = h_floor[carried], s_floor[carried]
    expected = sent + np.minimum(response, 0.0)
    floor_level = float(frame_levels(floor[None, :])[0]) + FLOOR_MARGIN_DB
    lacking = np.maximum(frame_levels(expected), floor_level) - np.maximum(frame_levels(held), floor_level)
    noise_only = (held - h_floor).max(axis=1) < NOISE_ONLY_DB
    if wide:
        noise_only &= (held - h_floor).min(axis=1) > -HOLE_DB
    if holder_quiet is not None:
        noise_only &= holder_quiet[h_index]
    lacking = np.where(noise_only, lacking, 0.0)
    sums = np.convolve(lacking, np.ones(STRETCH_FRAMES) / STRETCH_FRAMES, mode="valid")
    worst = int(np.argmax(sums))
    noise_added = float(np.mean(h_floor - s_floor)) >= NOISE_ADDED_DB
    seconds = (int(h_index[worst]) * HOP - WINDOW) / SAMPLE_RATE  # frame k starts WINDOW samples early
    return MissingSpeech(
        missing_db=round(max(0.0, float(sums[worst])), 2),
        limit_db=(MISSING_UNDER_NOISE_DB if noise_added else MISSING_DB) * (WIDE_LIMIT_SCALE if wide else 1.0),
        query_s=round(seconds, 3),
        entry_s=round(seconds + offset * HOP / SAMPLE_RATE, 3),
        noise_added=noise_added,
        wide=wide,
    )


def carried_bands(held: np.ndarray, sent: np.ndarray, floor: np.ndarray, response: np.ndarray) -> np.ndarray:
    """Per band of two aligned dB spectra, whether the line from `sent` to `held` carries it: its
    `_line_response` over CARRIED_DB, measured on at least MIN_SPEECH_CELLS speech cells."""
    return (response > CARRIED_DB) & ((sent > floor + SPEECH_OVER_FLOOR_DB).sum(axis=0) >= MIN_SPEECH_CELLS)


def _line_response(held: np.ndarray, sent: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """Per band, the median level of `held` over `sent` where `sent` is speech (each clamped at
    the common `floor`): what the line between them passes of that band (0 where too few
    cells say)."""
    speech = (sent > floor + SPEECH_OVER_FLOOR_DB).T  # bands by frames: each band's cells contiguous
    difference = (np.maximum(held, floor) - sent).T.copy()
    response = np.zeros(sent.shape[1], dtype=np.float64)
    for band in np.flatnonzero(speech.sum(axis=1) >= MIN_SPEECH_CELLS):  # a median per band: numpy's
        response[band] = median(difference[band][speech[band]])  # nanmedian is ten times slower
    return response
