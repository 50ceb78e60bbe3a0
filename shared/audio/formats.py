"""Every audio format Parley serves, as a whole file or as a stream, from 24 kHz mono 16-bit PCM.

| format | container and codec | written by |
|---|---|---|
| ``wav`` | RIFF WAVE, 16-bit PCM | soundfile (whole), ``audio.wav_stream_header`` (stream) |
| ``flac`` | FLAC, 16-bit | soundfile (whole), PyAV (stream) |
| ``mp3`` | MPEG-2 Layer III, 64 kbit/s | PyAV (LAME) |
| ``opus`` | Opus in Ogg, 32 kbit/s | PyAV (libopus) |
| ``aac`` | AAC-LC in ADTS, 64 kbit/s | PyAV (FFmpeg's encoder) |
| ``pcm`` | raw signed 16-bit little-endian, no header | numpy |

libsndfile (1.2) writes MP3 and Ogg/Opus too, but only to a file it can seek back into and not
AAC at all; one PyAV path serves every compressed format, whole or streamed.

A streamed file is complete once its last bytes are sent, but what a whole file would fix up at
the end is missing: a WAV's sizes are ``0xFFFFFFFF`` (open length), a FLAC's STREAMINFO has no
total length and no MD5 (FFmpeg reads it, libsndfile does not), an MP3 has no gapless tag.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

from shared.audio import containers as audio
from shared.audio.codecs import AV_CODECS, AvEncoder, encode_av
from shared.errors import InvalidInput

AudioFormat = Literal["wav", "flac", "mp3", "opus", "aac", "pcm"]
AUDIO_FORMATS: tuple[str, ...] = get_args(AudioFormat)

MEDIA_TYPES: dict[str, str] = {
    "wav": "audio/wav",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "pcm": "audio/pcm",
}
EXTENSIONS: dict[str, str] = {
    "wav": "wav",
    "flac": "flac",
    "mp3": "mp3",
    "opus": "ogg",
    "aac": "aac",
    "pcm": "pcm",
}


def check_format(fmt: str) -> AudioFormat:
    if fmt not in AUDIO_FORMATS:
        raise InvalidInput(
            f"unknown audio format {fmt!r}; use one of {', '.join(AUDIO_FORMATS)}",
            code="invalid_format",
        )
    return fmt  # type: ignore[return-value]


def encode_file(samples: np.ndarray, fmt: str) -> bytes:
    """A whole file of ``fmt`` holding ``samples`` (int16; floats go through
    :func:`shared.audio.containers.to_pcm16`)."""
    fmt = check_format(fmt)
    pcm = samples if samples.dtype == np.int16 else audio.to_pcm16(samples)
    if fmt in ("wav", "flac"):
        return audio.encode(pcm, fmt)
    if fmt == "pcm":
        return audio.pcm16_bytes(pcm)
    return encode_av(pcm, fmt)


def transcode(flac: bytes, fmt: str) -> bytes:
    """A stored turn's FLAC → a whole file of ``fmt``; FLAC itself as stored."""
    if check_format(fmt) == "flac":
        return flac
    return encode_file(audio.decode_flac_pcm16(flac), fmt)


class StreamEncoder:
    """One stream of ``fmt``, made as the PCM arrives: :meth:`feed` returns the bytes ready so
    far (possibly none: codecs hold a little back), :meth:`finish` the rest. Joined, they are a
    complete file; for ``pcm`` and ``wav`` the samples pass through unchanged."""

    def __init__(self, fmt: str) -> None:
        self.fmt = check_format(fmt)
        self._av = AvEncoder(fmt, seekable=False) if fmt in AV_CODECS else None
        self._header = audio.wav_stream_header() if fmt == "wav" else b""

    @property
    def passthrough(self) -> bool:
        """The samples pass through unchanged (pcm, wav): no encoding work to speak of."""
        return self._av is None

    def _take_header(self) -> bytes:
        header, self._header = self._header, b""
        return header

    def feed(self, pcm: bytes) -> bytes:
        """``pcm``: raw 16-bit little-endian mono samples at 24 kHz."""
        if self._av is not None:
            return self._av.feed(np.frombuffer(pcm, dtype="<i2"))
        return self._take_header() + pcm

    def finish(self) -> bytes:
        if self._av is not None:
            return self._av.finish()
        return self._take_header()
