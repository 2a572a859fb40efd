"""The web console's pages over HTTP, on a real store and the real engine (the browser tests,
tests/test_console_browser.py, drive the same pages in Chromium): what each page shows, paging
and search of the history, the admin token, delete, and history that outlives a restart."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from earmark.index.embedded import EmbeddedServer
from earmark.service.api.app import create_app
from earmark.service.config import Settings
from tests.audio_tools import encode, fixture_bytes, read_pcm
from tests.http_helpers import recognize

pytestmark = pytest.mark.any_store  # nothing here depends on the store server (tests/conftest.py)

PACKAGE = Path(__file__).resolve().parent.parent / "earmark" / "service" / "console"


@pytest.fixture(scope="module")
def weather() -> bytes:
    return fixture_bytes("weather.wav")


def test_upload_page_offers_the_engines_options_and_loads_only_local_assets(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    # No other site may frame a console page (a framed Delete button is a click away).
    assert page.headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in page.headers["content-security-policy"]
    html = page.text
    assert '<input id="files"' in html and "multiple" in html and 'id="drop"' in html
    assert '<label for="language">' in html and '<label for="use_itn">' in html
    # pocketsphinx takes neither hotwords nor a prompt: no field for them, and the page says so
    assert 'id="hotwords"' not in html and 'id="prompt"' not in html and "takes no hotwords or prompt" in html
    assets = re.findall(r'(?:src|href)="([^"#]+)"', html)
    assert assets and all(url.startswith(("/", "data:")) for url in assets), assets  # no CDN, no external font
    for url in assets:
        if url.startswith("/console/static/"):
            assert client.get(url).status_code == 200, url
    for static in (PACKAGE / "static").iterdir():
        text = static.read_text()
        assert "fonts.googleapis" not in text and "cdn." not in text, static


def test_history_lists_recognitions_newest_first_linking_their_entries(client, recorded, weather):
    first = recognize(client, recorded)["cache"]
    recognize(client, recorded)
    recognize(client, weather, "/lookup")  # a lookup is not a recognition: not listed
    second = recognize(client, weather)["cache"]
    html = client.get("/console/history").text
    rows = re.findall(r'<tr class="history-row" data-tier="(\w+)" data-entry="(\w*)"', html)
    assert rows == [("miss", second["entry"]), ("exact", first["entry"]), ("miss", first["entry"])]
    assert f'href="/console/entry/{first["entry"]}"' in html
    assert "quality and training" in html


def test_history_search_finds_transcripts_and_says_what_it_searched(client, recorded, weather):
    recognize(client, recorded)
    recognize(client, weather)
    found = client.get("/console/history", params={"q": "TRAINING"}).text
    rows = re.findall(r'<tr class="history-row" data-tier="(\w+)"', found)
    assert len(rows) == 1 and "quality and training" in found
    assert "events searched" in found and "not the whole store" in found
    nothing = client.get("/console/history", params={"q": "zebra crossing"}).text
    assert "history-row" not in nothing and "has “zebra crossing” in its transcript" in nothing
    # htmx asks for the results alone
    fragment = client.get("/console/history", params={"q": "training"}, headers={"HX-Request": "true"}).text
    assert "<html" not in fragment and "history-row" in fragment


def test_history_pages_back_through_older_recognitions(client, recorded):
    for _ in range(27):  # a miss, then exact hits: 27 recognitions, more than a page (25)
        recognize(client, recorded)
    first = client.get("/console/history").text
    assert len(re.findall('class="history-row"', first)) == 25
    older = re.search(r'href="/console/history\?before=([0-9-]+)"', first)
    assert older, "no link to older recognitions"
    second = client.get("/console/history", params={"before": older.group(1)}).text
    assert re.findall(r'data-tier="(\w+)" data-entry', second) == ["exact", "miss"]
    assert "Older →" not in second and "← Newest" in second


def test_entry_page_shows_transcript_facts_and_hits(client, recorded):
    entry = recognize(client, recorded)["cache"]["entry"]
    mp3 = encode(*read_pcm(recorded), fmt="mp3", codec="libmp3lame", bitrate=48000)
    recognize(client, recorded)
    assert recognize(client, mp3)["cache"]["tier"] == "fuzzy"
    page = client.get(f"/console/entry/{entry}")
    assert page.status_code == 200
    html = page.text
    assert "quality and training" in html and "Segments with their times" in html
    assert re.search(r'<dd id="ttl">6 d 23 h</dd>', html)  # the default 7-day TTL, just written
    assert re.search(r"Size in the store</dt><dd>[\d,]+ bytes", html)
    assert '<strong id="hit-count">2</strong>' in html  # the exact and the fuzzy hit; its own miss aside
    assert client.get("/console/entry/" + "0" * 32).status_code == 404
    assert client.get("/console/entry/not-an-id").status_code == 404


def test_delete_from_the_console_makes_the_next_upload_miss(client, recorded):
    entry = recognize(client, recorded)["cache"]["entry"]
    refused = client.post(f"/console/entry/{entry}/delete", headers={"Origin": "http://evil.example"})
    assert refused.status_code == 403
    assert recognize(client, recorded)["cache"]["tier"] == "exact"
    deleted = client.post(f"/console/entry/{entry}/delete", headers={"Origin": "http://testserver"}, follow_redirects=False)
    assert deleted.status_code == 303 and deleted.headers["location"] == f"/console/history?deleted={entry}"
    assert "was deleted" in client.get(deleted.headers["location"]).text
    assert recognize(client, recorded)["cache"]["tier"] == "miss"
    assert client.post(f"/console/entry/{'0' * 32}/delete").status_code == 404


def test_audit_page_draws_the_audits_data(client, recorded):
    recognize(client, recorded)
    recognize(client, recorded)
    quiet = encode((read_pcm(recorded)[0] * 0.5).astype("int16"), read_pcm(recorded)[1], fmt="wav", codec="pcm_s16le")
    recognize(client, quiet)  # quieter copy: a fuzzy hit
    html = client.get("/console/audit").text
    report = client.get("/audit").json()  # the same data, as GET /audit serves it
    assert f'<div class="value" id="stat-recognitions">{report["summary"]["answers"]}</div>' in html
    assert report["summary"]["answers"] == 3
    for tier in ("miss", "exact", "fuzzy"):
        assert f": 1 {tier}</title>" in html, tier
    assert html.count('<svg class="chart wide"') == 2
    assert 'earmark_console_pages_total{page="audit"} 1.0' in client.get("/metrics").text


def test_admin_token_guards_history_entries_audit_and_delete(settings, engine, recorded):
    from dataclasses import replace

    with TestClient(create_app(replace(settings, admin_token="s3cret"), engine=engine)) as client:
        entry = recognize(client, recorded)["cache"]["entry"]
        assert client.get("/").status_code == 200  # recognizing needs no admin token
        for path in ("/console/history", f"/console/entry/{entry}", "/console/audit"):
            page = client.get(path)
            assert page.status_code == 401 and 'name="token"' in page.text, path
            assert "quality and training" not in page.text
        assert client.post(f"/console/entry/{entry}/delete").status_code == 401
        wrong = client.post("/console/login", data={"token": "guess", "next": "/console/history"})
        assert wrong.status_code == 401 and "earmark_admin" not in wrong.headers.get("set-cookie", "")
        right = client.post("/console/login", data={"token": "s3cret", "next": "https://evil.example/"}, follow_redirects=False)
        assert right.status_code == 303 and right.headers["location"] == "/console/history"
        assert "httponly" in right.headers["set-cookie"].lower() and "samesite=strict" in right.headers["set-cookie"].lower()
        assert "quality and training" in client.get(f"/console/entry/{entry}").text  # the cookie is kept
        assert client.post(f"/console/entry/{entry}/delete", follow_redirects=False).status_code == 303
        assert recognize(client, recorded)["cache"]["tier"] == "miss"


def test_history_survives_a_restart_of_service_and_store(tmp_path, engine, recorded):
    server = EmbeddedServer(tmp_path / "store")
    server.start()
    settings = Settings(redis_url=server.url, key_prefix=f"earmark-console-{uuid.uuid4().hex[:6]}:", data_dir=tmp_path / "data")
    try:
        with TestClient(create_app(settings, engine=engine)) as client:
            entry = recognize(client, recorded)["cache"]["entry"]
        server.stop()
        server.start()
        with TestClient(create_app(Settings(redis_url=server.url, key_prefix=settings.key_prefix,
                                            data_dir=tmp_path / "data"), engine=engine)) as client:
            html = client.get("/console/history").text
            assert re.findall(r'data-tier="(\w+)" data-entry="(\w*)"', html) == [("miss", entry)]
    finally:
        server.stop()


def test_upload_page_offers_hotwords_prompt_and_an_api_key_field_when_they_apply(settings, whisper_engine, tmp_path):
    from dataclasses import replace

    keys = tmp_path / "api-keys"
    keys.write_text("k" * 32 + " alpha\n")
    with TestClient(create_app(replace(settings, api_keys_file=str(keys)), engine=whisper_engine)) as client:
        html = client.get("/").text
    # Whisper takes hotwords and a prompt; with keys configured the page asks for one (sent as Bearer).
    for field in ('<label for="hotwords">', '<label for="prompt">', '<label for="api_key">'):
        assert field in html, field
    assert "takes no" not in html


def test_audit_page_redraws_near_threshold_hits_stretch_by_stretch(settings, engine, recorded):
    from dataclasses import replace

    # A review margin this wide puts every fuzzy hit "near the threshold": its curve is drawn.
    with TestClient(create_app(replace(settings, review_margin=0.3), engine=engine)) as client:
        entry = recognize(client, recorded)["cache"]["entry"]
        mp3 = encode(*read_pcm(recorded), fmt="mp3", codec="libmp3lame", bitrate=48000)
        assert recognize(client, mp3)["cache"]["tier"] == "fuzzy"
        html = client.get("/console/audit").text
    near = html.split('id="near-heading"')[1].split('id="dup-heading"')[0]
    assert f'href="/console/entry/{entry}"' in near
    points = re.search(r'<polyline class="line" points="([^"]+)"', near).group(1).split()
    assert len(points) >= 3 and 'class="threshold"' in near and "dot worst" in near


def test_with_api_keys_and_no_admin_token_no_page_shows_another_namespaces_transcripts(settings, engine, tmp_path, recorded):
    from dataclasses import replace

    keys = tmp_path / "api-keys"
    keys.write_text("k" * 32 + " alpha\n")
    with TestClient(create_app(replace(settings, api_keys_file=str(keys)), engine=engine)) as client:
        answer = client.post("/recognize", files={"file": ("a.wav", recorded)}, headers={"Authorization": "Bearer " + "k" * 32})
        entry = answer.json()["cache"]["entry"]
        assert client.get("/").status_code == 200
        for path in ("/console/history", f"/console/entry/{entry}", "/console/audit"):
            page = client.get(path)
            assert page.status_code == 403 and "--admin-token" in page.text and "quality" not in page.text, path
        assert client.post(f"/console/entry/{entry}/delete").status_code == 403


def _admin_client(settings, engine, token: str = "s3cret", **client_options) -> TestClient:
    from dataclasses import replace

    return TestClient(create_app(replace(settings, admin_token=token), engine=engine), **client_options)


def _sign_in(client, token: str = "s3cret"):
    answer = client.post("/console/login", data={"token": token, "next": "/console/history"}, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    return answer


def _asks_to_sign_in(page) -> bool:
    return page.status_code == 401 and 'name="token"' in page.text and "history-row" not in page.text


def test_the_sign_in_cookie_is_a_signed_session_never_the_token(settings, engine, recorded):
    with _admin_client(settings, engine, token="the-admin-token-7f3a") as client:
        recognize(client, recorded)
        assert client.post("/console/login", data={"token": "guess"}).status_code == 401
        answer = _sign_in(client, "the-admin-token-7f3a")
        cookie = answer.cookies["earmark_admin"]
        assert "the-admin-token-7f3a" not in answer.headers["set-cookie"] and "7f3a" not in cookie
        assert re.fullmatch(r"\d+\.[0-9a-f]{32}\.[0-9a-f]{64}", cookie), cookie
        assert "max-age=43200" in answer.headers["set-cookie"].lower()  # console_session_s, 12 h by default
        assert "secure" not in answer.headers["set-cookie"].lower()  # plain http: a Secure cookie would never come back
        html = client.get("/console/history").text
        assert "quality and training" in html and 'action="/console/logout"' in html
        # a second sign-in is another session: a random id, not a function of the token alone
        assert _sign_in(client, "the-admin-token-7f3a").cookies["earmark_admin"] != cookie
        metrics = client.get("/metrics").text
    assert 'earmark_console_logins_total{outcome="ok"} 2.0' in metrics
    assert 'earmark_console_logins_total{outcome="wrong_token"} 1.0' in metrics


def test_expired_tampered_foreign_and_malformed_cookies_get_the_sign_in_form(settings, engine, recorded):
    import time

    from earmark.service.console.session import issue_session

    with _admin_client(settings, engine) as client:
        recognize(client, recorded)
        valid = issue_session("s3cret", 60)
        expired = issue_session("s3cret", 60, now=time.time() - 3600)
        expiry, session_id, signature = expired.split(".")
        cases = {
            "expired": expired,
            "expiry moved on": f"{int(expiry) + 7200}.{session_id}.{signature}",
            "id changed": f"{expiry}.{'0' * 32}.{signature}",
            "another token's": issue_session("other-token", 60),
            "the token itself (the old cookie)": "s3cret",
            "no signature": f"{expiry}.{session_id}",
            "junk": "x" * 4000,
            "empty parts": "..",
        }
        assert "quality and training" in client.get("/console/history", headers={"Cookie": f"earmark_admin={valid}"}).text
        for name, cookie in cases.items():
            page = client.get("/console/history", headers={"Cookie": f"earmark_admin={cookie}"})
            assert _asks_to_sign_in(page), name
            assert ("has expired" in page.text) == (name == "expired"), name
            assert 'action="/console/logout"' not in page.text, name
        metrics = client.get("/metrics").text
    assert 'earmark_console_sessions_refused_total{reason="expired"} 1.0' in metrics
    assert f'earmark_console_sessions_refused_total{{reason="invalid"}} {len(cases) - 1}.0' in metrics


def test_sign_out_clears_the_cookie_and_the_next_page_asks_again(settings, engine, recorded):
    with _admin_client(settings, engine) as client:
        recognize(client, recorded)
        _sign_in(client)
        assert "quality and training" in client.get("/console/history").text
        refused = client.post("/console/logout", headers={"Origin": "http://evil.example"}, follow_redirects=False)
        assert refused.status_code == 403 and "set-cookie" not in refused.headers
        assert "quality and training" in client.get("/console/history").text  # still signed in
        answer = client.post("/console/logout", headers={"Origin": "http://testserver"}, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"] == "/console/login?signed_out=1"
        assert re.search(r"earmark_admin=[^;]*;.*max-age=0", answer.headers["set-cookie"].lower())
        assert "earmark_admin" not in client.cookies
        form = client.get(answer.headers["location"])
        assert form.status_code == 200 and "You are signed out." in form.text and 'action="/console/logout"' not in form.text
        assert 'name="next" value="/console/history"' in form.text
        assert _asks_to_sign_in(client.get("/console/history"))
        assert 'earmark_console_pages_total{page="logout"} 1.0' in client.get("/metrics").text


def test_a_changed_admin_token_signs_every_session_out(settings, engine, recorded):
    with _admin_client(settings, engine, token="first-token") as client:
        recognize(client, recorded)
        cookie = _sign_in(client, "first-token").cookies["earmark_admin"]
    sent = {"Cookie": f"earmark_admin={cookie}"}
    with _admin_client(settings, engine, token="first-token") as client:  # a restart, same token: still signed in
        assert "quality and training" in client.get("/console/history", headers=sent).text
    with _admin_client(settings, engine, token="second-token") as client:
        assert _asks_to_sign_in(client.get("/console/history", headers=sent))
        assert "quality and training" in client.get("/console/history", headers={"Authorization": "Bearer second-token"}).text


def test_the_cookie_is_secure_when_the_request_came_over_https(settings, engine):
    with _admin_client(settings, engine, base_url="https://testserver") as client:
        answer = _sign_in(client)
        assert "; secure" in answer.headers["set-cookie"].lower()
        cleared = client.post("/console/logout", headers={"Origin": "https://testserver"}, follow_redirects=False)
        assert "; secure" in cleared.headers["set-cookie"].lower()


def test_earmark_serve_behind_a_local_tls_proxy_sets_a_secure_cookie(tmp_path):
    """uvicorn (as `earmark serve` runs it) honours X-Forwarded-Proto from loopback peers: a TLS
    proxy on the same machine gets a Secure cookie; plain http gets none."""
    import httpx

    from tests.test_cli import serving

    with serving(tmp_path, "--data-dir", str(tmp_path / "d"), "--engine", "pocketsphinx", "--admin-token", "s3cret") as url:
        form = {"token": "s3cret", "next": "/console/history"}
        proxied = httpx.post(f"{url}/console/login", data=form, headers={"X-Forwarded-Proto": "https"})
        plain = httpx.post(f"{url}/console/login", data=form)
    assert proxied.status_code == 303 and "; secure" in proxied.headers["set-cookie"].lower()
    assert plain.status_code == 303 and "secure" not in plain.headers["set-cookie"].lower()


def test_forms_posted_through_a_proxy_that_rewrites_host_pass_and_other_origins_do_not(client, recorded):
    entry = recognize(client, recorded)["cache"]["entry"]
    proxy = {"Host": "127.0.0.1:8000", "X-Forwarded-Host": "console.example, other.example"}
    for origin in ("http://evil.example", "https://other.example", "null", "http://127.0.0.1:8001"):
        refused = client.post(f"/console/entry/{entry}/delete", headers={**proxy, "Origin": origin})
        assert refused.status_code == 403, origin
    assert client.post(f"/console/entry/{entry}/delete", headers={"Origin": "https://console.example"}).status_code == 403
    assert recognize(client, recorded)["cache"]["tier"] == "exact"  # nothing was deleted
    referred = {**proxy, "Referer": f"https://console.example/console/entry/{entry}"}
    deleted = client.post(f"/console/entry/{entry}/delete", headers=referred, follow_redirects=False)
    assert deleted.status_code == 303
    assert recognize(client, recorded)["cache"]["tier"] == "miss"
    signed_out = client.post("/console/logout", headers={**proxy, "Origin": "https://console.example"}, follow_redirects=False)
    assert signed_out.status_code == 303


def test_console_session_s_sets_how_long_a_sign_in_lasts(settings, engine, tmp_path):
    import time
    from dataclasses import replace

    from earmark.service.config import ConfigError, load_settings

    config = tmp_path / "earmark.toml"
    config.write_text("console_session_s = 600\n")
    assert load_settings(config).console_session_s == 600.0
    with pytest.raises(ConfigError, match=r"console_session_s = 0.0 is not allowed: use a number above 0"):
        load_settings(console_session_s=0)
    with _admin_client(replace(settings, console_session_s=600), engine) as client:
        answer = _sign_in(client)
    assert "max-age=600" in answer.headers["set-cookie"].lower()
    expiry = int(answer.cookies["earmark_admin"].split(".")[0])
    assert time.time() + 500 < expiry <= time.time() + 600
