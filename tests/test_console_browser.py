"""The web console in a real headless Chromium (Debian's chromium and chromium-driver, driven
by Selenium with both paths given, so Selenium Manager never looks for or downloads anything):
upload a WAV and see its transcript, upload its MP3 copy and see tier fuzzy with its evidence,
find both in the history, delete the entry and see the next upload miss.

Screenshots of every page (desktop and phone widths) are kept in tests/artifacts/console/
(ignored by git) for a person to look at. Skipped, with the reason, where Chromium, its driver
or Selenium is not installed (CI installs them: .ci/run)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from earmark.index.embedded import EmbeddedServer
from earmark.service.config import Settings
from tests.audio_tools import encode, fixture_bytes, read_pcm
from tests.conftest import live_server
from tests.gated_engine import GatedEngine

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "console"
WAIT_S = 90  # generous: a busy 2-core machine

try:
    import selenium  # noqa: F401

    HAVE_SELENIUM = True
except ImportError:
    HAVE_SELENIUM = False

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER and HAVE_SELENIUM),
    reason="browser tests need Debian's chromium and chromium-driver (apt-get install chromium chromium-driver) "
           "and selenium (pip install -e '.[test]'); none is downloaded",
)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,900", "--lang=en-US", "--disable-extensions"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def gated(engine):
    """The fast pocketsphinx engine behind a gate the test opens: "while a miss runs" is certain."""
    return GatedEngine(engine, open_now=False)


@pytest.fixture(scope="module")
def console(tmp_path_factory, gated):
    """A live service on its own embedded store, with the gated engine."""
    workdir = tmp_path_factory.mktemp("console-browser")
    server = EmbeddedServer(workdir / "store")
    server.start()
    settings = Settings(redis_url=server.url, key_prefix=f"earmark-browser-{uuid.uuid4().hex[:6]}:",
                        data_dir=workdir / "data")
    try:
        with live_server(settings, gated) as base:
            yield base
    finally:
        server.stop()


def screenshot(driver, name: str) -> Path:
    """The whole page at desktop width, and at a phone's width, as PNGs under tests/artifacts/console/."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for suffix, width in (("", 1280), ("-phone", 390)):
        driver.set_window_size(width, 900)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(width, min(max(height + 120, 600), 6000))
        driver.save_screenshot(str(ARTIFACTS / f"{name}{suffix}.png"))
    driver.set_window_size(1280, 900)
    return ARTIFACTS / f"{name}.png"


def upload(driver, base: str, path: Path, expected_cards: int, *, while_running=None):
    """Choose a file on the upload page, press Recognize and wait for its card to be answered
    (calling `while_running` first, while the card is still working)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    if not driver.current_url.rstrip("/").endswith(base.split("//")[1]):
        driver.get(base + "/")
    driver.find_element(By.ID, "files").send_keys(str(path))
    assert path.name in driver.find_element(By.ID, "chosen").text
    driver.find_element(By.ID, "go").click()
    if while_running is not None:
        while_running()
    WebDriverWait(driver, WAIT_S).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result[data-tier], .result.failed")) >= expected_cards)
    card = driver.find_elements(By.CSS_SELECTOR, ".result")[0]  # newest first
    assert "failed" not in card.get_attribute("class"), card.text
    return card


def test_upload_fuzzy_evidence_history_delete_then_miss(browser, console, gated, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    recorded = fixture_bytes("recorded.wav")
    wav = tmp_path / "recorded.wav"
    wav.write_bytes(recorded)
    mp3 = tmp_path / "recorded-copy.mp3"
    mp3.write_bytes(encode(*read_pcm(recorded), fmt="mp3", codec="libmp3lame", bitrate=48000))

    browser.get(console + "/")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Recognize audio"
    screenshot(browser, "1-upload-empty")

    def progress_while_the_engine_runs():
        assert gated.started.wait(WAIT_S), "the engine was never called"
        WebDriverWait(browser, WAIT_S).until(
            lambda d: "engine is transcribing" in d.find_element(By.CSS_SELECTOR, ".result .status-text").text)
        working = browser.find_element(By.CSS_SELECTOR, ".result")
        assert working.get_attribute("aria-busy") == "true"
        assert working.find_element(By.CSS_SELECTOR, "progress").is_displayed()
        screenshot(browser, "2-upload-miss-running")
        gated.gate.set()

    # A WAV: a progress indicator while the engine runs; then its transcript, tier, entry, time
    # taken and engine time.
    card = upload(browser, console, wav, 1, while_running=progress_while_the_engine_runs)
    assert card.get_attribute("data-tier") == "miss"
    entry = card.get_attribute("data-entry")
    assert len(entry) == 32
    transcript = card.find_element(By.CSS_SELECTOR, ".transcript").text
    assert len(set(transcript.split()) & {"your", "call", "is", "being", "recorded", "for", "quality", "and", "training"}) >= 4
    facts = card.find_element(By.CSS_SELECTOR, ".facts").text
    assert entry in facts and "Engine time spent" in facts and "Time taken" in facts

    # Its MP3 copy: a fuzzy hit on the same entry, with the evidence and the stretch curve.
    card = upload(browser, console, mp3, 2)
    assert (card.get_attribute("data-tier"), card.get_attribute("data-entry")) == ("fuzzy", entry)
    assert card.find_element(By.CSS_SELECTOR, ".tier").text.lower() == "fuzzy"
    assert card.find_element(By.CSS_SELECTOR, ".transcript").text == transcript
    facts = card.find_element(By.CSS_SELECTOR, ".facts").text
    assert "Engine time saved" in facts and "Verified score" in facts
    evidence = card.find_element(By.CSS_SELECTOR, ".evidence")
    assert evidence.is_displayed()
    assert evidence.find_element(By.CSS_SELECTOR, ".reason").text.startswith("accepted: worst stretch")
    points = evidence.find_element(By.CSS_SELECTOR, "svg.chart polyline").get_attribute("points").split()
    assert len(points) >= 3  # one point per ~1 s stretch of a 4 s recording
    screenshot(browser, "3-upload-results")

    # History: both recognitions, newest first, each linking to the entry; search finds them.
    browser.find_element(By.LINK_TEXT, "History").click()
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.history-row")
    assert [(row.get_attribute("data-tier"), row.get_attribute("data-entry")) for row in rows] == [
        ("fuzzy", entry), ("miss", entry)]
    screenshot(browser, "4-history")
    search = browser.find_element(By.ID, "q")
    search.send_keys("zebra")  # htmx replaces the results as one types
    WebDriverWait(browser, WAIT_S).until(lambda d: not d.find_elements(By.CSS_SELECTOR, "tr.history-row"))
    search.clear()
    search.send_keys("training")
    WebDriverWait(browser, WAIT_S).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr.history-row")) == 2)

    # The entry page, then Delete.
    browser.find_elements(By.CSS_SELECTOR, "a.entry-link")[0].click()
    assert entry in browser.find_element(By.TAG_NAME, "h1").text
    assert browser.find_element(By.ID, "transcript").text == transcript
    assert browser.find_element(By.ID, "hit-count").text == "1"
    screenshot(browser, "5-entry")
    browser.find_element(By.ID, "delete").click()
    WebDriverWait(browser, WAIT_S).until(expected_conditions.alert_is_present()).accept()
    WebDriverWait(browser, WAIT_S).until(lambda d: "deleted=" in d.current_url)
    assert "was deleted" in browser.find_element(By.CSS_SELECTOR, ".notice").text
    screenshot(browser, "6-history-after-delete")

    # The next upload of the WAV runs the engine again; chosen together with its MP3 copy (one
    # file input, two files), the two are answered in turn: the WAV misses, then the copy hits it.
    browser.get(console + "/")
    browser.find_element(By.ID, "files").send_keys(f"{wav}\n{mp3}")
    assert "2 files chosen" in browser.find_element(By.ID, "chosen").text
    browser.find_element(By.ID, "go").click()
    WebDriverWait(browser, WAIT_S).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result[data-tier]")) == 2)
    cards = {card.find_element(By.CSS_SELECTOR, ".file-name").text: card for card in browser.find_elements(By.CSS_SELECTOR, ".result")}
    assert cards["recorded.wav"].get_attribute("data-tier") == "miss"
    assert cards["recorded.wav"].find_element(By.CSS_SELECTOR, ".transcript").text == transcript
    assert (cards["recorded-copy.mp3"].get_attribute("data-tier"), cards["recorded-copy.mp3"].get_attribute("data-entry")) == (
        "fuzzy", entry)

    browser.find_element(By.LINK_TEXT, "Audit").click()
    assert browser.find_element(By.ID, "stat-recognitions").text == "4"  # miss, fuzzy, then both again
    screenshot(browser, "7-audit")


def test_a_partial_answer_draws_its_reused_span_on_the_recordings_timeline(browser, console, gated, tmp_path):
    """Segment reuse (issue 24) in the console: a call holding a cached recording is answered
    `partial`, and its card draws the recording's timeline with the reused stretch (linking to
    its entry) and the engine's and saved times."""
    import numpy as np
    from selenium.webdriver.common.by import By

    gated.gate.set()
    weather, rate = read_pcm(fixture_bytes("weather.wav"))
    reading, reading_rate = read_pcm(fixture_bytes("librivox_0930.flac"))
    assert rate == 22050 and reading_rate == 16000
    reading = np.interp(np.arange(0, len(reading), 16000 / rate), np.arange(len(reading)), reading)
    prompt = tmp_path / "weather.wav"
    prompt.write_bytes(fixture_bytes("weather.wav"))
    call = tmp_path / "call.wav"
    call.write_bytes(encode(np.concatenate([weather, np.zeros(int(0.6 * rate)), reading]), rate, fmt="wav", codec="pcm_s16le"))

    browser.get(console + "/")
    cached = upload(browser, console, prompt, 1)
    entry = cached.get_attribute("data-entry")
    card = upload(browser, console, call, 2)
    assert card.get_attribute("data-tier") == "partial"
    facts = card.find_element(By.CSS_SELECTOR, ".facts").text
    assert "Engine time saved" in facts and "1 reused recording" in facts
    timeline = card.find_element(By.CSS_SELECTOR, ".timeline")
    assert timeline.is_displayed()
    [link] = timeline.find_elements(By.CSS_SELECTOR, "svg a")
    assert link.get_dom_attribute("href") == "/console/entry/" + entry
    assert "answered from cached recordings" in timeline.find_element(By.TAG_NAME, "figcaption").text
    screenshot(browser, "8-partial")


def test_sign_in_with_the_admin_token_then_sign_out(browser, tmp_path, engine):
    """With an admin token: History asks for it, the form signs in (a cookie without the
    token), Sign out in the nav ends it and History asks again."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server = EmbeddedServer(tmp_path / "store")
    server.start()
    settings = Settings(redis_url=server.url, key_prefix=f"earmark-browser-{uuid.uuid4().hex[:6]}:",
                        data_dir=tmp_path / "data", admin_token="browser-admin-token")
    try:
        with live_server(settings, engine) as base:
            browser.delete_all_cookies()
            browser.get(base + "/console/history")
            assert browser.find_element(By.TAG_NAME, "h1").text == "Admin token needed"
            assert not browser.find_elements(By.CSS_SELECTOR, "form.signout")
            browser.find_element(By.ID, "token").send_keys("browser-admin-token")
            browser.find_element(By.CSS_SELECTOR, "form[action='/console/login'] button").click()
            WebDriverWait(browser, WAIT_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, "form.signout"))
            assert browser.current_url == base + "/console/history"
            cookie = browser.get_cookie("earmark_admin")
            assert cookie["httpOnly"] and "browser-admin-token" not in cookie["value"]
            screenshot(browser, "8-signed-in-history")
            browser.find_element(By.CSS_SELECTOR, "form.signout button").click()
            WebDriverWait(browser, WAIT_S).until(lambda d: "signed_out=1" in d.current_url)
            assert "You are signed out." in browser.find_element(By.CSS_SELECTOR, ".notice").text
            assert browser.get_cookie("earmark_admin") is None
            browser.get(base + "/console/history")
            assert browser.find_element(By.TAG_NAME, "h1").text == "Admin token needed"
    finally:
        server.stop()
