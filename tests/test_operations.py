"""The operations view: the store's INFO figures on /metrics as counters and gauges, breaker
trips, and the shipped Grafana dashboard and Prometheus scrape example, checked against what a
real running service (uvicorn, real store, real engine) exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.audio_tools import encode, fixture_bytes, read_pcm
from tests.conftest import live_server

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
METRIC_NAME = re.compile(r"\b(earmark_[a-z0-9_]+)\b")
# A labelled counter has no sample until its first event; this one needs the store to refuse a
# command (OOM), which tests/test_store_outage.py provokes. Here it must at least be declared.
DECLARED_ONLY = {"earmark_store_refused_total": ("earmark_store_refused", "counter")}


def exported_samples(text: str) -> dict[str, list]:
    """Sample name -> its samples, as Prometheus would ingest them (suffixes included)."""
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel of the shipped dashboard."""
    dashboard = json.loads((DEPLOY / "grafana" / "earmark.json").read_text())
    queries = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            queries.append((panel["title"], target["expr"]))
    return queries


@pytest.fixture(scope="module")
def scraped(tmp_path_factory, store_url, engine) -> str:
    """/metrics of a live service after a miss, an exact hit, a fuzzy hit, a fuzzy rejection and a lookup."""
    import uuid

    from earmark.service.config import Settings

    settings = Settings(redis_url=store_url, key_prefix=f"earmark-ops-{uuid.uuid4().hex[:8]}:",
                        data_dir=tmp_path_factory.mktemp("ops"))
    recorded = fixture_bytes("recorded.wav")
    mp3 = encode(*read_pcm(recorded), fmt="mp3", codec="libmp3lame", bitrate=48000)
    with live_server(settings, engine) as base, httpx.Client(base_url=base, timeout=120) as http:
        tiers = []
        for data, path in ((recorded, "/recognize"), (recorded, "/recognize"), (mp3, "/recognize"),
                           (fixture_bytes("weather.wav"), "/recognize"), (mp3, "/lookup")):
            answer = http.post(path, files={"file": ("a", data, "application/octet-stream")})
            assert answer.status_code == 200, answer.text
            tiers.append(answer.json()["cache"]["tier"])
        assert tiers[:3] == ["miss", "exact", "fuzzy"], tiers
        assert http.post("/recognize", files={"file": ("a", b"not audio", "application/octet-stream")}).status_code == 415
        return http.get("/metrics").text


def test_store_info_counters_are_counters_beside_the_memory_gauges(scraped):
    families = {family.name: family for family in text_string_to_metric_families(scraped)}
    for name in ("earmark_store_evicted_keys", "earmark_store_expired_keys", "earmark_store_keyspace_hits",
                 "earmark_store_keyspace_misses", "earmark_store_breaker_trips"):
        assert families[name].type == "counter", name
    for name in ("earmark_store_used_memory_bytes", "earmark_store_maxmemory_bytes"):
        assert families[name].type == "gauge", name
    samples = exported_samples(scraped)
    # The store looked keys up for these requests, and found some: its own counts are live.
    assert samples["earmark_store_keyspace_hits_total"][0].value > 0
    assert samples["earmark_store_keyspace_misses_total"][0].value > 0
    assert samples["earmark_store_used_memory_bytes"][0].value > 0
    assert samples["earmark_store_breaker_trips_total"][0].value == 0
    # The old gauge names (no _total) are gone: one name per figure.
    assert "earmark_store_evicted_keys " not in scraped and "earmark_store_expired_keys " not in scraped


def test_every_dashboard_query_names_metrics_the_service_exports(scraped):
    samples = exported_samples(scraped)
    declared = {(family.name, family.type) for family in text_string_to_metric_families(scraped)}
    for name, declaration in DECLARED_ONLY.items():
        assert declaration in declared
        samples.setdefault(name, [])
    queries = dashboard_queries()
    assert len(queries) >= 15
    named = set()
    for title, expr in queries:
        names = METRIC_NAME.findall(expr)
        assert names, f"panel {title!r}: {expr!r} names no earmark metric"
        for name in names:
            assert name in samples, f"panel {title!r} queries {name}, which /metrics does not export"
            named.add(name)
    # What the issue asks the dashboard to show is all there.
    for needed in ("earmark_requests_total", "earmark_engine_seconds_total", "earmark_engine_seconds_saved_total",
                   "earmark_lookup_seconds_bucket", "earmark_fuzzy_rejected_total", "earmark_store_used_memory_bytes",
                   "earmark_store_maxmemory_bytes", "earmark_store_evicted_keys_total", "earmark_store_expired_keys_total",
                   "earmark_store_up", "earmark_store_breaker_trips_total"):
        assert needed in named, needed
    assert any("histogram_quantile" in expr for _, expr in queries)


def test_dashboard_is_importable_grafana_json():
    dashboard = json.loads((DEPLOY / "grafana" / "earmark.json").read_text())
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    for panel in dashboard["panels"]:
        for key in ("h", "w", "x", "y"):
            assert isinstance(panel["gridPos"][key], int)
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"].strip("${}") in variables


def test_prometheus_example_scrapes_metrics():
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = config["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"]
