"""The load test's core: many concurrent clients against one Parley server over HTTP.

Each conversation is a task that creates its conversation, posts its turns one right after the
other (each as soon as the previous is accepted, so they queue and the server orders them),
listens to some of them through the stream endpoint, and polls its jobs to the end. Pollers
meanwhile ask for jobs and turn lists in a loop. At the end every conversation is read back:
each accepted post must be exactly one turn, succeeded, with audio that downloads.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from bench import cpu
from bench.load_client import LoadClient, Recorder

FINISHED = ("succeeded", "failed", "cancelled")
BYTES_PER_MS = 48  # 16-bit mono PCM at 24 kHz

POST_CONVERSATION = "POST /v1/conversations"
POST_TURN = "POST /v1/conversations/{cid}/turns"
GET_JOB = "GET /v1/jobs/{jid}"
LIST_TURNS = "GET /v1/conversations/{cid}/turns"
STREAM = "GET /v1/conversations/{cid}/turns/{tid}/stream"
GET_AUDIO = "GET /v1/conversations/{cid}/turns/{tid}/audio"


@dataclass(frozen=True)
class LoadConfig:
    conversations: int = 16
    turns: int = 4  # per conversation
    pollers: int = 2
    frames: int = 12  # per turn: max_audio_length_ms = frames × 80
    stream: int = 4  # turns also listened to through the stream endpoint
    poll_interval_s: float = 0.1  # a conversation's wait between polls of its job
    poller_pause_s: float = 0.0  # a poller's wait between requests
    timeout_s: float = 600.0  # for the whole load phase
    max_retries: int = 50  # resends of one request after 429s
    warm_up: bool = True  # one turn through the stack first, outside the figures

    def streamed(self) -> set[tuple[int, int]]:
        """(conversation, turn) pairs to listen to, spread over conversations and positions."""
        k = min(self.stream, self.conversations * self.turns)
        return {(i % self.conversations, i * self.turns // k) for i in range(k)}


@dataclass
class Posted:
    """An accepted turn, and what became of it."""

    conversation_id: str
    turn_id: str
    job_id: str
    sent_wall: float  # time.time() when the POST was sent
    status: str = "unknown"
    succeeded_after_ms: float | None = None  # POST sent → the job's finished_at
    streamed: int | None = None  # bytes read from the stream endpoint, when listened to


@dataclass
class LoadRun:
    """Everything the load phase and the read-back found."""

    config: LoadConfig
    recorder: Recorder = field(default_factory=Recorder)
    conversations: list[str] = field(default_factory=list)
    posted: list[Posted] = field(default_factory=list)
    rejected_posts: int = 0  # turn posts that ended in neither 202 nor an accepted retry
    first_byte_ms: list[float] = field(default_factory=list)
    load_s: float = 0.0
    load_requests: int = 0
    # Read-back.
    verified: int = 0  # accepted, succeeded, audio downloaded
    duplicates: int = 0  # turns listed beyond the accepted posts
    audio_ms: int = 0  # of the verified turns
    stream_mismatches: int = 0  # streams whose bytes differ from the stored audio
    cpu_cores: dict[str, float] = field(default_factory=dict)  # during the load phase

    @property
    def lost(self) -> int:
        return len(self.posted) - self.verified


async def drive(
    base_url: str,
    config: LoadConfig,
    *,
    key: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> LoadRun:
    """Run the load against ``base_url``, then read every conversation back."""
    run = LoadRun(config=config)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, timeout=120, limits=limits, transport=transport
    ) as http:
        if config.warm_up:
            await _warm_up(LoadClient(http, Recorder(), max_retries=config.max_retries), run)
        client = LoadClient(http, run.recorder, max_retries=config.max_retries)
        pollers = [asyncio.create_task(_poller(client, run)) for _ in range(config.pollers)]
        cpu_before = cpu.snapshot()
        began = time.perf_counter()
        try:
            async with asyncio.timeout(config.timeout_s):
                await asyncio.gather(
                    *(_conversation(client, run, i) for i in range(config.conversations))
                )
        except TimeoutError:
            pass  # what did not finish shows up as lost turns
        finally:
            # No await until the pollers are cancelled: a request they have in flight now is
            # dropped, not counted after the phase ended.
            run.load_s = time.perf_counter() - began
            run.cpu_cores = cpu.usage(cpu_before, cpu.snapshot())
            for task in pollers:
                task.cancel()
            run.load_requests = run.recorder.requests
            await asyncio.gather(*pollers, return_exceptions=True)
        await read_back(client, run)
    return run


async def _warm_up(client: LoadClient, run: LoadRun) -> None:
    """One turn posted, listened to and polled to its end, so the figures start warm."""
    r = await client.request("POST", POST_CONVERSATION, "/v1/conversations", json={})
    if r is None or r.status_code != 201:
        return
    cid = str(r.json()["id"])
    body = {"speaker": 0, "text": "Warm up.", "params": {"max_audio_length_ms": 160}}
    r = await client.request("POST", POST_TURN, f"/v1/conversations/{cid}/turns", json=body)
    if r is None or r.status_code != 202:
        return
    turn = r.json()
    posted = Posted(cid, str(turn["id"]), str(turn["job_id"]), time.time())
    await _listen(client, LoadRun(config=run.config), posted, time.perf_counter())
    await _wait_job(client, run, posted)


async def _conversation(client: LoadClient, run: LoadRun, index: int) -> None:
    config = run.config
    r = await client.request("POST", POST_CONVERSATION, "/v1/conversations", json={})
    if r is None or r.status_code != 201:
        run.rejected_posts += config.turns
        return
    cid = str(r.json()["id"])
    run.conversations.append(cid)
    mine: list[Posted] = []
    listeners: list[asyncio.Task[None]] = []
    try:
        await _post_turns(client, run, index, cid, mine, listeners)
        for posted in mine:
            await _wait_job(client, run, posted)
        await asyncio.gather(*listeners)
    finally:  # on the load phase's timeout too
        for task in listeners:
            task.cancel()


async def _post_turns(
    client: LoadClient,
    run: LoadRun,
    index: int,
    cid: str,
    mine: list[Posted],
    listeners: list[asyncio.Task[None]],
) -> None:
    config = run.config
    streamed = config.streamed()
    for t in range(config.turns):
        sent_wall, sent = time.time(), time.perf_counter()
        body = {
            "speaker": t % 2,
            "text": f"Load test, conversation {index}, turn {t}.",
            "params": {"max_audio_length_ms": config.frames * 80, "seed": index * 1000 + t},
        }
        r = await client.request("POST", POST_TURN, f"/v1/conversations/{cid}/turns", json=body)
        if r is None or r.status_code != 202:
            run.rejected_posts += 1
            continue
        turn = r.json()
        posted = Posted(cid, str(turn["id"]), str(turn["job_id"]), sent_wall)
        mine.append(posted)
        run.posted.append(posted)
        if (index, t) in streamed:
            listeners.append(asyncio.create_task(_listen(client, run, posted, sent)))


async def _listen(client: LoadClient, run: LoadRun, posted: Posted, sent: float) -> None:
    url = f"/v1/conversations/{posted.conversation_id}/turns/{posted.turn_id}/stream?format=pcm"
    got = await client.stream(STREAM, url, since=sent)
    if got is not None and got.status == 200:
        posted.streamed = got.size
        if got.first_byte_ms is not None:
            run.first_byte_ms.append(got.first_byte_ms)


async def _wait_job(client: LoadClient, run: LoadRun, posted: Posted) -> None:
    while True:
        r = await client.request("GET", GET_JOB, f"/v1/jobs/{posted.job_id}")
        if r is not None and r.status_code == 200:
            job = r.json()
            if job["status"] in FINISHED:
                posted.status = str(job["status"])
                if job["status"] == "succeeded":
                    finished = datetime.fromisoformat(job["finished_at"]).timestamp()
                    posted.succeeded_after_ms = 1000 * (finished - posted.sent_wall)
                return
        await asyncio.sleep(run.config.poll_interval_s)


async def _poller(client: LoadClient, run: LoadRun) -> None:
    """GET a random job, then a random conversation's turns, until cancelled."""
    rng = random.Random()
    while True:
        if not run.posted:
            await asyncio.sleep(0.05)
            continue
        job_id = rng.choice(run.posted).job_id
        await client.request("GET", GET_JOB, f"/v1/jobs/{job_id}")
        cid = rng.choice(run.conversations)
        await client.request("GET", LIST_TURNS, f"/v1/conversations/{cid}/turns")
        await asyncio.sleep(run.config.poller_pause_s)


async def read_back(client: LoadClient, run: LoadRun) -> None:
    """Check, through the API, that each accepted post is exactly one succeeded turn whose
    audio downloads, and that streamed turns streamed their stored audio. Sets the read-back
    counts of ``run`` afresh."""
    run.verified = run.duplicates = run.audio_ms = run.stream_mismatches = 0
    by_conversation: dict[str, dict[str, Posted]] = {cid: {} for cid in run.conversations}
    for posted in run.posted:
        by_conversation[posted.conversation_id][posted.turn_id] = posted
    for cid, mine in by_conversation.items():
        r = await client.request("GET", LIST_TURNS, f"/v1/conversations/{cid}/turns")
        if r is None or r.status_code != 200:
            continue
        listed: list[dict[str, Any]] = r.json()
        run.duplicates += max(0, len(listed) - len(mine))
        for turn in listed:
            own = mine.get(str(turn["id"]))
            if own is None or turn["status"] != "succeeded":
                continue
            audio = await client.request(
                "GET", GET_AUDIO, f"/v1/conversations/{cid}/turns/{turn['id']}/audio?format=wav"
            )
            stored_bytes = int(turn["duration_ms"]) * BYTES_PER_MS
            # A WAV of the turn's whole duration (its header is 44 bytes or more).
            if (
                not stored_bytes
                or audio is None
                or audio.status_code != 200
                or len(audio.content) < stored_bytes + 44
            ):
                continue
            run.verified += 1
            run.audio_ms += int(turn["duration_ms"])
            if own.streamed is not None and own.streamed != stored_bytes:
                run.stream_mismatches += 1
