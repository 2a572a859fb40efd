"""The store killed mid-test: every request still answers (bypass), then caching resumes."""

from __future__ import annotations

import logging
import time
import uuid

import redis

from starlette.testclient import TestClient

from earmark.index.embedded import EmbeddedServer
from earmark.service.api.app import create_app
from earmark.service.config import Settings
from tests.audio_tools import fixture_bytes
from tests.http_helpers import post


def test_store_outage_is_bypassed_and_caching_resumes(tmp_path, engine, caplog):
    server = EmbeddedServer(tmp_path / "data")
    server.start()
    settings = Settings(redis_url=server.url, key_prefix=f"earmark-outage-{uuid.uuid4().hex[:6]}:", data_dir=tmp_path / "data")
    recorded, weather = fixture_bytes("recorded.wav"), fixture_bytes("weather.wav")
    try:
        with TestClient(create_app(settings, engine=engine)) as client:
            assert post(client, recorded).json()["cache"]["tier"] == "miss"

            server.kill()
            caplog.clear()
            with caplog.at_level(logging.WARNING):
                answers = [post(client, weather) for _ in range(3)]
            for answer in answers:
                assert answer.status_code == 200
                body = answer.json()
                assert body["cache"]["tier"] == "bypass" and body["cache"]["entry"] is None
                assert body["result"]["text"]
            assert sum("unreachable" in r.getMessage() for r in caplog.records) == 1
            assert client.get("/health").json()["store"] == "down"
            metrics = client.get("/metrics").text
            assert "earmark_store_up 0.0" in metrics
            assert "earmark_store_breaker_trips_total 1.0" in metrics  # one outage, however many requests
            assert "earmark_store_used_memory_bytes" not in metrics  # no stale figures while it is down
            errors = [line for line in metrics.splitlines() if line.startswith("earmark_store_errors_total ")]
            assert float(errors[0].split()[1]) <= 2  # the breaker stops per-request connect attempts

            server.start()
            restarted = time.monotonic()
            while client.get("/health").json()["store"] != "up":
                assert time.monotonic() - restarted < 10, "caching did not resume within 10 s"
                time.sleep(0.2)
            assert post(client, weather).json()["cache"]["tier"] == "miss"
            assert post(client, weather).json()["cache"]["tier"] == "exact"
            metrics = client.get("/metrics").text
            assert "earmark_store_up 1.0" in metrics and "earmark_store_breaker_trips_total 1.0" in metrics
    finally:
        server.stop()


def test_store_down_at_start_up_still_serves(engine, tmp_path):
    settings = Settings(redis_url="redis://127.0.0.1:1/0", key_prefix="earmark-nostore:", data_dir=tmp_path)
    with TestClient(create_app(settings, engine=engine)) as client:
        answer = post(client, fixture_bytes("recorded.wav"))
        assert answer.status_code == 200 and answer.json()["cache"]["tier"] == "bypass"
        lookup = client.post("/lookup", files={"file": ("a.wav", fixture_bytes("recorded.wav"), "application/octet-stream")})
        assert lookup.json()["cache"]["tier"] == "bypass"


def test_a_refused_write_costs_only_that_write(tmp_path, engine):
    """OOM refuses a new entry: that answer is served uncached (bypass, counted), the store
    stays up and every other request is still answered from cache."""
    server = EmbeddedServer(tmp_path / "data")
    server.start()
    settings = Settings(redis_url=server.url, key_prefix=f"earmark-oom-{uuid.uuid4().hex[:6]}:", data_dir=tmp_path / "data")
    recorded, weather = fixture_bytes("recorded.wav"), fixture_bytes("weather.wav")
    admin = redis.Redis.from_url(server.url)
    try:
        with TestClient(create_app(settings, engine=engine)) as client:
            assert post(client, recorded).json()["cache"]["tier"] == "miss"
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", "1")
            refused = post(client, weather).json()
            assert refused["cache"]["tier"] == "bypass" and refused["cache"]["entry"] is None
            assert refused["result"]["text"]
            assert post(client, recorded).json()["cache"]["tier"] == "exact"
            assert client.get("/health").json()["store"] == "up"
            assert 'earmark_store_refused_total{reason="OOM"} 1.0' in client.get("/metrics").text
            admin.config_set("maxmemory", "0")
            assert post(client, weather).json()["cache"]["tier"] == "miss"
    finally:
        admin.close()
        server.stop()
