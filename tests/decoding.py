"""Served audio read back by standard decoders: soundfile (libsndfile) where it reads the
format, else PyAV (FFmpeg); and the length each format must decode to."""

from __future__ import annotations

import io
import math

import av
import numpy as np
import soundfile as sf

from shared.audio.codecs import AAC_FRAME, AAC_PRIMING, MP3_DELAY, MP3_GRANULE
from shared.audio.containers import SAMPLE_RATE


def decoded(data: bytes, fmt: str, *, streamed: bool = False) -> np.ndarray:
    """The int16 samples at 24 kHz: soundfile where it reads the format, else PyAV: AAC (ADTS),
    and a streamed FLAC (whose STREAMINFO has no total length, which libsndfile needs)."""
    if fmt == "pcm":
        assert len(data) % 2 == 0
        return np.frombuffer(data, dtype="<i2")
    if fmt != "aac" and not (fmt == "flac" and streamed):
        with sf.SoundFile(io.BytesIO(data)) as f:
            assert (f.samplerate, f.channels) == (SAMPLE_RATE, 1)
            return np.asarray(f.read(dtype="int16"))
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        assert (stream.rate, stream.channels) == (SAMPLE_RATE, 1)
        frames = [frame.to_ndarray().reshape(-1) for frame in container.decode(stream)]
    joined = np.concatenate(frames) if frames else np.zeros(0)
    if joined.dtype.kind == "f":  # AAC decodes to float
        return np.asarray(np.round(np.clip(joined, -1, 1) * 32767), dtype=np.int16)
    return joined.astype(np.int16)


def decoded_length(data: bytes, fmt: str, *, streamed: bool = False) -> int:
    return len(decoded(data, fmt, streamed=streamed))


def assert_length(data: bytes, fmt: str, n: int, *, streamed: bool) -> None:
    """``n`` samples, or what the codec adds (see ``shared.audio.codecs``)."""
    got = decoded_length(data, fmt, streamed=streamed)
    if fmt == "aac":  # 1024 samples of priming, padded to whole 1024-sample frames
        assert got == math.ceil((n + AAC_PRIMING) / AAC_FRAME) * AAC_FRAME, (got, n)
    elif fmt == "mp3" and streamed:  # no gapless tag: LAME's delay, padded to a granule
        assert got == math.ceil((n + MP3_DELAY) / MP3_GRANULE) * MP3_GRANULE, (got, n)
    else:
        assert got == n, (fmt, got, n)
