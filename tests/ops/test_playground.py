"""The playground at ``/``, driven end to end in headless Chromium (Debian's ``chromium``, through
Playwright) against a real HTTP server and a real worker on the tiny checkpoint: a key entered,
a conversation made, a voice bound, two turns typed for two speakers, each heard through the
stream as it was generated (every stored byte arrived) and shown through its job's states; and a
turn recorded from the microphone (Chromium's fake device, a beep), stored as a provided turn
that the next generated turn follows."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from tests.integration.test_voices import make_voice, wait_voice
from tests.stack import Stack, running_stack

KEY = "key-playground"
UUID = re.compile(r"^[0-9a-f-]{36}$")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("playground")
    with running_stack("sqlite", tmp, tiny_model_dir, key=KEY) as s:
        yield s


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


def launch(playwright: Playwright, *args: str) -> Browser:
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is not installed: `make browser` (make test does it)"
    return playwright.chromium.launch(
        executable_path=chromium,
        args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required", *args],
    )


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    # Chromium's fake microphone (a beep), which pages may use without a prompt
    b = launch(playwright, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream")
    yield b
    b.close()


@contextmanager
def opened(browser: Browser, server: str) -> Iterator[Page]:
    context = browser.new_context()  # a fresh localStorage: no key remembered
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    p.goto(server)
    yield p
    context.close()
    assert not errors, errors  # no uncaught script error on the way


@pytest.fixture
def page(browser: Browser, server: str) -> Iterator[Page]:
    with opened(browser, server) as p:
        yield p


def stored_pcm(stack: Stack, cid: str, tid: str) -> bytes:
    r = stack.client.get(f"/v1/conversations/{cid}/turns/{tid}/audio?format=pcm")
    assert r.status_code == 200, r.text
    return r.content


def new_conversation(page: Page) -> str:
    page.fill("#key", KEY)
    page.click("#new")
    expect(page.locator("#conversation")).to_have_attribute("data-id", UUID)
    cid = page.locator("#conversation").get_attribute("data-id")
    assert cid
    return cid


def speak(page: Page, speaker: str, text: str, count: int) -> None:
    page.select_option("#speaker", label=speaker)
    page.fill("#text", text)
    page.click("#speak")
    expect(page.locator("li.turn")).to_have_count(count)


def test_a_two_speaker_conversation_streams_each_turn(stack: Stack, page: Page) -> None:
    make_voice(stack, "anna")
    assert wait_voice(stack, "anna")["status"] == "ready"
    cid = new_conversation(page)

    # Bind speaker A to the voice, as the page lists it.
    page.select_option("#voice-0", value="anna")
    page.click("#bind")
    expect(page.locator("#bound")).to_have_text("bound: A = anna")
    assert stack.client.get(f"/v1/conversations/{cid}").json()["speakers"] == {"0": "anna"}

    speak(page, "A", "Hello there, how was the trip?", 1)
    speak(page, "B", "Long, but worth it.", 2)
    rows = page.locator("li.turn")
    for i in range(2):
        expect(rows.nth(i)).to_have_attribute("data-status", "succeeded", timeout=120_000)
        expect(rows.nth(i)).to_have_attribute("data-streamed", "true", timeout=60_000)
        expect(rows.nth(i).locator("audio")).to_have_count(1)  # the stored audio, offered
    expect(page.locator("#model")).to_contain_text("test model")
    expect(page.locator("#error")).to_be_hidden()

    turns = stack.client.get(f"/v1/conversations/{cid}/turns").json()
    assert [(t["speaker"], t["text"], t["status"]) for t in turns] == [
        (0, "Hello there, how was the trip?", "succeeded"),
        (1, "Long, but worth it.", "succeeded"),
    ]
    for i, turn in enumerate(turns):
        row = rows.nth(i)
        assert row.get_attribute("data-turn-id") == turn["id"]
        # Every stored byte came through the stream, as it was generated.
        streamed = int(row.get_attribute("data-pcm-bytes") or 0)
        assert streamed == len(stored_pcm(stack, cid, turn["id"])) > 0
    # The page's player holds real audio: the Web Audio context ran at 24 kHz.
    rate: Any = page.evaluate("state.audio && state.audio.sampleRate")
    assert rate == 24_000
    assert np.frombuffer(stored_pcm(stack, cid, turns[1]["id"]), dtype="<i2").any()


def test_without_a_key_the_page_says_why(page: Page) -> None:
    page.click("#new")
    expect(page.locator("#error")).to_contain_text("401 unauthorized")
    expect(page.locator("#speak")).to_be_disabled()


def test_a_recorded_turn_is_stored_and_heard_by_the_next(stack: Stack, page: Page) -> None:
    cid = new_conversation(page)
    mic = page.locator("#mic")
    page.select_option("#speaker", label="A")
    page.click("#record")
    expect(mic).to_have_attribute("data-state", "recording")
    started = time.monotonic()
    page.wait_for_timeout(1500)
    page.click("#stop")
    wall_s = time.monotonic() - started
    expect(mic).to_have_attribute("data-state", "recorded")
    expect(page.locator("#speak")).to_have_text("Send recording")
    expect(page.locator("#clip")).to_be_visible()  # the clip, to hear before sending
    samples = int(mic.get_attribute("data-samples") or 0)
    rate = int(mic.get_attribute("data-rate") or 0)
    page_rms = float(mic.get_attribute("data-rms") or 0)
    recorded_s = samples / rate
    assert 0.5 * wall_s < recorded_s < wall_s + 0.5, (recorded_s, wall_s)

    # Sent without a transcript: the server refuses it, the page says why and keeps the clip.
    page.click("#speak")
    expect(page.locator("#error")).to_contain_text("422 empty_text: text is empty")
    expect(mic).to_have_attribute("data-state", "recorded")
    expect(page.locator("li.turn")).to_have_count(0)
    assert stack.client.get(f"/v1/conversations/{cid}/turns").json() == []

    page.fill("#text", "Testing, one, two, three.")
    page.click("#speak")
    rows = page.locator("li.turn")
    expect(rows).to_have_count(1)
    expect(page.locator("#error")).to_be_hidden()
    expect(mic).to_have_attribute("data-state", "idle")
    expect(page.locator("#speak")).to_have_text("Speak")
    expect(page.locator("#speaker")).to_have_value("1")  # B answers next
    row = rows.nth(0)
    expect(row).to_have_attribute("data-source", "provided")
    expect(row.locator(".who")).to_have_text("A (recorded):")
    expect(row).to_have_attribute("data-status", "succeeded", timeout=120_000)
    expect(row.locator("audio")).to_have_count(1)  # the stored audio, offered

    [provided] = stack.client.get(f"/v1/conversations/{cid}/turns").json()
    assert row.get_attribute("data-turn-id") == provided["id"]
    assert (provided["source"], provided["speaker"], provided["text"], provided["status"]) == (
        "provided",
        0,
        "Testing, one, two, three.",
        "succeeded",
    )
    job = stack.client.get(f"/v1/jobs/{provided['job_id']}").json()
    assert (job["kind"], job["status"]) == ("encode", "succeeded")
    # Stored as recorded: the page's clip resampled to 24 kHz, as long and as loud.
    stored = np.frombuffer(stored_pcm(stack, cid, provided["id"]), dtype="<i2") / 32768.0
    assert abs(len(stored) - samples * 24_000 / rate) <= 24  # within 1 ms
    assert provided["duration_ms"] == pytest.approx(1000 * recorded_s, abs=2)
    rms = float(np.sqrt(np.mean(stored**2)))
    assert rms > 1e-3, rms  # not silent: the fake device's beeps
    assert rms == pytest.approx(page_rms, rel=0.2)

    # The next turn, typed, is spoken after it, with it as context.
    speak(page, "B", "Sounds good to me.", 2)
    expect(rows.nth(1)).to_have_attribute("data-status", "succeeded", timeout=120_000)
    expect(rows.nth(1)).to_have_attribute("data-streamed", "true", timeout=60_000)
    turns = stack.client.get(f"/v1/conversations/{cid}/turns").json()
    assert [(t["source"], t["speaker"], t["status"]) for t in turns] == [
        ("provided", 0, "succeeded"),
        ("generated", 1, "succeeded"),
    ]
    assert turns[0]["index"] < turns[1]["index"]
    generated = stack.client.get(f"/v1/jobs/{turns[1]['job_id']}").json()
    assert (generated["kind"], generated["status"]) == ("generate", "succeeded")
    expect(page.locator("#error")).to_be_hidden()


def test_a_denied_microphone_is_said(playwright: Playwright, server: str) -> None:
    # the fake device is there, but Chromium's fake prompt answers "Block": NotAllowedError
    denying = launch(
        playwright, "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream=deny"
    )
    try:
        with opened(denying, server) as page:
            new_conversation(page)
            page.click("#record")
            expect(page.locator("#error")).to_contain_text("Microphone permission denied")
            expect(page.locator("#mic")).to_have_attribute("data-state", "idle")
            expect(page.locator("#record")).to_be_enabled()  # to try again
    finally:
        denying.close()
