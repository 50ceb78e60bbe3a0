"""Voice agents' two first-audio figures, over real HTTP and a real WebSocket against real
``parley api`` and ``parley worker`` processes, each side by side with its baseline in one run.

- **Long input**: ``POST /v1/audio/speech`` (``stream_format: "audio"``, ``response_format:
  "pcm"``) with a 4,096-character input of ordinary prose against a one-sentence input (the
  long one's first sentence, so both speak the same first segment): time from the request's
  start to its first audio byte. Rounds alternate which goes first; the first round warms up.
- **Live socket**: on ``/v1/conversations/{cid}/live``, the first sentence is sent without its
  trailing space (no sentence is complete yet), the turn starts and its job runs, waiting for
  text; after a short wait, ``" " + more text`` completes the sentence: time from that send to
  the first binary frame. Against it, the same sentence as a REST turn: time from ``POST
  …/turns`` to the first byte of ``…/stream?format=pcm`` opened at once (one segment's
  first-frame time, the same path as ``bench.service_bench.first_audio``).

The tiny random checkpoint never ends a segment by itself, so every turn is stopped once its
first audio is in (a cancel, or the socket's ``cancel``) and waited for before the next one:
each measurement starts with the worker idle. Every measurement has a fresh conversation (no
context), deleted afterwards. ``python -m bench.voice_agent`` runs this part alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import connect

from bench.summary import print_and_save
from shared.sentences import split_segments

FINISHED = ("succeeded", "failed", "cancelled")
LONG_CHARS = 4096
# The live socket's wait between the turn's job running (waiting for text) and the text that
# completes its first sentence: "a little", as a client's next token would come.
LIVE_PAUSE_S = 0.2

# Ordinary prose, each sentence different: the long input is made of these, in order.
STORY = [
    "The harbour was quiet when Mara came down to the water that morning.",
    "Gulls circled the masts, and somewhere a radio played an old song about the sea.",
    "She walked the length of the pier twice before she noticed that the blue boat was gone.",
    "Her brother had promised to leave it tied at the third post, as he always did.",
    "Nobody else in the village had a key to the padlock on its chain.",
    "She asked the fisherman mending nets by the slipway whether he had seen anyone.",
    "He shook his head, then pointed with his needle towards the headland, where the fog sat.",
    '"Went out early," he said, "before the light, with the engine off and the oars out."',
    "Mara thanked him and climbed the steps to the harbour master's office.",
    "The office smelled of coffee, tar and the paraffin heater that never quite warmed it.",
    "Old Tomas looked up from his ledger and put down his pen with great care.",
    "He said that the weather report for the afternoon was not good, and that he was worried.",
    "A front was coming in from the west, faster than anyone had expected on Sunday.",
    "If the boat was still out past three, he would call the lifeboat station at the point.",
    "Mara asked whether she could borrow the radio, and he pushed it across the desk to her.",
    "For ten minutes she called her brother's name into the hiss and heard nothing back.",
    "Then, faintly, a voice answered, broken by static, saying something about the rocks.",
    "Tomas stood up so quickly that his chair fell over behind him.",
    "The rocks off the headland had taken three boats in his time, and one of them his own.",
    "He reached for his coat, and Mara was already at the door, holding it open against the wind.",
    "They took the harbour launch, a heavy old thing with a diesel that coughed before it caught.",
    "Beyond the breakwater the swell was longer than it had looked from the shore.",
    "Spray came over the bow in sheets, and the fog closed behind them like a curtain.",
    "Tomas steered by the compass and by memory, counting the seconds between the buoys.",
    "Mara kept the radio pressed to her ear, asking her brother again and again where he was.",
    "At last he answered clearly: he was in the lee of the big rock, and the engine was dead.",
    "He had gone out to lift his lobster pots before the storm, and the fuel line had split.",
    "The tide was turning, and soon the current would carry him onto the reef.",
    "Tomas swore under his breath and opened the throttle as far as it would go.",
    "They found the blue boat ten minutes later, rocking in the grey water, oars shipped.",
    "Her brother was soaked and shaking, but he grinned when he saw them and waved both arms.",
    "Getting a line across took three tries, because the waves kept pulling the boats apart.",
    "When it held, Tomas towed them slowly back along the edge of the fog, watching the rocks.",
    "By the time they reached the breakwater the first rain of the storm was hitting the deck.",
    "Half the village was waiting on the pier, some with blankets and some with flasks of tea.",
    "Nobody said much; they helped tie up the boats and walked the three of them to the cafe.",
    "Inside, the windows steamed up, and the owner brought bowls of soup nobody had ordered.",
    "Her brother told the story twice, and the rocks were bigger each time he told it.",
    "Tomas listened, drank his tea, and said only that a fuel line costs less than a funeral.",
    "Later, when the storm had passed, Mara walked down to the pier again, alone.",
    "The water was flat and bright, and the gulls were back on the masts as if nothing happened.",
    "She checked the knot at the third post, then checked it again, and went home to sleep.",
    "In the spring her brother bought a new engine, and he never went out before the light.",
    "Tomas retired that summer and left his ledger, his radio and his heater to the next man.",
    "The new harbour master was young, kept the office tidy and wrote everything on a computer.",
    "Still, on foggy mornings he would find Tomas on the bench outside, watching the headland.",
    "They would talk about tides and engines, and about the boats that had not come back.",
    "Mara moved to the city for work the next autumn, but she came home every summer.",
    "Each time, before she unpacked, she went down to the pier to look at the third post.",
    "The blue boat was always there, tied with the same careful knot, its paint a little paler.",
    "Her brother liked to say that the knot was hers now, and that he only borrowed it.",
]


def long_text(chars: int = LONG_CHARS) -> str:
    """Exactly ``chars`` characters of the story, in whole sentences (the last one cut at a
    word, ending in a period where it has to be), two spaces after the first few sentences to
    make up the count, as typists did."""
    sentences: list[str] = []
    pool = STORY * (1 + chars // sum(len(s) + 1 for s in STORY))
    used = -1  # no space before the first sentence
    for sentence in pool:
        if used + 1 + len(sentence) > chars:
            break
        sentences.append(sentence)
        used += 1 + len(sentence)
    left = chars - used
    if left > len(sentences) - 1:  # too few gaps to widen: end with part of the next sentence
        words, part = pool[len(sentences)].split(), ""
        for word in words:
            if len(part) + len(word) + (1 if part else 0) > left - 2:
                break
            part = f"{part} {word}" if part else word
        sentences.append(part.rstrip(",;:") + ".")
        left = chars - (used + 1 + len(sentences[-1]))
    gaps = ["  " if i < left else " " for i in range(len(sentences) - 1)]
    text = sentences[0] + "".join(g + s for g, s in zip(gaps, sentences[1:], strict=True))
    assert len(text) == chars, (len(text), chars)
    return text


def _wait_job(client: httpx.Client, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = dict(client.get(f"/v1/jobs/{job_id}").json())
        if job["status"] in FINISHED:
            return job
        time.sleep(0.02)
    raise TimeoutError(f"job {job_id} did not finish within {timeout:g} s")


def _stop(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """Cancel the job (unless it has finished) and wait until it has."""
    r = client.delete(f"/v1/jobs/{job_id}")
    if r.status_code not in (200, 409):  # 409: it had finished
        r.raise_for_status()
    return _wait_job(client, job_id)


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _first_chunk(response: httpx.Response, what: str) -> tuple[float, int]:
    """When the first audio of ``response`` came (perf_counter) and its length."""
    for chunk in response.iter_bytes():
        if chunk:
            return time.perf_counter(), len(chunk)
    raise RuntimeError(f"{what} ended before any audio")


def _speech_first_audio(client: httpx.Client, text: str, seed: int) -> dict[str, Any]:
    """One ``/v1/audio/speech`` request, streamed as PCM in a new kept conversation: ms to its
    first audio byte; then the response is closed, the turn cancelled and the conversation
    deleted."""
    body = {
        "model": "csm-1b",
        "voice": "alloy",
        "input": text,
        "response_format": "pcm",
        "stream_format": "audio",
        "seed": seed,
    }
    t0 = time.perf_counter()
    with client.stream(
        "POST", "/v1/audio/speech", json=body, headers={"X-Conversation-ID": "new"}
    ) as response:
        response.raise_for_status()
        cid, tid = response.headers["X-Conversation-ID"], response.headers["X-Conversation-Turn"]
        first, received = _first_chunk(response, "the speech response")
    turn = client.get(f"/v1/conversations/{cid}/turns/{tid}").json()
    job = _stop(client, turn["job_id"])
    total = time.perf_counter() - t0
    client.delete(f"/v1/conversations/{cid}").raise_for_status()
    return {
        "first_audio_ms": 1000 * (first - t0),
        "total_ms": 1000 * total,
        "bytes": received,
        "segments": len(turn["segments"]),
        "status": job["status"],
    }


def long_input(client: httpx.Client, *, repeats: int, chars: int = LONG_CHARS) -> dict[str, Any]:
    """First audio of a ``chars``-character input vs a one-sentence input (its first sentence)
    through ``POST /v1/audio/speech``, alternating, ``repeats`` each after a warm-up round."""
    text = long_text(chars)
    short = split_segments(text)[0]
    samples: dict[str, list[dict[str, Any]]] = {"long": [], "short": []}
    for i in range(repeats + 1):
        order = [("long", text), ("short", short)]
        for name, body in order if i % 2 else order[::-1]:
            got = _speech_first_audio(client, body, seed=i)
            if i:  # round 0 warms up
                samples[name].append(got)
    long_ms = _median([s["first_audio_ms"] for s in samples["long"]])
    short_ms = _median([s["first_audio_ms"] for s in samples["short"]])
    return {
        "repeats": repeats,
        "long_chars": len(text),
        "long_segments": samples["long"][0]["segments"],
        "short_chars": len(short),
        "long_first_audio_ms_p50": long_ms,
        "short_first_audio_ms_p50": short_ms,
        "long_over_short": long_ms / short_ms,
        "samples": samples,
    }


def _rest_first_audio(client: httpx.Client, text: str, seed: int) -> dict[str, Any]:
    """A one-sentence turn posted to a new conversation, its stream opened at once: ms from
    the POST to the first byte; then the turn is cancelled and the conversation deleted."""
    cid = client.post("/v1/conversations", json={}).json()["id"]
    t0 = time.perf_counter()
    r = client.post(
        f"/v1/conversations/{cid}/turns",
        json={"speaker": 0, "text": text, "params": {"seed": seed}},
    )
    r.raise_for_status()
    turn = r.json()
    with client.stream("GET", f"/v1/conversations/{cid}/turns/{turn['id']}/stream?format=pcm") as s:
        s.raise_for_status()
        first, received = _first_chunk(s, "the turn's stream")
    job = _stop(client, turn["job_id"])
    total = time.perf_counter() - t0
    client.delete(f"/v1/conversations/{cid}").raise_for_status()
    return {
        "first_audio_ms": 1000 * (first - t0),
        "total_ms": 1000 * total,
        "bytes": received,
        "status": job["status"],
    }


def _live_first_frame(
    client: httpx.Client, ws_base: str, first: str, rest: str, seed: int
) -> dict[str, Any]:
    """A live turn: ``first`` (a sentence without its trailing space) starts it; once its job
    runs, and ``LIVE_PAUSE_S`` later, ``" " + rest`` completes the sentence. ms from that send to
    the first binary frame; then ``cancel``, and everything up to ``turn.done`` is read."""
    cid = client.post("/v1/conversations", json={}).json()["id"]
    events: list[str] = []
    received = 0
    with connect(f"{ws_base}/v1/conversations/{cid}/live?speaker=0", open_timeout=30) as ws:

        def until(kind: str) -> dict[str, Any]:
            nonlocal received
            while True:
                message = ws.recv(timeout=60)
                if isinstance(message, bytes):
                    received += len(message)
                    events.append("audio")
                    continue
                got: dict[str, Any] = json.loads(message)
                events.append(got["type"])
                if got["type"] == "error":
                    raise RuntimeError(f"the live socket said: {got}")
                if got["type"] == kind:
                    return got

        t_open = time.perf_counter()
        ws.send(json.dumps({"type": "text", "text": first, "params": {"seed": seed}}))
        started = until("turn.started")
        t_started = time.perf_counter()
        job_id = started["job_id"]
        while client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued":
            time.sleep(0.01)
        t_running = time.perf_counter()
        time.sleep(LIVE_PAUSE_S)
        t0 = time.perf_counter()
        ws.send(json.dumps({"type": "text", "text": " " + rest}))
        while True:
            message = ws.recv(timeout=60)
            if isinstance(message, bytes):
                t_first = time.perf_counter()
                received += len(message)
                events.append("audio")
                break
            got = json.loads(message)
            events.append(got["type"])
            if got["type"] == "error":
                raise RuntimeError(f"the live socket said: {got}")
        ws.send(json.dumps({"type": "cancel"}))
        done = until("turn.done")
        total = time.perf_counter() - t0
    _wait_job(client, job_id)
    client.delete(f"/v1/conversations/{cid}").raise_for_status()
    return {
        "first_audio_ms": 1000 * (t_first - t0),
        "total_ms": 1000 * total,
        "bytes": received,
        "started_ms": 1000 * (t_started - t_open),  # first text sent → turn.started
        "running_ms": 1000 * (t_running - t_open),  # first text sent → job seen running
        "status": done["status"],
        "interrupted": done["interrupted"],
        "frames": done["frames"],
        "events": events,
    }


def live_socket(client: httpx.Client, *, repeats: int) -> dict[str, Any]:
    """First frame on the live socket after the text that completes the first sentence, vs
    one segment's first-frame time over HTTP (a REST turn of the same sentence), alternating,
    ``repeats`` each after a warm-up round."""
    ws_base = str(client.base_url).rstrip("/").replace("http://", "ws://", 1)
    sentence = STORY[0]
    first, rest = sentence, STORY[1] + " " + STORY[2]
    samples: dict[str, list[dict[str, Any]]] = {"live": [], "rest_turn": []}
    for i in range(repeats + 1):
        if i % 2:
            live = _live_first_frame(client, ws_base, first, rest, seed=i)
            rest_turn = _rest_first_audio(client, sentence, seed=i)
        else:
            rest_turn = _rest_first_audio(client, sentence, seed=i)
            live = _live_first_frame(client, ws_base, first, rest, seed=i)
        if i:  # round 0 warms up
            samples["live"].append(live)
            samples["rest_turn"].append(rest_turn)
    live_ms = _median([s["first_audio_ms"] for s in samples["live"]])
    rest_ms = _median([s["first_audio_ms"] for s in samples["rest_turn"]])
    return {
        "repeats": repeats,
        "pause_s": LIVE_PAUSE_S,
        "sentence": sentence,
        "live_first_frame_ms_p50": live_ms,
        "rest_first_audio_ms_p50": rest_ms,
        "live_over_rest": live_ms / rest_ms,
        "samples": samples,
    }


def measure(client: httpx.Client, *, repeats: int) -> dict[str, Any]:
    """Both figures, on one stack."""
    return {
        "long_input": long_input(client, repeats=repeats),
        "live_socket": live_socket(client, repeats=repeats),
    }


def rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    """``make bench``'s table rows for :func:`measure`'s result."""
    li, ls = result["long_input"], result["live_socket"]
    return [
        (
            f"speech: first audio, {li['long_chars']}-char input ({li['long_segments']} "
            "segments) / one sentence (ms, p50)",
            f"{li['long_first_audio_ms_p50']:.0f} / {li['short_first_audio_ms_p50']:.0f}  "
            f"(x{li['long_over_short']:.2f})",
        ),
        (
            "live socket: sentence completed → first frame / REST turn first audio (ms, p50)",
            f"{ls['live_first_frame_ms_p50']:.0f} / {ls['rest_first_audio_ms_p50']:.0f}  "
            f"(x{ls['live_over_rest']:.2f})",
        ),
    ]


def main() -> int:
    from bench import service_bench

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="measured rounds (plus a warm-up)")
    root = Path(__file__).resolve().parent
    parser.add_argument("--out", type=Path, default=root / "results" / "voice-agent-latest.json")
    args = parser.parse_args()
    began = time.perf_counter()
    with service_bench.stack(None) as (client, ready):
        result: dict[str, Any] = {"model": ready.get("model")}
        result.update(measure(client, repeats=args.repeats))
    result["seconds"] = time.perf_counter() - began
    print_and_save(rows(result), result, args.out)
    print(f"wrote {args.out} in {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
