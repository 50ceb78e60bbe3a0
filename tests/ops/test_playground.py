"""The playground at ``/``, driven end to end in headless Chromium (Debian's ``chromium``, through
Playwright) against a real HTTP server and a real worker on the tiny checkpoint: a key entered,
a conversation made, a voice bound, two turns typed for two speakers, each heard through the
stream as it was generated (every stored byte arrived) and shown through its job's states."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

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
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is not installed: `make browser` (make test does it)"
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"],
        )
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser, server: str) -> Iterator[Page]:
    context = browser.new_context()  # a fresh localStorage: no key remembered
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    p.goto(server)
    yield p
    context.close()
    assert not errors, errors  # no uncaught script error on the way


def stored_pcm(stack: Stack, cid: str, tid: str) -> bytes:
    r = stack.client.get(f"/v1/conversations/{cid}/turns/{tid}/audio?format=pcm")
    assert r.status_code == 200, r.text
    return r.content


def speak(page: Page, speaker: str, text: str, count: int) -> None:
    page.select_option("#speaker", label=speaker)
    page.fill("#text", text)
    page.click("#speak")
    expect(page.locator("li.turn")).to_have_count(count)


def test_a_two_speaker_conversation_streams_each_turn(stack: Stack, page: Page) -> None:
    make_voice(stack, "anna")
    assert wait_voice(stack, "anna")["status"] == "ready"
    page.fill("#key", KEY)
    page.click("#new")
    expect(page.locator("#conversation")).to_have_attribute("data-id", UUID)
    cid = page.locator("#conversation").get_attribute("data-id")
    assert cid

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
