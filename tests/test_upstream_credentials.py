"""The upstream's credentials (issue 21, items 5 and 6): the configured key is sent as a Bearer
`Authorization`, a URL's user:password as HTTP Basic when no key is configured, and both at
once are refused at start (they would be the one header); and the URL's password is never
written to the log. The upstream is a real HTTP server on loopback that records the headers
it receives."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from earmark.service.api.app import create_app
from earmark.service.config import ConfigError, load_settings
from earmark.service.engines.errors import EngineUnavailable
from tests.funasr_protocol_server import _Running
from tests.test_cli import _SERVICES, EARMARK, serving
from tests.test_upstream import transcribe
from tests.waiting import wait_for

pytestmark = pytest.mark.any_store  # nothing here depends on the store server (tests/conftest.py)

KEY = "sk-upstream-0123456789abcdef"
USER, PASSWORD = "op@rator", "pa55:w0rd-secret"  # both need quoting in a URL
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


class _Recorder:
    """An OpenAI-shaped server recording each request's path and `Authorization` header. It
    answers transcriptions with a transcript, or (`failing`) with a 500 whose message echoes the
    header it was sent, as careless servers do."""

    def __init__(self, *, failing: bool = False) -> None:
        self.seen: list[tuple[str, str | None]] = []

        async def transcriptions(request):
            await request.body()
            self.seen.append((request.url.path, request.headers.get("authorization")))
            if failing:
                message = f"upstream misconfigured; you sent {request.headers.get('authorization')}"
                return Response(json.dumps({"error": {"message": message}}), status_code=500,
                                media_type="application/json")
            return JSONResponse({"text": "hello there", "segments": [{"start": 0.0, "end": 1.0, "text": "hello there"}]})

        async def models(request):
            self.seen.append((request.url.path, request.headers.get("authorization")))
            return JSONResponse({"data": []})

        self.app = Starlette(routes=[Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
                                     Route("/v1/models", models)])

    def sent_to(self, path: str) -> set[str | None]:
        return {header for seen_path, header in self.seen if seen_path == path}


def with_credentials(url: str) -> str:
    from urllib.parse import quote

    return url.replace("http://", f"http://{quote(USER, safe='')}:{quote(PASSWORD, safe='')}@")


def test_the_api_key_is_sent_as_a_bearer_key(settings, recorded):
    recorder = _Recorder()
    with _Running(recorder) as url:
        with TestClient(create_app(replace(settings, engine="openai", upstream_url=url, upstream_api_key=KEY))) as client:
            assert transcribe(client, recorded).status_code == 200
            wait_for(lambda: recorder.sent_to("/v1/models"))
    assert recorder.sent_to("/v1/audio/transcriptions") == {f"Bearer {KEY}"}
    assert recorder.sent_to("/v1/models") == {f"Bearer {KEY}"}, "the health check too"


def test_url_credentials_are_sent_as_basic_when_no_key_is_configured(settings, recorded):
    recorder = _Recorder()
    with _Running(recorder) as url:
        with TestClient(create_app(replace(settings, engine="openai", upstream_url=with_credentials(url)))) as client:
            assert transcribe(client, recorded).status_code == 200
            wait_for(lambda: recorder.sent_to("/v1/models"))
            health = client.get("/health").json()["upstream"]
    assert recorder.sent_to("/v1/audio/transcriptions") == {BASIC}
    assert recorder.sent_to("/v1/models") == {BASIC}
    assert health["url"] == url and health["endpoint"] == f"{url}/v1/audio/transcriptions"


def test_a_key_and_url_credentials_together_are_refused_at_start(tmp_path):
    url = with_credentials("http://127.0.0.1:9")
    with pytest.raises(ConfigError, match="upstream_api_key") as refused:
        load_settings(engine="openai", upstream_url=url, upstream_api_key=KEY)
    assert "user:password" in str(refused.value) and PASSWORD not in str(refused.value)
    from earmark.service.engines.upstream.openai import OpenAIUpstreamEngine
    from earmark.service.engines.upstream.base import UpstreamConfig

    with pytest.raises(EngineUnavailable, match="upstream_api_key"):
        OpenAIUpstreamEngine(UpstreamConfig(url=url, api_key=KEY))
    result = subprocess.run([*EARMARK, "serve", "--engine", "openai", "--upstream-url", url,
                             "--data-dir", str(tmp_path / "d")], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent),
                                             "EARMARK_UPSTREAM_API_KEY": KEY})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "upstream_api_key" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert PASSWORD not in result.stderr


def test_the_log_never_holds_the_upstreams_password(tmp_path, recorded):
    """`earmark serve` at log level info, its upstream URL with a user:password, health checks
    every 0.2 s and a request the upstream fails while echoing the credentials it was sent."""
    recorder = _Recorder(failing=True)
    config = tmp_path / "earmark.toml"
    config.write_text("upstream_health_interval_s = 0.2\n")
    with _Running(recorder) as url:
        with serving(tmp_path, "--engine", "openai", "--upstream-url", with_credentials(url), "--log-level", "info",
                     "--data-dir", str(tmp_path / "data"), "--config", str(config)) as front:
            process = _SERVICES[front]
            failed = httpx.post(f"{front}/v1/audio/transcriptions", files={"file": ("a.wav", recorded)},
                                data={"model": "whisper-1"}, timeout=120)
            wait_for(lambda: sum(path == "/v1/models" for path, _ in recorder.seen) >= 3, timeout_s=30)
            shown = failed.text + httpx.get(f"{front}/health").text + httpx.get(f"{front}/metrics").text
        log = process.stderr.read()
    assert recorder.sent_to("/v1/audio/transcriptions") == {BASIC}, "the credentials were used"
    assert failed.status_code == 502 and "you sent Basic ***" in failed.json()["msg"]
    assert "HTTP Request: GET" in log and "HTTP Request: POST" in log, "the log holds the upstream requests"
    assert "is down: HTTP 500" in log
    secrets = (PASSWORD, "pa55%3Aw0rd", BASIC.split()[1])
    for secret in secrets:
        assert secret not in log, f"{secret!r} in the log"
        assert secret not in shown
