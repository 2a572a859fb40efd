"""`earmark batch`: recognize many files through the cache, resumably, one JSON line a file.

A batch user re-running a month of recordings wants three things: that it finishes even when
some files are bad (an unreadable file gets a line with its error and the run goes on), that
an interrupted run picks up where it stopped (files already in the output are skipped), and a
running account of what the cache is saving (files, audio hours and hit rate on the progress
bar; files per tier and engine time spent and saved at the end).
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from click._termui_impl import ProgressBar

HIT_TIERS = ("exact", "canonical", "fuzzy", "negative")

# (path) -> (HTTP status, JSON body or None); raises OSError for a file it cannot read.
Poster = Callable[[Path], tuple[int, dict | None]]


def list_inputs(source: Path) -> list[Path]:
    """The files to recognize: every regular file under a directory (sorted, hidden ones
    skipped), or the paths listed one per line in a text file (blank lines and # comments
    skipped; relative paths are relative to the list)."""
    if source.is_dir():
        return sorted(path for path in source.rglob("*")
                      if path.is_file() and not any(part.startswith(".") for part in path.relative_to(source).parts))
    paths = []
    for line in source.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            path = Path(line)
            paths.append(path if path.is_absolute() else source.parent / path)
    return paths


def done_paths(out: Path, *, retry_failed: bool) -> set[str]:
    """Paths the output already answers: skipped on a resumed run (failed ones too, unless
    `retry_failed`). The last line for a path wins."""
    if not out.exists():
        return set()
    latest: dict[str, dict] = {}
    for line in out.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short when the last run was killed
        if isinstance(record, dict) and "path" in record:
            latest[record["path"]] = record
    return {path for path, record in latest.items() if not (retry_failed and record.get("error"))}


@dataclass
class Tally:
    """What the run did so far: for the progress bar and the final summary."""

    tiers: Counter = field(default_factory=Counter)
    errors: int = 0
    audio_s: float = 0.0
    engine_spent_s: float = 0.0
    engine_saved_s: float = 0.0
    skipped: int = 0

    def add(self, record: dict) -> None:
        """Count one output line."""
        if record.get("error"):
            self.errors += 1
            return
        tier = record.get("tier") or "?"
        self.tiers[tier] += 1
        self.audio_s += record.get("duration_s") or 0.0
        seconds = record.get("engine_seconds") or 0.0
        if tier in ("miss", "partial"):  # a partial answer's engine_seconds: its run on the uncovered audio
            self.engine_spent_s += seconds
            self.engine_saved_s += record.get("engine_seconds_saved") or 0.0
        elif tier in HIT_TIERS:
            self.engine_saved_s += seconds

    @property
    def answered(self) -> int:
        return sum(self.tiers.values())

    def hit_rate(self) -> float:
        """Share of answered files served from cache."""
        return sum(self.tiers[tier] for tier in HIT_TIERS) / self.answered if self.answered else 0.0

    def progress(self) -> str:
        """The progress bar's running figures."""
        return f"{_hours(self.audio_s)} of audio, hit rate {self.hit_rate():.0%}, {self.errors} errors"

    def summary(self, wall_s: float) -> str:
        """The final account, a few lines."""
        tiers = ", ".join(f"{tier} {count}" for tier, count in sorted(self.tiers.items())) or "none"
        return (f"{self.answered + self.errors} files in {wall_s:.1f} s ({self.skipped} already done, skipped): {tiers}; "
                f"{self.errors} errors\naudio {_hours(self.audio_s)}; hit rate {self.hit_rate():.1%}; "
                f"engine time spent {self.engine_spent_s:.1f} s, saved {self.engine_saved_s:.1f} s")


def record_for(path: Path, post: Poster) -> dict:
    """One output line: the answer for `path`, or what went wrong with it."""
    base = {"path": str(path)}
    try:
        status, body = post(path)
    except OSError as exc:
        return {**base, "error": f"cannot read the file: {exc.strerror or exc}"}
    if status != 200 or body is None:
        return {**base, "error": (body or {}).get("msg") or f"HTTP {status}", "status": status}
    cache, result = body.get("cache") or {}, body.get("result") or {}
    return {**base, "tier": cache.get("tier"), "entry": cache.get("entry"), "score": cache.get("score"),
            "text": result.get("text", ""), "duration_s": result.get("duration_s"),
            "engine_seconds": cache.get("engine_seconds"),
            **({"engine_seconds_saved": cache.get("engine_seconds_saved")} if cache.get("tier") == "partial" else {})}


def run_batch(paths: Iterable[Path], out: Path, post: Poster, *, concurrency: int, retry_failed: bool) -> Tally:
    """Recognize `paths` with `concurrency` requests in flight, appending one line a file to
    `out` as each finishes (so a killed run loses at most the files in flight)."""
    tally = Tally()
    done = done_paths(out, retry_failed=retry_failed)
    todo = [path for path in paths if str(path) not in done]
    tally.skipped = len(done & {str(path) for path in paths})
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()
    bar: ProgressBar[int]
    with out.open("a", encoding="utf-8") as sink, \
            click.progressbar(length=len(todo), label="recognizing", show_pos=True,
                              item_show_func=lambda _: tally.progress()) as bar, \
            ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = [pool.submit(record_for, path, post) for path in todo]
        for future in as_completed(futures):
            record = future.result()
            with lock:
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")
                sink.flush()
                tally.add(record)
            # the current item is only for item_show_func, which shows the tally, not the record
            bar.update(1)
    return tally


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"
