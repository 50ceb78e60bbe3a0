"""Compressed audio through PyAV (FFmpeg's libraries, bundled in the ``av`` wheel).

- ``mp3``: LAME (``libmp3lame``), MPEG-2 Layer III at 24 kHz, 64 kbit/s.
- ``opus``: libopus in Ogg, 32 kbit/s. libopus takes 24 kHz input as it is (no resampling);
  the Ogg header records 24 kHz as the input rate, so libsndfile decodes back to 24 kHz while
  FFmpeg's decoder gives its usual 48 kHz (twice the samples).
- ``aac``: FFmpeg's native AAC-LC encoder in ADTS (``.aac``, ``audio/aac``), 64 kbit/s. ADTS
  streams front to back, unlike MP4/M4A (whose index is written at the end).
- ``flac``: only for streaming; whole FLAC files are written by soundfile.

Whole files are written to a seekable buffer, so the muxer finishes its header at the end: an
MP3 carries LAME's gapless tag (encoder delay and padding) and decodes to exactly its samples.
A stream is written front to back and cannot be patched afterwards, so decoders see what the
codec adds (see :data:`CODEC_PADDING`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import av
import numpy as np
from av.audio.stream import AudioStream

from shared.audio.containers import SAMPLE_RATE


def pcm16_frame(samples: np.ndarray, *, pts: int) -> av.AudioFrame:
    """24 kHz mono 16-bit samples as one PyAV frame starting at sample ``pts``."""
    pcm = np.ascontiguousarray(samples, dtype=np.int16).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
    frame.sample_rate = SAMPLE_RATE
    frame.pts = pts
    return frame


@dataclass(frozen=True)
class AvCodec:
    """One FFmpeg muxer and encoder pair."""

    container: str
    codec: str
    bit_rate: int | None
    container_options: dict[str, str] = field(default_factory=dict)


AV_CODECS: dict[str, AvCodec] = {
    "mp3": AvCodec("mp3", "libmp3lame", 64_000),
    # One Ogg page per 80 ms (a Mimi frame): each streamed chunk leaves at once, for ~28 bytes
    # of page header per 80 ms (the default 1 s pages would hold a stream back for a second).
    "opus": AvCodec("ogg", "libopus", 32_000, {"page_duration": "80000"}),
    "aac": AvCodec("adts", "aac", 64_000),
    # No 8 KiB PADDING block (FFmpeg's default, room for tags a stream never gets to add).
    "flac": AvCodec("flac", "flac", None, {"metadata_header_padding": "0"}),
}

# What a decoder may add to N samples, measured with FFmpeg and libsndfile (tests check it):
# - mp3, streamed: LAME's 1105 samples of delay (576 + 529), then padding up to a whole
#   576-sample granule: ceil((N + 1105) / 576) * 576 in all. A whole file decodes to exactly N.
# - aac (ADTS, whole or streamed): 1024 samples of encoder priming, then padding up to a whole
#   1024-sample frame: ceil((N + 1024) / 1024) * 1024. ADTS has no field to say so.
# - opus: none once the audio spans more than one Ogg page (80 ms): pre-skip and end trimming
#   are in the Ogg granule positions. A shorter clip keeps the 6.5 ms pre-skip.
MP3_DELAY = 1105
MP3_GRANULE = 576
AAC_PRIMING = 1024
AAC_FRAME = 1024


class _Sink:
    """A write-only file for FFmpeg: no ``seek``, so the muxer writes strictly front to back."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


class AvEncoder:
    """Encodes 16-bit mono 24 kHz PCM into one file of ``fmt`` (a key of :data:`AV_CODECS`).

    With ``seekable`` (a whole file) everything comes from :meth:`finish`; without, :meth:`feed`
    returns the bytes the muxer has written so far and :meth:`finish` the rest.
    """

    def __init__(self, fmt: str, *, seekable: bool) -> None:
        spec = AV_CODECS[fmt]
        self._buffer: io.BytesIO | None = io.BytesIO() if seekable else None
        self._sink = _Sink()
        target = self._buffer if self._buffer is not None else self._sink
        self._container = av.open(
            target, "w", format=spec.container, container_options=spec.container_options
        )
        stream = self._container.add_stream(spec.codec, rate=SAMPLE_RATE, layout="mono")
        assert isinstance(stream, AudioStream)
        self._stream = stream
        if spec.bit_rate is not None:
            self._stream.bit_rate = spec.bit_rate
        self._pts = 0

    def feed(self, samples: np.ndarray) -> bytes:
        if samples.size:
            frame = pcm16_frame(samples, pts=self._pts)
            self._pts += frame.samples
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        return self._sink.take()

    def finish(self) -> bytes:
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        if self._buffer is not None:
            return self._buffer.getvalue()
        return self._sink.take()


def encode_av(samples: np.ndarray, fmt: str) -> bytes:
    """A whole file of ``fmt`` holding ``samples`` (int16, mono, 24 kHz)."""
    encoder = AvEncoder(fmt, seekable=True)
    encoder.feed(samples)
    return encoder.finish()
