"""The `earmark tune` report: one self-contained HTML page (plots embedded as PNG data, no
external resources), so it can be mailed, archived or opened offline."""

from __future__ import annotations

import base64
import html
import io

import numpy as np

from earmark.service.ops.tune import Pair, TuneResult


def render_report(result: TuneResult) -> str:
    """The whole page."""
    summary = result.summary()
    rows = "".join(
        f"<tr><td>{html.escape(kind)}</td><td>{'copy' if figures['positive'] else 'must not match'}</td>"
        f"<td>{figures['n']}</td><td>{figures['at_or_above_threshold']}</td></tr>"
        for kind, figures in summary["by_kind"].items()
    )
    thresholds = "".join(f"<tr><td><code>{name}</code></td><td>{value}</td></tr>" for name, value in summary["thresholds"].items())
    hardest = sorted(result.negatives, key=lambda pair: -pair.score)[:10]
    weakest = sorted(result.positives, key=lambda pair: pair.score)[:10]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>earmark tune report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: .3em .6em; text-align: left; }}
th {{ background: #f3f3f3; }} .big {{ font-size: 1.4em; }} img {{ max-width: 100%; }} code {{ background: #f6f6f6; }}
</style></head><body>
<h1>earmark tune</h1>
<p class="big">Threshold <b>{result.threshold:.3f}</b>: recall <b>{result.recall():.1%}</b> of {len(result.positives)} copies,
false accepts <b>{result.false_accept_rate():.2%}</b> of {len(result.negatives)} pairs that must not match.</p>
<p>Chosen as the lowest threshold keeping false accepts at or under {result.target_far:g}, plus a margin of
{result.margin:g}: these pairs alone allow {result.allowed_by_pairs:.3f}{_floor_note(result)}. At the default thresholds
(0.74) the recall would be {summary['recall_at_default_thresholds']:.1%}. The hardest negative scored {_hardest(summary)}.</p>
<h2>Scores</h2>
<img alt="score distributions" src="data:image/png;base64,{_histogram_png(result)}">
<img alt="recall against false-accept rate" src="data:image/png;base64,{_curve_png(result)}">
<h2>Thresholds written to thresholds.toml</h2>
<table><tr><th>setting</th><th>value</th></tr>{thresholds}</table>
<h2>By kind of pair</h2>
<table><tr><th>kind</th><th>should</th><th>pairs</th><th>at or above the threshold</th></tr>{rows}</table>
<h2>The hardest negatives</h2>{_pair_table(hardest)}
<h2>The weakest copies</h2>{_pair_table(weakest)}
</body></html>
"""


def _floor_note(result: TuneResult) -> str:
    if result.allowed_by_pairs >= result.floor:
        return ""
    return (f", but the threshold is kept at the built-in {result.floor:.3f}: it was set on minimal pairs (a changed "
            "digit, name or tone) that these recordings do not contain; <code>--allow-lower</code> goes under it")


def _hardest(summary: dict) -> str:
    hardest = summary["hardest_negative"]
    if hardest is None:
        return "nothing (there were no negatives)"
    return f"{hardest['score']:.3f} ({html.escape(hardest['query'])} against {html.escape(hardest['original'])}, {hardest['kind']})"


def _pair_table(pairs: list[Pair]) -> str:
    body = "".join(f"<tr><td>{html.escape(pair.query)}</td><td>{html.escape(pair.original)}</td><td>{pair.score:.3f}</td>"
                   f"<td>{html.escape(pair.reason)}</td></tr>" for pair in pairs)
    return f"<table><tr><th>query</th><th>original</th><th>score</th><th>verdict</th></tr>{body}</table>"


def new_figure(size: tuple[float, float] = (8, 3.6)):
    """(pyplot, (figure, axes)) for one plot of a report, drawn off-screen (Agg); the audit
    report (service/ops/audit_report.py) draws with it too."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.subplots(figsize=size, dpi=100)


def png_base64(plt, figure) -> str:
    """The figure as base64 PNG data for an <img src="data:image/png;base64,..."> (and closed)."""
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _histogram_png(result: TuneResult) -> str:
    plt, (figure, axes) = new_figure()
    bins = np.linspace(0.0, 1.0, 51)
    axes.hist([pair.score for pair in result.negatives], bins=bins, alpha=0.7, label="must not match", color="#c0392b")
    axes.hist([pair.score for pair in result.positives], bins=bins, alpha=0.7, label="copies", color="#2874a6")
    axes.axvline(result.threshold, color="black", linestyle="--", label=f"threshold {result.threshold:.3f}")
    axes.set_xlabel("score (the worst of the checks)")
    axes.set_ylabel("pairs")
    axes.legend()
    return png_base64(plt, figure)


def _curve_png(result: TuneResult) -> str:
    plt, (figure, axes) = new_figure()
    candidates = sorted({0.0, 1.0, *(pair.score for pair in result.pairs)})
    far = [result.false_accept_rate(threshold) for threshold in candidates]
    recall = [result.recall(threshold) for threshold in candidates]
    axes.plot(far, recall, marker=".", color="#2874a6")
    axes.scatter([result.false_accept_rate()], [result.recall()], color="black", zorder=3, label="chosen")
    axes.set_xlabel("false-accept rate")
    axes.set_ylabel("recall")
    axes.set_xlim(-0.02, 1.02)
    axes.set_ylim(-0.02, 1.02)
    axes.legend()
    return png_base64(plt, figure)
