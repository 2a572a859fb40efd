"""The `earmark` command line, run as a user runs it: in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

FIXTURE = str(Path(__file__).parent / "fixtures" / "recorded.wav")
EARMARK = [sys.executable, "-m", "service"]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    env.pop("REDIS_URL", None)
    return subprocess.run([*EARMARK, *args], cwd=cwd, capture_output=True, text=True, timeout=180, env=env)


def test_help_lists_commands(tmp_path):
    result = run("--help", cwd=tmp_path)
    assert result.returncode == 0 and "serve" in result.stdout and "recognize" in result.stdout
    assert "EARMARK_PORT" in run("serve", "--help", cwd=tmp_path).stdout


def test_recognize_in_process_persists_between_runs(tmp_path):
    first = run("recognize", FIXTURE, "--json", "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    answer = json.loads(first.stdout)
    assert answer["cache"]["tier"] == "miss" and answer["result"]["text"]
    second = run("recognize", FIXTURE, "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    assert second.returncode == 0 and "\texact\t" in second.stdout


def test_user_errors_are_one_line_without_traceback(tmp_path):
    missing = run("recognize", str(tmp_path / "nope.wav"), cwd=tmp_path)
    assert missing.returncode != 0 and "no such file" in missing.stderr
    assert "Traceback" not in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    bad_port = run("serve", "--port", "eighty", cwd=tmp_path)
    assert bad_port.returncode != 0 and "Traceback" not in bad_port.stderr
    bad_config = tmp_path / "bad.toml"
    bad_config.write_text("no_such_setting = 1\n")
    result = run("serve", "--config", str(bad_config), cwd=tmp_path)
    assert result.returncode != 0 and "unknown setting" in result.stderr and "Traceback" not in result.stderr


def test_killed_service_takes_its_embedded_store_with_it(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    env.pop("REDIS_URL", None)
    service = subprocess.Popen([*EARMARK, "serve", "--port", str(port), "--data-dir", str(tmp_path / "d")],
                               cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and service.poll() is None, "service did not start"
            time.sleep(0.2)
        store_pid = int((tmp_path / "d" / "store" / "valkey.pid").read_text())
        deadline = time.monotonic() + 30
        while len(_children(service.pid)) < 2:  # the store and the warmed-up engine worker
            assert time.monotonic() < deadline, "no engine worker was started"
            time.sleep(0.2)
        children = _children(service.pid)
        os.kill(service.pid, signal.SIGKILL)
        service.wait(10)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in children | {store_pid}):
            assert time.monotonic() < deadline, "the store or an engine worker outlived the killed service"
            time.sleep(0.1)
    finally:
        if service.poll() is None:
            service.kill()


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
