"""``parley voices create | list | delete``: the server's voices, which every key may use (by
name in a conversation's speakers, or as the ``voice`` of ``/v1/audio/speech``: a server voice
named ``alloy`` is what ``alloy`` sounds like). A key's own voice of the same name comes first.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sqlalchemy import select

from parley.db_trouble import run_command
from shared.db.models import Voice
from shared.errors import NotFound
from shared.resources import Resources
from shared.services.voices import SERVER_OWNER, delete_voice
from shared.settings import Settings


def _create(state: Resources, args: argparse.Namespace) -> None:
    path = Path(args.audio)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise NotFound(f"cannot read {path}: {exc.strerror}") from exc
    from api.services.voice_intake import store_voice

    voice = store_voice(
        state, owner=SERVER_OWNER, name=args.name, text=args.text, speaker=args.speaker, data=data
    )
    print(
        f"server voice {voice.name!r} stored ({voice.duration_ms} ms, speaker {voice.speaker}); "
        "a worker encodes it once (status: encoding until then)"
    )


def _list(state: Resources, _args: argparse.Namespace) -> None:
    with state.reads() as session:
        rows = session.scalars(
            select(Voice).where(Voice.owner == SERVER_OWNER).order_by(Voice.name)
        ).all()
        if not rows:
            print("no server voices (make one with `parley voices create NAME CLIP --text ...`)")
            return
        for v in rows:
            print(f"{v.name}\t{v.status}\tspeaker {v.speaker}\t{v.duration_ms} ms\t{v.text}")


def _delete(state: Resources, args: argparse.Namespace) -> None:
    with state.sessions() as session:
        voice = session.scalar(
            select(Voice).where(Voice.owner == SERVER_OWNER, Voice.name == args.name)
        )
        if voice is None:
            raise NotFound(f"no server voice {args.name!r}")
        delete_voice(session, voice=voice)
        session.commit()
    print(f"server voice {args.name!r} deleted")


def cmd_voices(settings: Settings, args: argparse.Namespace) -> int:
    state = Resources.open(settings)
    try:
        return run_command("voices", settings, lambda: args.voices_action(state, args))
    finally:
        state.close()


def add_voices_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    voices = sub.add_parser(
        "voices", help="the server's named voices, for every key (create, list, delete)"
    )
    voices.set_defaults(func=cmd_voices)
    actions = voices.add_subparsers(dest="voices_command", required=True)
    create = actions.add_parser("create", help="make a server voice from a clip and transcript")
    create.add_argument("name", help="the voice's name, e.g. alloy to be OpenAI's alloy")
    create.add_argument("audio", help="the reference clip (WAV, FLAC, OGG, MP3, ...)")
    create.add_argument("--text", required=True, help="what the clip says")
    create.add_argument("--speaker", type=int, default=0, help="the speaker id it speaks as")
    create.set_defaults(voices_action=_create)
    actions.add_parser("list", help="the server's voices").set_defaults(voices_action=_list)
    delete = actions.add_parser("delete", help="delete a server voice (409 while in use)")
    delete.add_argument("name")
    delete.set_defaults(voices_action=_delete)
