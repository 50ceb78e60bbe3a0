"""``parley say`` and ``parley render``: speech from a running Parley server, into a file.

``say`` speaks one turn (the next of ``--conversation``, or the first of a new one). ``render``
turns a dialogue file into one conversation, spoken turn by turn so that each turn has the
earlier ones as context, and joins the turns into one file with a pause between them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from parley.client import ClientError, ParleyClient
from parley.dialogue import DialogueError, parse_dialogue, speaker_of
from shared.settings import Settings

SAMPLE_RATE = 24_000
# The output's format follows its extension.
EXTENSION_FORMATS = {
    ".wav": "wav",
    ".flac": "flac",
    ".mp3": "mp3",
    ".opus": "opus",
    ".ogg": "opus",
    ".aac": "aac",
    ".pcm": "pcm",
}


class UsageError(ValueError):
    """The command line or its files are wrong: nothing was sent (exit 2)."""


def output_format(path: str) -> str:
    ext = Path(path).suffix.lower()
    if ext not in EXTENSION_FORMATS:
        raise UsageError(
            f"cannot tell the format of {path!r}: end it in one of {', '.join(EXTENSION_FORMATS)}"
        )
    return EXTENSION_FORMATS[ext]


def write_atomic(path: str, data: bytes) -> None:
    """Write the whole file or nothing: a temporary file beside it, then a rename."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent or Path("."), prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def turn_params(args: argparse.Namespace) -> dict[str, Any]:
    given = {
        "temperature": args.temperature,
        "top_k": args.top_k,
        "seed": args.seed,
        "max_audio_length_ms": args.max_audio_length_ms,
    }
    return {k: v for k, v in given.items() if v is not None}


def parse_voices(raw: str | None) -> dict[int, str]:
    """``A=anna,B=ben`` (or ``0=anna``) → {0: "anna", 1: "ben"}."""
    voices: dict[int, str] = {}
    for item in (raw or "").split(","):
        if not item.strip():
            continue
        who, sep, name = item.partition("=")
        who, name = who.strip(), name.strip()
        if not sep or not name or not (who.isdigit() or (len(who) == 1 and who.isalpha())):
            raise UsageError(f"--voices: expected SPEAKER=VOICE (like A=anna), got {item!r}")
        voices[speaker_of(who)] = name
    return voices


def model_note(job: dict[str, Any]) -> str:
    if job.get("test_model"):
        return f" by the TEST model {job.get('model')} (random weights: the audio is noise)"
    return f" by {job.get('model')}"


def cmd_say(client: ParleyClient, args: argparse.Namespace) -> int:
    fmt = output_format(args.output)
    cid = args.conversation or client.create_conversation()
    try:
        turn = client.say(cid, args.speaker, args.text, turn_params(args))
    except ClientError:
        if not args.conversation:  # made for this turn: leave nothing behind
            client.delete_conversation(cid)
        raise
    try:
        job = client.wait(turn["job_id"])
    except KeyboardInterrupt:
        client.cancel(turn["job_id"])
        raise
    write_atomic(args.output, client.audio(cid, turn["id"], fmt))
    frames = job["progress"].get("frames", 0)
    print(
        f"{args.output}: {frames * 80} ms spoken{model_note(job)}; conversation {cid} "
        f"(continue it with --conversation {cid})",
        file=sys.stderr,
    )
    return 0


def cmd_render(client: ParleyClient, args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from shared.audio.formats import encode_file

    fmt = output_format(args.output)
    try:
        lines = parse_dialogue(Path(args.dialogue).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read {args.dialogue}: {exc.strerror}") from exc
    except DialogueError as exc:
        raise UsageError(f"{args.dialogue}: {exc}") from exc
    voices = parse_voices(args.voices)
    if args.gap_ms < 0:
        raise UsageError("--gap-ms must be 0 or more")
    cid = client.create_conversation(context_turns=args.context_turns, voices=voices)
    print(f"conversation {cid}: {len(lines)} turns", file=sys.stderr)
    params = turn_params(args)
    pieces: list[Any] = []
    gap = np.zeros(round(SAMPLE_RATE * args.gap_ms / 1000), dtype=np.int16)
    job: dict[str, Any] = {}
    with tqdm(total=len(lines), unit="turn", file=sys.stderr, desc="rendering") as bar:
        for line in lines:
            turn = client.say(cid, line.speaker, line.text, params)
            try:
                job = client.wait(turn["job_id"])
            except KeyboardInterrupt:
                client.cancel(turn["job_id"])
                raise
            except ClientError as exc:
                raise ClientError(f"line {line.number}: {exc}") from exc
            pcm = np.frombuffer(client.audio(cid, turn["id"], "pcm"), dtype="<i2")
            pieces.extend([gap, pcm] if pieces else [pcm])
            bar.update(1)
    joined = np.concatenate(pieces).astype(np.int16)
    write_atomic(args.output, encode_file(joined, fmt))
    seconds = len(joined) / SAMPLE_RATE
    print(f"{args.output}: {len(lines)} turns, {seconds:.1f} s{model_note(job)}", file=sys.stderr)
    return 0


def run_client_command(settings: Settings, args: argparse.Namespace) -> int:
    """Run ``say`` or ``render``: exit 2 for a bad command line or file (nothing sent), 1 for
    what the server refused or a turn that failed, 130 on Ctrl-C (its job cancelled)."""
    del settings  # a client: the server's settings are the server's
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request is noise here
    client = ParleyClient(args.url, args.api_key)
    try:
        return int(args.client_command(client, args))
    except UsageError as exc:
        print(f"parley {args.command}: {exc}", file=sys.stderr)
        return 2
    except ClientError as exc:
        print(f"parley {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"parley {args.command}: interrupted; the running turn was cancelled", file=sys.stderr
        )
        return 130
    finally:
        client.close()


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        help="the file: .wav .flac .mp3 .opus "
        ".ogg .aac or .pcm (24 kHz mono; the extension picks the format)",
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("PARLEY_URL", "http://127.0.0.1:8000"),
        help="the server (default $PARLEY_URL or http://127.0.0.1:8000)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("PARLEY_API_KEY"),
        help="a bearer key (default $PARLEY_API_KEY; none in open mode)",
    )
    parser.add_argument("--temperature", type=float, help="sampling temperature (0: greedy)")
    parser.add_argument("--top-k", type=int, help="top-k sampling")
    parser.add_argument("--seed", type=int, help="same seed and context: the same speech")
    parser.add_argument("--max-audio-length-ms", type=int, help="longest turn, in ms")
    parser.set_defaults(func=run_client_command)


def add_client_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    say = sub.add_parser("say", help="speak one turn into a file (a client of a running server)")
    say.add_argument("text")
    say.add_argument("--speaker", type=int, default=0, help="the speaker id (default 0)")
    say.add_argument("--conversation", help="speak as the next turn of this conversation")
    _common(say)
    say.set_defaults(client_command=cmd_say)
    render = sub.add_parser(
        "render",
        help="speak a dialogue file (lines 'A: ...', 'B: ...') as one conversation into one file",
        description="Each line 'X: text' is a turn: letters A-Z are speakers 0-25, digits a "
        "speaker id. Blank lines and '#' comments are skipped; a line with no 'X:' continues "
        "the turn before. Turns are spoken in order, each with the earlier ones as context.",
    )
    render.add_argument("dialogue", help="the dialogue file (UTF-8 text)")
    render.add_argument("--voices", help="bind speakers to named voices: A=anna,B=ben")
    render.add_argument("--gap-ms", type=int, default=300, help="pause between turns (300)")
    render.add_argument(
        "--context-turns", type=int, help="earlier turns in each prompt (default: the server's)"
    )
    _common(render)
    render.set_defaults(client_command=cmd_render)
