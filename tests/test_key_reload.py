"""The API keys file is read again when it changes (and on SIGHUP under `earmark serve`),
without a restart; a broken file keeps the keys in force. Namespaces appear in metric labels
only when `metrics_namespace_labels` is set."""

from __future__ import annotations

import os
import signal
from dataclasses import replace

import httpx
import pytest
from starlette.testclient import TestClient

from earmark.service.api.app import create_app
from earmark.service.api.key_reload import KeysFile, reload_requested
from tests import waiting
from tests.test_auth import KEY_A, KEY_B, post
from tests.test_cli import serving
from tests.test_upstream import metric

pytestmark = pytest.mark.any_store  # nothing here depends on the store server (tests/conftest.py)

KEY_C = "gamma-key-0123456789abcdef"


def wait_for(condition, timeout_s: float = 20.0) -> None:
    """A re-read waits for the next check (every 2 s): longer than the usual wait."""
    waiting.wait_for(condition, timeout_s=timeout_s, interval_s=0.05)


def write_keys(path, text: str) -> None:
    """Replace the file as editors and config managers do: a new file renamed over the old."""
    fresh = path.with_suffix(".new")
    fresh.write_text(text)
    os.replace(fresh, path)


@pytest.fixture
def keys_path(tmp_path):
    path = tmp_path / "api-keys"
    path.write_text(f"{KEY_A} alpha\n")
    return path


def test_a_changed_keys_file_is_applied_without_a_restart(settings, engine, keys_path, recorded):
    """Which keys are accepted follows the file. Asked through /lookup, which checks keys
    exactly as /recognize does (test_auth.py) but never runs the engine: each new namespace
    would otherwise cost a transcription that this test does not look at."""
    keyed = replace(settings, api_keys_file=str(keys_path), api_keys_check_s=0.05)

    def lookup(key: str) -> int:
        return post(client, recorded, "/lookup", key=key).status_code

    with TestClient(create_app(keyed, engine=engine)) as client:
        assert lookup(KEY_A) == 200
        assert lookup(KEY_B) == 401
        write_keys(keys_path, f"{KEY_B} beta\n")
        wait_for(lambda: lookup(KEY_B) == 200)
        assert lookup(KEY_A) == 401, "a removed key stops working"
        # A broken file is not applied: the keys in force stay, the failure is counted.
        write_keys(keys_path, "not-a-valid-line\n")
        wait_for(lambda: metric(client, 'earmark_api_keys_reloads_total{result="error"}') == 1)
        assert lookup(KEY_B) == 200
        # An edit in place (same inode) is seen too.
        with open(keys_path, "w") as handle:
            handle.write(f"{KEY_C} gamma\n")
        wait_for(lambda: lookup(KEY_C) == 200)
        # At least the two good files; an edit in place may be read twice (its stat taken while
        # the editor had just truncated it, its text read once written, then again for the
        # stat it ended with), which is harmless and happens on a busy machine.
        assert metric(client, 'earmark_api_keys_reloads_total{result="ok"}') >= 2


def test_a_reload_request_reads_an_unchanged_file(keys_path):
    keys_file = KeysFile(str(keys_path))
    assert keys_file.changed_keys() is None
    reload_requested.set()
    keys = keys_file.changed_keys()
    assert keys is not None and keys.namespace_of(KEY_A) == "alpha"
    assert keys_file.changed_keys() is None


def test_serve_reloads_the_keys_on_sighup_and_keeps_running(tmp_path, keys_path, recorded):
    with serving(tmp_path, "--engine", "pocketsphinx", "--data-dir", str(tmp_path / "data"),
                 "--api-keys", str(keys_path)) as url:
        from tests.test_cli import _SERVICES

        process = _SERVICES[url]
        process.send_signal(signal.SIGHUP)

        def reloaded() -> bool:
            text = httpx.get(f"{url}/metrics").text
            return 'earmark_api_keys_reloads_total{result="ok"} 1.0' in text

        wait_for(reloaded, 30)
        assert process.poll() is None, "SIGHUP must not stop the service"
        answer = httpx.post(f"{url}/recognize", files={"file": ("a.wav", recorded)},
                            headers={"Authorization": f"Bearer {KEY_A}"}, timeout=120)
        assert answer.status_code == 200


@pytest.mark.parametrize("labelled", [False, True])
def test_namespaces_are_metric_labels_only_when_configured(settings, engine, keys_path, recorded, labelled):
    keys_path.write_text(f"{KEY_A} alpha\n{KEY_B} beta\n")
    keyed = replace(settings, api_keys_file=str(keys_path), metrics_namespace_labels=labelled)
    with TestClient(create_app(keyed, engine=engine)) as client:
        assert post(client, recorded, key=KEY_A).status_code == 200
        assert post(client, recorded, key=KEY_A).status_code == 200
        assert post(client, recorded, path="/lookup", key=KEY_B).status_code == 200
        text = client.get("/metrics").text
    assert ('namespace="alpha"' in text) is labelled and ('namespace="beta"' in text) is labelled
    if labelled:
        assert 'earmark_namespace_requests_total{endpoint="recognize",namespace="alpha",tier="miss"} 1.0' in text
        assert 'earmark_namespace_requests_total{endpoint="recognize",namespace="alpha",tier="exact"} 1.0' in text
        assert 'earmark_namespace_requests_total{endpoint="lookup",namespace="beta",tier="miss"} 1.0' in text
    else:
        assert "earmark_namespace_requests_total" not in text
