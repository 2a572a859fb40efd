"""The `earmark audit` report: report.html (one self-contained page, plots embedded as PNG data,
no external resources), audit.json (what `GET /audit` serves) and one CSV file per table, all
from the data of service/ops/audit.py."""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

import numpy as np

from earmark.service.ops.tune_report import new_figure, png_base64

TIER_COLOURS = {"exact": "#1e8449", "canonical": "#2874a6", "fuzzy": "#d68910", "negative": "#7f8c8d", "partial": "#5dade2",
                "miss": "#c0392b", "bypass": "#6c3483"}
CURVES_DRAWN = 12  # near-threshold hits drawn one plot each; the rest are in the table and CSV
ROWS_SHOWN = 50  # rows of a long table on the page; every row is in audit.json and the CSV
CLUSTERS_SHOWN = 20


def write_audit(audit: dict, out: Path) -> list[Path]:
    """Write report.html, audit.json and the CSV tables into `out`; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "audit.json", out / "report.html"]
    written[0].write_text(json.dumps(audit, indent=2, ensure_ascii=False))
    written[1].write_text(render_report(audit), encoding="utf-8")
    for name, rows in csv_tables(audit).items():
        path = out / f"{name}.csv"
        _write_csv(path, rows)
        written.append(path)
    return written


def csv_tables(audit: dict) -> dict[str, list[dict]]:
    """The audit's tables as rows of flat values, one CSV file each."""
    near = audit["near_threshold"]
    return {
        "entries_by_profile": audit["entries_by_profile"],
        "tiers_over_time": audit["tiers_over_time"]["rows"],
        "engine_seconds": audit["engine_seconds"],
        "most_reused": audit["most_reused"],
        "near_threshold": [{k: v for k, v in row.items() if k != "curve"} for row in near],
        "near_threshold_curves": [{"entry": row["entry"], "query_digest": row["query_digest"], "at_s": at_s,
                                   "score": score} for row in near for at_s, score in row["curve"]],
        "near_duplicates": [{"cluster": number, "profile": cluster["profile"], **member}
                            for number, cluster in enumerate(audit["near_duplicates"], 1)
                            for member in cluster["entries"]],
        "near_duplicate_pairs": [{"cluster": number, **pair} for number, cluster in enumerate(audit["near_duplicates"], 1)
                                 for pair in cluster["pairs"]],
        "score_distribution": audit["score_distribution"]["rows"],
        "hits": audit["hits"],
    }


def _write_csv(path: Path, rows: list[dict]) -> None:
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns or ["(no rows)"])
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _cell(value) for key, value in row.items()})


def _cell(value):
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value


# ------------------------------------------------------------------------------------------
# The page


def render_report(audit: dict) -> str:
    """The whole page."""
    summary, limits = audit["summary"], audit["thresholds"]
    saved_h = summary["engine_seconds_saved"] / 3600
    hit_rate = "no answers recorded" if summary["hit_rate"] is None else f"{summary['hit_rate']:.1%}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>earmark dedup audit</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 64em; color: #222; line-height: 1.4; }}
table {{ border-collapse: collapse; margin: .8em 0 1.4em; font-size: .92em; }}
td, th {{ border: 1px solid #ccc; padding: .25em .55em; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; }} td.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
.big {{ font-size: 1.25em; }} img {{ max-width: 100%; }} code {{ background: #f6f6f6; font-size: .9em; }}
.muted {{ color: #666; }} .cards {{ display: flex; flex-wrap: wrap; gap: .8em; margin: 1em 0; }}
.card {{ border: 1px solid #ddd; border-radius: 6px; padding: .6em 1em; min-width: 9em; }}
.card b {{ display: block; font-size: 1.5em; }} h2 {{ border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.6em; }}
</style></head><body>
<h1>earmark dedup audit</h1>
<p class="muted">Generated {html.escape(audit['generated_at'])} from {html.escape(audit['source'] or 'the store')}.
Events from {html.escape(summary['first_event'] or '-')} to {html.escape(summary['last_event'] or '-')}
({summary['events']} events; the log keeps the newest {summary['events_cap']:,}).</p>
<div class="cards">
<div class="card"><b>{summary['answers']}</b>answers</div>
<div class="card"><b>{hit_rate}</b>served from cache</div>
<div class="card"><b>{_seconds(summary['engine_seconds_saved'])}</b>engine time saved</div>
<div class="card"><b>{_seconds(summary['engine_seconds_spent'])}</b>engine time spent</div>
<div class="card"><b>{summary['entries']}</b>entries stored</div>
<div class="card"><b>{summary['near_threshold_hits']}</b>fuzzy hits to review</div>
<div class="card"><b>{summary['near_duplicate_clusters']}</b>near-duplicate clusters</div>
</div>
<p class="big">{_headline(audit, saved_h)}</p>

<h2>1. Entries by profile</h2>
{_table(audit['entries_by_profile'], [('profile', 'profile'), ('namespace', 'namespace'), ('engine', 'engine'),
        ('entries', 'entries'), ('negative', 'no speech'), ('fingerprinted', 'fingerprinted'),
        ('audio_s', 'audio'), ('engine_s', 'engine time')], empty='The store holds no entries.')}

<h2>2. Answers per tier over time</h2>
{_over_time_section(audit)}

<h2>3. Engine seconds saved</h2>
{_table(audit['engine_seconds'], [('endpoint', 'endpoint'), ('tier', 'tier'), ('answers', 'answers'),
        ('audio_s', 'audio'), ('engine_s_saved', 'engine time saved'), ('engine_s_spent', 'engine time spent')],
        empty='No answers were recorded.')}

<h2>4. The most reused entries</h2>
{_table(audit['most_reused'], [('entry', 'entry'), ('hits', 'hits'), ('exact_hits', 'exact'),
        ('canonical_hits', 'canonical'), ('fuzzy_hits', 'fuzzy'), ('engine_s_saved', 'engine time saved'),
        ('last_hit', 'last hit'), ('text', 'transcript')], empty='No entry was reused yet.')}

<h2>5. Fuzzy hits near the threshold, for review</h2>
{_near_section(audit)}

<h2>6. Near-duplicate entries (missed reuse)</h2>
{_duplicates_section(audit)}

<h2>7. Live score distribution</h2>
{_distribution_section(audit)}

<h2>Thresholds in force</h2>
<p>A fuzzy candidate is accepted when its score (the worst of its checks) reaches <b>{limits['accept']:.3f}</b>;
hits under {min(1.0, limits['accept'] + limits['review_margin']):.3f} (review margin {limits['review_margin']:g}) are listed
in section 5. These are the thresholds of the process that built this audit; <code>earmark tune</code> chooses them.</p>
{_table([{'setting': k, 'value': v} for k, v in limits.items() if k not in ('accept', 'review_margin')],
        [('setting', 'setting'), ('value', 'value')])}
<p class="muted">The same tables are in audit.json and in one CSV file each beside this page.</p>
</body></html>
"""


def _headline(audit: dict, saved_h: float) -> str:
    summary = audit["summary"]
    if not summary["answers"]:
        return "No recognition has been answered since the event log began: there is nothing to audit yet."
    missed = sum(cluster["engine_s_missed"] for cluster in audit["near_duplicates"])
    parts = [f"{summary['hits']} of {summary['answers']} answers came from the cache, saving "
             f"{_seconds(summary['engine_seconds_saved'])} of engine time."]
    parts.append(f"{_count(summary['near_threshold_hits'], 'fuzzy hit')} scored within "
                 f"{audit['thresholds']['review_margin']:g} of the threshold and deserve a listen."
                 if summary["near_threshold_hits"]
                 else "No fuzzy hit came near the threshold.")
    parts.append(f"{summary['entries_in_near_duplicate_clusters']} entries in "
                 f"{_count(summary['near_duplicate_clusters'], 'cluster')} are copies of each other stored separately ({_seconds(missed)} of engine time the "
                 "cache could have saved)." if summary["near_duplicate_clusters"]
                 else "No two stored entries are copies of each other.")
    return " ".join(parts)


def _over_time_section(audit: dict) -> str:
    over_time = audit["tiers_over_time"]
    if not over_time["rows"]:
        return "<p>No answers were recorded.</p>"
    columns = [("start", f"from ({_seconds(over_time['bucket_s'])} buckets)")] + [
        (tier, tier) for tier in over_time["tiers"]] + [("engine_s_saved", "saved"), ("engine_s_spent", "spent")]
    return (f'<img alt="answers per tier over time" src="data:image/png;base64,{_tiers_png(over_time)}">'
            + _table(over_time["rows"], columns))


def _near_section(audit: dict) -> str:
    rows = audit["near_threshold"]
    accept = audit["thresholds"]["accept"]
    if not rows:
        return (f"<p>No fuzzy hit scored under {min(1.0, accept + audit['thresholds']['review_margin']):.3f}: every copy served "
                "was well clear of the threshold.</p>")
    images = "".join(
        f'<h3>{html.escape(row["entry"])} <span class="muted">score {row["score"]:.3f}, {_count(row["hits"], "hit")}</span></h3>'
        f'<p>{html.escape(row.get("text") or "")}</p>'
        + (f'<img alt="stretch scores" src="data:image/png;base64,{_curve_png(row, accept)}">' if row["curve"]
           else f'<p class="muted">{html.escape(row["note"])}</p>')
        for row in rows[:CURVES_DRAWN])
    more = f"<p>{len(rows) - CURVES_DRAWN} more in the table and near_threshold_curves.csv.</p>" if len(rows) > CURVES_DRAWN else ""
    table = _table(rows[:ROWS_SHOWN], [("entry", "entry"), ("query_digest", "query bytes (digest)"), ("score", "score"),
                          ("hits", "hits"), ("worst_at_s", "worst stretch at (s)"),
                          ("worst_stretch_score", "worst stretch"), ("last_hit", "last hit"), ("note", "note")])
    cut = _cut_note(len(rows), ROWS_SHOWN, "near_threshold.csv")
    return (f"<p>Each hit below was served, but with less room than the review margin. The curve is the score of each "
            f"~1 s stretch of the query against the entry (redrawn from the stored fingerprints with the service's "
            f"matcher); the lowest point is the second to listen to.</p>{table}{cut}{images}{more}")


def _duplicates_section(audit: dict) -> str:
    clusters = audit["near_duplicates"]
    if not clusters:
        return ("<p>No two entries of a profile verify as copies of each other: no reuse was missed among the stored "
                "entries.</p>")
    blocks = []
    for number, cluster in enumerate(clusters[:CLUSTERS_SHOWN], 1):
        scores = ", ".join(f"{pair['score']:.3f}" for pair in cluster["pairs"])
        blocks.append(f"<h3>Cluster {number}: {len(cluster['entries'])} entries, {_seconds(cluster['engine_s_missed'])} "
                      f"of engine time spent again <span class='muted'>(pair scores {scores})</span></h3>"
                      + _table(cluster["entries"], [("entry", "entry"), ("created_at", "stored"), ("duration_s", "duration"),
                                                    ("engine_s", "engine time"), ("text", "transcript")]))
    return ("<p>Entries stored separately although the fuzzy tier's verification accepts them as copies of one "
            "another: the later ones were engine runs the cache missed (stored before the first was indexed, "
            "or under other thresholds).</p>" + "".join(blocks)
            + _cut_note(len(clusters), CLUSTERS_SHOWN, "near_duplicates.csv", "clusters"))


def _distribution_section(audit: dict) -> str:
    dist = audit["score_distribution"]
    if not dist["hits"] and not dist["misses"]:
        return "<p>No lookup reached the fuzzy tier's verification yet.</p>"
    reasons = _table([{"reason": k or "(none)", "misses": v} for k, v in dist["miss_reasons"].items()],
                     [("reason", "missed because (best candidate refused, or none examined)"), ("misses", "misses")])
    lowest = "-" if dist["lowest_hit"] is None else f"{dist['lowest_hit']:.3f}"
    highest = "-" if dist["highest_miss"] is None else f"{dist['highest_miss']:.3f}"
    return (f"<p>The best fuzzy candidate's score of every answer the fuzzy tier decided: {dist['hits']} hits (lowest "
            f"{lowest}) and {dist['misses']} misses (highest {highest}). No labels are needed: misses piling up just "
            f"under the threshold, or hits just over it, are what to look at.</p>"
            f'<img alt="score distribution" src="data:image/png;base64,{_distribution_png(dist, audit["thresholds"]["accept"])}">'
            + reasons)


def _cut_note(total: int, shown: int, csv_name: str, what: str = "rows") -> str:
    if total <= shown:
        return ""
    return f"<p class='muted'>The first {shown} of {total} {what}; all of them are in {csv_name} and audit.json.</p>"


def _table(rows: list[dict], columns: list[tuple[str, str]], *, empty: str = "None.") -> str:
    if not rows:
        return f"<p>{html.escape(empty)}</p>"
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in columns)
    body = "".join("<tr>" + "".join(_td(key, row.get(key)) for key, _ in columns) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _td(key: str, value) -> str:
    if value is None:
        return "<td class='muted'>-</td>"
    if isinstance(value, bool):
        return f"<td>{'yes' if value else 'no'}</td>"
    if isinstance(value, (int, float)):
        if key.endswith("_s") or key.startswith("engine_s"):
            return f"<td class='n'>{_seconds(float(value))}</td>"
        return f"<td class='n'>{value:.4g}</td>" if isinstance(value, float) else f"<td class='n'>{value}</td>"
    text = str(value)
    if key in ("entry", "profile", "query_digest", "a", "b") and len(text) > 16:
        return f"<td><code title='{html.escape(text)}'>{html.escape(text[:12])}…</code></td>"
    return f"<td>{html.escape(text)}</td>"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _seconds(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


# ------------------------------------------------------------------------------------------
# Plots


def _tiers_png(over_time: dict) -> str:
    plt, (figure, axes) = new_figure((9, 3.4))
    rows = over_time["rows"]
    positions = np.arange(len(rows))
    bottom = np.zeros(len(rows))
    for tier in over_time["tiers"]:
        counts = np.array([row[tier] for row in rows], dtype=float)
        axes.bar(positions, counts, bottom=bottom, label=tier, color=TIER_COLOURS.get(tier, "#999"), width=0.8)
        bottom += counts
    step = max(1, len(rows) // 8)
    label = slice(11, 19) if over_time["bucket_s"] < 60 else slice(5, 16)  # seconds only when buckets are
    axes.set_xticks(positions[::step], [row["start"][label] for row in rows][::step], rotation=20, fontsize=8)
    axes.set_ylabel("answers")
    axes.yaxis.get_major_locator().set_params(integer=True)
    saved = axes.twinx()
    saved.plot(positions, np.cumsum([row["engine_s_saved"] for row in rows]), color="black", marker=".",
               label="engine s saved (cumulative)")
    saved.set_ylabel("engine seconds saved")
    saved.set_ylim(bottom=0)
    handles, labels = axes.get_legend_handles_labels()
    more_handles, more_labels = saved.get_legend_handles_labels()
    axes.legend(handles + more_handles, labels + more_labels, fontsize=8, loc="upper center",
                bbox_to_anchor=(0.5, -0.2), ncol=len(handles) + 1, frameon=False)
    return png_base64(plt, figure)


def _curve_png(row: dict, accept: float) -> str:
    plt, (figure, axes) = new_figure((8, 2.4))
    at_s = [point[0] for point in row["curve"]]
    scores = [point[1] for point in row["curve"]]
    axes.plot(at_s, scores, marker="o", color="#2874a6", label="~1 s stretch score")
    axes.axhline(accept, color="#c0392b", linestyle="--", label=f"threshold {accept:.3f}")
    axes.scatter([row["worst_at_s"]], [row["worst_stretch_score"]], color="#c0392b", zorder=3, s=60,
                 label=f"worst: {row['worst_stretch_score']:.3f} at {row['worst_at_s']:.2f} s")
    axes.set_xlabel("query time (s)")
    axes.set_ylabel("score")
    axes.set_ylim(min(0.5, min(scores) - 0.05), 1.02)
    axes.legend(fontsize=8, loc="lower left")
    return png_base64(plt, figure)


def _distribution_png(dist: dict, accept: float) -> str:
    plt, (figure, axes) = new_figure((8, 3.2))
    bins = np.linspace(0.0, 1.0, 51)
    axes.hist(dist["miss_scores"], bins=bins, alpha=0.75, color="#c0392b", label=f"misses ({dist['misses']})")
    axes.hist(dist["hit_scores"], bins=bins, alpha=0.75, color="#2874a6", label=f"fuzzy hits ({dist['hits']})")
    axes.axvline(accept, color="black", linestyle="--", label=f"threshold {accept:.3f}")
    axes.set_xlabel("best candidate's score")
    axes.set_ylabel("answers")
    axes.yaxis.get_major_locator().set_params(integer=True)
    axes.legend(fontsize=8)
    return png_base64(plt, figure)
