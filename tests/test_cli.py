"""The `earmark` command line, run as a user runs it: in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

FIXTURE = str(Path(__file__).parent / "fixtures" / "recorded.wav")
EARMARK = [sys.executable, "-m", "earmark"]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    env.pop("REDIS_URL", None)
    return subprocess.run([*EARMARK, *args], cwd=cwd, capture_output=True, text=True, timeout=180, env=env)


def test_help_lists_commands(tmp_path):
    result = run("--help", cwd=tmp_path)
    assert result.returncode == 0 and "serve" in result.stdout and "recognize" in result.stdout
    assert "EARMARK_PORT" in run("serve", "--help", cwd=tmp_path).stdout


def test_recognize_in_process_persists_between_runs_in_the_default_data_dir(tmp_path):
    """A first run with the default data directory (./.earmark), a second naming it with
    --data-dir: the second is answered from what the first stored. (One test for both: each
    run starts a store and loads the engine in a fresh process.)"""
    first = run("recognize", FIXTURE, "--json", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    answer = json.loads(first.stdout)
    assert answer["cache"]["tier"] == "miss" and answer["result"]["text"]
    assert (tmp_path / ".earmark" / "store" / "appendonlydir").is_dir()
    elsewhere = tmp_path / "elsewhere"  # another working directory: the store is found by --data-dir alone
    elsewhere.mkdir()
    second = run("recognize", FIXTURE, "--data-dir", str(tmp_path / ".earmark"), cwd=elsewhere)
    assert second.returncode == 0 and "\texact\t" in second.stdout, second.stderr


def test_user_errors_are_one_line_without_traceback(tmp_path):
    missing = run("recognize", str(tmp_path / "nope.wav"), cwd=tmp_path)
    assert missing.returncode != 0 and "no such file" in missing.stderr
    assert "Traceback" not in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    bad_port = run("serve", "--port", "eighty", cwd=tmp_path)
    assert bad_port.returncode != 0 and "Traceback" not in bad_port.stderr
    no_model = run("serve", "--whisper-model", str(tmp_path / "no-such-model"), cwd=tmp_path)
    assert no_model.returncode == 2 and "no such directory" in no_model.stderr and "Traceback" not in no_model.stderr
    bad_config = tmp_path / "bad.toml"
    bad_config.write_text("no_such_setting = 1\n")
    result = run("serve", "--config", str(bad_config), cwd=tmp_path)
    assert result.returncode != 0 and "unknown setting" in result.stderr and "Traceback" not in result.stderr


def test_serve_as_the_readme_says_from_a_working_directory(tmp_path):
    """`earmark serve` with the default (relative) data dir, then a file recognized over HTTP."""
    with serving(tmp_path) as url:
        assert httpx.get(f"{url}/health").json()["engine"] == "whisper"  # the default engine
        with open(FIXTURE, "rb") as handle:
            response = httpx.post(f"{url}/recognize", files={"file": ("recorded.wav", handle)}, timeout=120)
        assert response.status_code == 200 and response.json()["cache"]["tier"] == "miss"
    assert (tmp_path / ".earmark" / "store" / "valkey.log").exists()


def test_a_store_that_cannot_start_shows_its_own_words(tmp_path):
    """A store that refuses to start for a reason only it knows (here a file where its
    append-only directory goes; a bad --maxmemory is refused earlier, by the settings' gate)."""
    store = tmp_path / "d" / "store"
    store.mkdir(parents=True)
    (store / "appendonlydir").write_text("not a directory\n")
    result = run("serve", "--data-dir", str(tmp_path / "d"), "--engine", "pocketsphinx", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "exited at start" in result.stderr and "appendonlydir" in result.stderr.split("exited at start", 1)[1]


def test_killed_service_takes_its_embedded_store_with_it(tmp_path):
    # pocketsphinx runs in worker processes (whisper in threads): they must go with the service too
    with serving(tmp_path, "--data-dir", str(tmp_path / "d"), "--engine", "pocketsphinx") as url:
        service = _SERVICES[url]
        store_pid = int((tmp_path / "d" / "store" / "valkey.pid").read_text())
        deadline = time.monotonic() + 30
        while len(_children(service.pid)) < 2:  # the store and the warmed-up engine worker
            assert time.monotonic() < deadline, "no engine worker was started"
            time.sleep(0.2)
        children = _children(service.pid)
        os.kill(service.pid, signal.SIGKILL)
        service.wait(10)
        _assert_all_exit(children | {store_pid}, "the store or an engine worker outlived the killed service")


def test_store_stops_with_the_service_even_when_its_last_save_fails(tmp_path):
    data = tmp_path / "d"
    with serving(tmp_path, "--data-dir", str(data)) as url:
        service = _SERVICES[url]
        store_pid = int((data / "store" / "valkey.pid").read_text())
        with open(FIXTURE, "rb") as handle:  # something unsaved for the final save to fail on
            assert httpx.post(f"{url}/recognize", files={"file": ("r.wav", handle)}, timeout=120).status_code == 200
        shutil.rmtree(data)
        service.send_signal(signal.SIGTERM)
        service.wait(60)
        _assert_all_exit({store_pid}, "the store outlived a service whose data directory was removed")
        assert "could not save" in service.stderr.read()


def test_an_orphaned_store_on_the_data_dir_is_stopped_not_doubled(tmp_path):
    from earmark.index.embedded import _binary_path

    store = tmp_path / "d" / "store"
    store.mkdir(parents=True)
    port = _free_port()
    # An orphan: started in its own session by a parent that then exits (it is adopted by init).
    subprocess.run(["sh", "-c", f"setsid {_binary_path()} --port {port} --dir {store} --pidfile {store}/valkey.pid "
                                f"--daemonize yes --save ''"], check=True, timeout=30)
    (store / "url").write_text(f"redis://127.0.0.1:{port}/0\n")
    deadline = time.monotonic() + 10
    while not (store / "valkey.pid").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    orphan = int((store / "valkey.pid").read_text())
    with serving(tmp_path, "--data-dir", str(tmp_path / "d")):
        assert not _alive(orphan)
        assert int((store / "valkey.pid").read_text()) != orphan


_SERVICES: dict[str, subprocess.Popen] = {}


@contextmanager
def serving(cwd: Path, *args: str, env: dict[str, str] | None = None):
    """`earmark serve` in a subprocess from `cwd` on a free port, with `env` added to the
    environment; yields its URL once healthy."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent), **(env or {})}
    env.pop("REDIS_URL", None)
    service = subprocess.Popen([*EARMARK, "serve", "--port", str(port), *args], cwd=cwd, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    _SERVICES[url] = service
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if service.poll() is not None:
                raise AssertionError(f"service exited at start: {service.stderr.read()}")
            assert time.monotonic() < deadline, "service did not start"
            time.sleep(0.2)
        yield url
    finally:
        _SERVICES.pop(url, None)
        if service.poll() is None:
            service.send_signal(signal.SIGTERM)
            try:
                service.wait(30)
            except subprocess.TimeoutExpired:
                service.kill()
                service.wait()


def _assert_all_exit(pids: set[int], message: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while any(_alive(pid) for pid in pids):
        assert time.monotonic() < deadline, message
        time.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _children(pid: int) -> set[int]:
    children = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        children.update(int(c) for c in (task / "children").read_text().split())
    return {c for c in children if b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_api_keys_file_errors_stop_serve_and_recognize_sends_the_key(tmp_path):
    bad_keys = tmp_path / "bad-keys"
    bad_keys.write_text("# key namespace\nsk-0123456789abcdef\n")
    result = run("serve", "--api-keys", str(bad_keys), cwd=tmp_path)
    assert result.returncode == 2 and "line 2" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "sk-0123456789abcdef" not in result.stderr

    keys = tmp_path / "keys"
    keys.write_text("sk-0123456789abcdef team-a\n")
    config = tmp_path / "earmark.toml"
    config.write_text(f'api_keys_file = "{keys}"\nengine = "pocketsphinx"\n')
    common = ("--data-dir", str(tmp_path / "data"), "--config", str(config), "--json")
    refused = run("recognize", FIXTURE, *common, cwd=tmp_path)
    assert refused.returncode == 1 and json.loads(refused.stdout)["status"] == 401
    answered = run("recognize", FIXTURE, *common, "--api-key", "sk-0123456789abcdef", cwd=tmp_path)
    assert answered.returncode == 0, answered.stderr
    assert json.loads(answered.stdout)["cache"]["tier"] == "miss"
