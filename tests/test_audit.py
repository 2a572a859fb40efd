"""`earmark audit` and `GET /audit` on a real store after real traffic: hits of every tier, a
fuzzy hit near the threshold, a copy stored twice; the report lists what happened."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from earmark.fingerprint.canonical import bytes_digest
from earmark.service.api.app import create_app
from earmark.service.api.audit_params import audit_options
from earmark.service.api.errors import ApiError
from earmark.service.ops.audit import AuditOptions
from tests.audio_tools import encode, fixture_bytes, read_pcm, silence_wav
from tests.conftest import live_server
from tests.test_cli import run
from tests.waiting import wait_for
from tests.http_helpers import recognize

ADMIN = "s3cret-admin"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def audio() -> dict[str, bytes]:
    recorded, weather = fixture_bytes("recorded.wav"), fixture_bytes("weather.wav")
    samples, rate = read_pcm(recorded)
    weather_samples, weather_rate = read_pcm(weather)
    return {
        "recorded": recorded,
        "flac": encode(samples, rate, fmt="flac", codec="flac"),
        "mp3": encode(samples, rate, fmt="mp3", codec="libmp3lame", bitrate=48000),
        "weather": weather,
        "weather_mp3": encode(weather_samples, weather_rate, fmt="mp3", codec="libmp3lame", bitrate=48000),
        "silence": silence_wav(2.0),
    }


@pytest.fixture
def traffic(settings, engine, audio, tmp_path):
    """A service with an admin token and a wide review margin (so the MP3 copy's fuzzy hit is
    "near the threshold"), after traffic of every tier; yields (settings, what happened)."""
    settings = replace(settings, admin_token=ADMIN, review_margin=0.3)
    with TestClient(create_app(settings, engine=engine)) as client:
        happened = {"original": recognize(client, audio["recorded"])["cache"]}
        wait_for(lambda: client.get("/health").json()["index_size"] >= 1)
        happened["weather_lookup"] = recognize(client, audio["weather"], "/lookup")["cache"]  # a fuzzy miss: candidates refused
        happened["exact"] = recognize(client, audio["recorded"])["cache"]
        happened["canonical"] = recognize(client, audio["flac"])["cache"]
        happened["fuzzy"] = recognize(client, audio["mp3"])["cache"]
        happened["fuzzy_again"] = recognize(client, audio["mp3"])["cache"]  # remembered verdict: fuzzy again
        happened["weather"] = recognize(client, audio["weather"])["cache"]
        # a copy stored separately: no-cache makes the engine run and store the MP3 as its own entry
        happened["weather_copy"] = recognize(client, audio["weather_mp3"], headers={"Cache-Control": "no-cache"})["cache"]
        happened["silence"] = recognize(client, audio["silence"])["cache"]
        happened["negative"] = recognize(client, audio["silence"])["cache"]
        wait_for(lambda: client.get("/health").json()["index_size"] >= 3)
        yield settings, client, happened


def test_the_traffic_is_what_the_audit_expects(traffic):
    _, _, happened = traffic
    tiers = {name: answer["tier"] for name, answer in happened.items()}
    assert tiers == {"original": "miss", "weather_lookup": "miss", "exact": "exact", "canonical": "canonical",
                     "fuzzy": "fuzzy", "fuzzy_again": "fuzzy", "weather": "miss", "weather_copy": "miss",
                     "silence": "miss", "negative": "negative"}
    assert happened["weather_copy"]["entry"] != happened["weather"]["entry"]


def check_audit(audit: dict, happened: dict, audio: dict, settings) -> None:
    """What every form of the audit (JSON, HTTP, CSV) must say about `traffic`."""
    original = happened["original"]["entry"]
    spent = happened["original"]["engine_seconds"]
    by_tier = {row["tier"]: row for row in audit["engine_seconds"] if row["endpoint"] == "recognize"}
    assert {tier: row["answers"] for tier, row in by_tier.items()} == {
        "exact": 1, "canonical": 1, "fuzzy": 2, "negative": 1, "miss": 4}
    assert by_tier["exact"]["engine_s_saved"] == pytest.approx(spent, abs=2e-3)
    assert by_tier["fuzzy"]["engine_s_saved"] == pytest.approx(2 * spent, abs=4e-3)
    assert by_tier["miss"]["engine_s_saved"] == 0 and by_tier["miss"]["engine_s_spent"] > 0
    assert audit["summary"]["answers"] == 9 and audit["summary"]["lookups"] >= 1 and audit["summary"]["hits"] == 5
    assert audit["summary"]["engine_seconds_saved"] == pytest.approx(4 * spent, abs=0.01)

    top = audit["most_reused"][0]
    assert (top["entry"], top["hits"], top["exact_hits"], top["canonical_hits"], top["fuzzy_hits"]) == (
        original, 4, 1, 1, 2)
    assert top["engine_s_saved"] == pytest.approx(4 * spent, abs=0.01) and top["stored"]

    hits = audit["hits"]
    assert audit["hits_total"] == 5 and len(hits) == 5
    assert [hit["tier"] for hit in hits] == ["negative", "fuzzy", "fuzzy", "canonical", "exact"]  # newest first
    assert {hit["entry"] for hit in hits} == {original, happened["negative"]["entry"]}

    profile_rows = audit["entries_by_profile"]
    assert len(profile_rows) == 1 and profile_rows[0]["entries"] == 4 and profile_rows[0]["negative"] == 1

    near = audit["near_threshold"]
    assert len(near) == 1
    row = near[0]
    assert (row["entry"], row["query_digest"], row["hits"]) == (original, bytes_digest(audio["mp3"]), 2)
    assert row["score"] == pytest.approx(happened["fuzzy"]["score"], abs=1e-4)
    assert len(row["curve"]) >= 2 and row["note"] == ""
    # the curve's lowest stretch is where it is drawn as the worst; the reported score is the
    # worst of all the checks, so never above it
    assert row["worst_stretch_score"] == min(score for _, score in row["curve"])
    assert row["worst_at_s"] in [at_s for at_s, _ in row["curve"]]
    assert row["score"] <= row["worst_stretch_score"] + 1e-3

    clusters = audit["near_duplicates"]
    assert [sorted(member["entry"] for member in cluster["entries"]) for cluster in clusters] == [
        sorted([happened["weather"]["entry"], happened["weather_copy"]["entry"]])]
    assert clusters[0]["pairs"][0]["reason"].startswith("accepted") and clusters[0]["engine_s_missed"] > 0

    dist = audit["score_distribution"]
    assert dist["hits"] >= 1 and dist["misses"] >= 1
    assert dist["highest_miss"] < settings.fuzzy.min_window_score <= dist["lowest_hit"]
    assert sum(r["hits"] for r in dist["rows"]) == dist["hits"] and sum(r["misses"] for r in dist["rows"]) == dist["misses"]


def test_get_audit_needs_the_admin_token_and_lists_the_hits(traffic, audio):
    settings, client, happened = traffic
    refused = client.get("/audit")
    assert refused.status_code == 401 and "admin token" in refused.json()["msg"]
    assert client.get("/audit", headers={"Authorization": "Bearer wrong"}).status_code == 401
    answer = client.get("/audit", headers={"Authorization": f"Bearer {ADMIN}"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["code"], body["msg"]) == (0, "success")
    check_audit(body, happened, audio, settings)
    for bad in ("top=0", "hits=-1", "review_margin=2", "top=many", "colour=red"):
        refused = client.get(f"/audit?{bad}", headers={"Authorization": f"Bearer {ADMIN}"})
        assert refused.status_code == 400 and refused.json()["msg"], bad
    assert "earmark_audits_total 1.0" in client.get("/metrics").text


def test_earmark_audit_writes_report_json_and_csv(traffic, audio, tmp_path):
    settings, _, happened = traffic
    config = tmp_path / "earmark.toml"
    config.write_text(f'key_prefix = "{settings.key_prefix}"\nreview_margin = 0.3\n')
    out = tmp_path / "audit"
    result = run("audit", "--redis-url", settings.redis_url, "--config", str(config), "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "hit rate" in result.stdout and "near-duplicate clusters" in result.stdout
    audit = json.loads((out / "audit.json").read_text())
    check_audit(audit, happened, audio, settings)

    def rows(name: str) -> list[dict]:
        with (out / f"{name}.csv").open(newline="") as handle:
            return list(csv.DictReader(handle))

    assert [(row["tier"], row["entry"]) for row in rows("hits")] == [(hit["tier"], hit["entry"]) for hit in audit["hits"]]
    assert rows("most_reused")[0]["entry"] == happened["original"]["entry"] and rows("most_reused")[0]["hits"] == "4"
    recognize = {row["tier"]: row for row in rows("engine_seconds") if row["endpoint"] == "recognize"}
    assert float(recognize["exact"]["engine_s_saved"]) == pytest.approx(happened["original"]["engine_seconds"], abs=2e-3)
    assert len(rows("near_threshold_curves")) == len(audit["near_threshold"][0]["curve"])
    assert {row["entry"] for row in rows("near_duplicates")} == {happened["weather"]["entry"],
                                                                  happened["weather_copy"]["entry"]}
    assert sum(int(row["answers"]) for row in rows("engine_seconds")) == 9  # served answers; lookups apart

    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 3  # tiers over time, one curve, the distribution
    for external in ("http://", "https://", "<script", "<link"):
        assert external not in page
    assert happened["original"]["entry"][:12] in page and "Cluster 1: 2 entries" in page
    render_to_png(out / "report.html", out / "report.png")


def test_earmark_audit_against_a_running_server(traffic, engine, audio, tmp_path):
    settings, _, happened = traffic
    with live_server(settings, engine) as url:
        refused = run("audit", "--url", url, "--out", str(tmp_path / "no"), cwd=tmp_path)
        assert refused.returncode == 2 and "401" in refused.stderr and "admin token" in refused.stderr
        result = run("audit", "--url", url, "--admin-token", ADMIN, "--out", str(tmp_path / "audit"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    audit = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert "code" not in audit and "msg" not in audit
    check_audit(audit, happened, audio, settings)


def test_an_empty_store_gives_a_finished_empty_report(settings, tmp_path):
    config = tmp_path / "earmark.toml"
    config.write_text(f'key_prefix = "{settings.key_prefix}"\n')
    result = run("audit", "--redis-url", settings.redis_url, "--config", str(config), "--out", str(tmp_path / "a"),
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    audit = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert audit["summary"]["entries"] == 0 and audit["hits"] == [] and audit["near_duplicates"] == []
    page = (tmp_path / "a" / "report.html").read_text()
    assert "nothing to audit yet" in page and "data:image/png" not in page


def test_earmark_audit_of_a_stopped_deployments_data_dir(tmp_path):
    data = tmp_path / "data"
    fixture = str(Path(__file__).parent / "fixtures" / "recorded.wav")
    for _ in range(2):
        assert run("recognize", fixture, "--data-dir", str(data), cwd=tmp_path).returncode == 0
    result = run("audit", "--data-dir", str(data), "--out", str(tmp_path / "a"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    audit = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert (audit["summary"]["entries"], audit["summary"]["answers"], audit["summary"]["hits"]) == (1, 2, 1)
    assert [hit["tier"] for hit in audit["hits"]] == ["exact"]
    assert str(data) in audit["source"]
    assert run("audit", "--url", "http://127.0.0.1:9", "--data-dir", str(data), "--out", str(tmp_path / "b"),
               cwd=tmp_path).returncode == 2


def render_to_png(page: Path, png: Path) -> None:
    """Render the report in headless Chromium and check the picture has content; the PNG is
    also copied to $EARMARK_TEST_ARTIFACTS (when set) for a person to look at."""
    if CHROMIUM is None:
        pytest.skip("no chromium installed: the report was checked as HTML but not rendered (apt install chromium)")
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--screenshot={png}",
         "--window-size=1280,2400", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and png.exists(), result.stderr[-2000:]
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("L"))
    assert pixels.shape[:2] == (2400, 1280)
    assert (pixels < 128).mean() > 0.01  # text and plots, not a blank page
    artifacts = os.environ.get("EARMARK_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(png, Path(artifacts) / png.name)
        shutil.copy(page, Path(artifacts) / page.name)


def test_get_audit_is_open_without_an_admin_token_but_never_to_every_key_holder(settings, engine, tmp_path):
    with TestClient(create_app(settings, engine=engine)) as client:
        answer = client.get("/audit")
        assert answer.status_code == 200 and answer.json()["summary"]["entries"] == 0
    keys = tmp_path / "api-keys"
    keys.write_text("alpha-key-0123456789abcdef alpha\n")
    with TestClient(create_app(replace(settings, api_keys_file=str(keys)), engine=engine)) as client:
        refused = client.get("/audit", headers={"Authorization": "Bearer alpha-key-0123456789abcdef"})
        assert refused.status_code == 403 and "admin token" in refused.json()["msg"]
    with TestClient(create_app(replace(settings, api_keys_file=str(keys), admin_token=ADMIN), engine=engine)) as client:
        assert client.get("/audit", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200


def test_answers_over_time_take_events_out_of_clock_order():
    # Two processes' clocks, or two requests whose XADDs crossed: the stream is not in time order.
    from earmark.service.ops.audit import _over_time
    from earmark.service.pipeline.events import RecognitionEvent

    def event(at: float, tier: str) -> RecognitionEvent:
        return RecognitionEvent(time=at, endpoint="recognize", tier=tier, entry_id="e" * 32, score=None,
                                best_score=None, rejection=None, query_digest="d", duration_s=1.0,
                                engine_s_spent=1.0 if tier == "miss" else 0.0,
                                engine_s_saved=0.0 if tier == "miss" else 1.0, namespace="", profile_id="p")

    table = _over_time([event(1000.0, "miss"), event(2000.0, "exact"), event(999.0, "fuzzy")])
    assert sum(row.get("miss", 0) + row.get("exact", 0) + row.get("fuzzy", 0) for row in table["rows"]) == 3


def test_an_audit_is_reused_for_a_while_and_computed_again_after_a_delete(traffic):
    _, client, happened = traffic
    auth = {"Authorization": f"Bearer {ADMIN}"}
    first = client.get("/audit", headers=auth).json()
    again = client.get("/audit", headers=auth).json()
    assert first["age_s"] == 0.0 and again["generated_at"] == first["generated_at"]
    assert again["hits"] == first["hits"]
    for _ in range(2):  # the console draws its charts into its own copy, never into the kept report
        assert client.get("/console/audit", headers=auth).status_code == 200
    assert client.get("/audit", headers=auth).json()["near_threshold"] == first["near_threshold"]
    copy = happened["weather_copy"]["entry"]
    assert copy in {member["entry"] for cluster in first["near_duplicates"] for member in cluster["entries"]}
    assert client.delete(f"/entries/{copy}", headers=auth).status_code == 200
    after = client.get("/audit", headers=auth).json()
    assert after["age_s"] == 0.0
    assert copy not in {member["entry"] for cluster in after["near_duplicates"] for member in cluster["entries"]}
    metrics = client.get("/metrics").text
    assert 'earmark_audit_reports_total{result="computed"} 3.0' in metrics  # GET /audit twice, the console once
    assert 'earmark_audit_reports_total{result="kept"} 3.0' in metrics


def test_viewers_asking_at_once_share_one_audit_and_a_failure_is_not_kept():
    import asyncio

    from prometheus_client import CollectorRegistry, Counter

    from earmark.service.ops.audit_cache import AuditCache

    results = Counter("reports", "", ["result"], registry=CollectorRegistry())
    cache, runs = AuditCache(30.0, results), []

    async def compute() -> dict:
        runs.append(1)
        await asyncio.sleep(0.05)
        return {"hits": [1, 2]}

    async def failing() -> dict:
        raise ConnectionError("store down")

    async def scenario() -> None:
        reports = await asyncio.gather(*(cache.get("k", compute) for _ in range(5)))
        assert len(runs) == 1 and all(report["hits"] == [1, 2] for report in reports)
        reports[0]["hits"].append(3)  # a caller's copy is its own
        assert (await cache.get("k", compute))["hits"] == [1, 2]
        for _ in range(2):
            with pytest.raises(ConnectionError):
                await cache.get("down", failing)
        cache.forget()
        await cache.get("k", compute)
        assert len(runs) == 2

    asyncio.run(scenario())
    assert [results.labels(result=r)._value.get() for r in ("computed", "shared", "kept")] == [2, 4, 1]


def test_deleting_an_entry_deletes_the_query_prints_kept_for_its_hits(traffic):
    _, client, happened = traffic
    store = client.app.state.services.store
    pattern = f"{store.keys.prefix}qprint:*"
    assert client.portal.call(store.client.keys, pattern)  # the MP3 copy's near-threshold hit kept one
    deleted = client.delete(f"/entries/{happened['original']['entry']}", headers={"Authorization": f"Bearer {ADMIN}"})
    assert deleted.status_code == 200
    assert client.portal.call(store.client.keys, pattern) == []


def test_audit_query_parameters_default_and_are_refused_with_a_clear_400():
    """api/audit_params.py: each parameter optional (the service's review margin by default), and
    an unknown, malformed or out-of-range one is a 400 saying what is allowed."""
    assert audit_options({}, 0.07) == AuditOptions(review_margin=0.07)
    assert audit_options({"top": "1000", "hits": "0", "review_margin": "1"}, 0.07) == AuditOptions(1.0, 1000, 0)
    for params, says in [({"tops": "5"}, "unknown parameter(s) tops; known: review_margin, top, hits"),
                         ({"top": "0"}, "top must be between 1 and 1000"),
                         ({"hits": "100001"}, "hits must be between 0 and 100000"),
                         ({"hits": "many"}, "hits must be a whole number, not 'many'"),
                         ({"review_margin": "1.5"}, "review_margin must be between 0 and 1"),
                         ({"review_margin": "wide"}, "review_margin must be a number, not 'wide'")]:
        with pytest.raises(ApiError) as refused:
            audit_options(params, 0.05)
        assert (refused.value.status, refused.value.msg) == (400, says)
