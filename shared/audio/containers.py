"""Audio containers and resampling (soundfile, soxr). Parley's audio is 24 kHz mono."""

from __future__ import annotations

import io
import struct

import numpy as np
import soundfile as sf
import soxr

from shared.errors import InvalidInput

SAMPLE_RATE = 24_000
FRAME_SAMPLES = 1920  # one Mimi frame: 80 ms at 24 kHz
FRAME_MS = 80

AUDIO_MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac"}
PCM16_FULL_SCALE = 32768.0

# Upload rates Parley reads: beyond the highest in common use, resampling (a header's 2**31 Hz)
# costs seconds of CPU for a few samples.
MIN_UPLOAD_RATE = 1_000
MAX_UPLOAD_RATE = 384_000


def decode_upload(data: bytes, *, max_duration_ms: int) -> np.ndarray:
    """Any container soundfile reads (WAV, FLAC, OGG/Vorbis/Opus, MP3, AIFF, ...) at any rate
    → float32 mono 24 kHz. Judged by content alone; raises InvalidInput for anything else."""
    if not data:
        raise InvalidInput("the audio upload is empty", code="invalid_audio")
    try:
        with sf.SoundFile(_UploadBytes(data)) as f:
            rate = f.samplerate
            _check_rate(rate)
            duration_ms = 1000 * f.frames / rate
            if duration_ms > max_duration_ms:
                raise InvalidInput(
                    f"the audio upload is {duration_ms:.0f} ms long; the limit is "
                    f"{max_duration_ms} ms (max_upload_duration_ms)",
                    code="audio_too_long",
                )
            samples = f.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        reason = exc.error_string if isinstance(exc, sf.LibsndfileError) else str(exc)
        raise InvalidInput(
            f"the upload is not audio in a format Parley reads: {reason}", code="invalid_audio"
        ) from exc
    if samples.size == 0:
        raise InvalidInput("the audio upload holds no samples", code="invalid_audio")
    if not np.all(np.isfinite(samples)):
        raise InvalidInput("the audio upload holds non-finite samples", code="invalid_audio")
    # summed in float64: float samples near float32's limit would overflow to inf
    mono = samples.mean(axis=1, dtype=np.float64).astype(np.float32)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE)
    return np.clip(mono, -1.0, 1.0).astype(np.float32)


class _UploadBytes(io.BytesIO):
    """An upload as libsndfile's virtual file. A crafted header can make libsndfile seek before
    the start: BytesIO raises there, inside soundfile's C callback, where the error is lost (an
    "Exception ignored" on stderr, the seek read as position 0). Here the seek fails as lseek
    does: it stays put, so libsndfile sees that it did not get where it asked."""

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET and offset < 0:
            return self.tell()
        return super().seek(offset, whence)


def _check_rate(rate: int) -> None:
    if not MIN_UPLOAD_RATE <= rate <= MAX_UPLOAD_RATE:
        raise InvalidInput(
            f"the audio upload's sample rate is {rate} Hz; Parley reads "
            f"{MIN_UPLOAD_RATE}-{MAX_UPLOAD_RATE} Hz",
            code="unsupported_sample_rate",
        )


def to_pcm16(audio: np.ndarray) -> np.ndarray:
    """float samples → int16, clipped to [-1, 1] (NaN → 0), scaled by 32768 and rounded half to
    even; +1.0 becomes 32767. The one conversion Parley uses, so streamed and stored samples are
    bit-identical (it is also what libsndfile does when it writes floats as 16-bit PCM)."""
    clipped = np.clip(np.nan_to_num(np.asarray(audio, dtype=np.float32)), -1.0, 1.0)
    scaled = np.rint(clipped.astype(np.float64) * PCM16_FULL_SCALE)
    return np.clip(scaled, -PCM16_FULL_SCALE, PCM16_FULL_SCALE - 1).astype(np.int16)


def pcm16_bytes(samples: np.ndarray) -> bytes:
    """int16 samples → raw 16-bit little-endian PCM."""
    return np.asarray(samples, dtype="<i2").tobytes()


def encode(audio: np.ndarray, fmt: str) -> bytes:
    """Mono 24 kHz samples → a wav or flac file (16-bit PCM). Every other format:
    :mod:`shared.audio.formats`.

    int16 samples are written as they are; float samples go through :func:`to_pcm16` first.
    """
    if fmt not in AUDIO_MEDIA_TYPES:
        raise InvalidInput(
            f"unknown audio format {fmt!r}; use one of {sorted(AUDIO_MEDIA_TYPES)}",
            code="invalid_format",
        )
    samples = audio if audio.dtype == np.int16 else to_pcm16(audio)
    buf = io.BytesIO()
    sf.write(buf, samples, SAMPLE_RATE, format=fmt.upper(), subtype="PCM_16")
    return buf.getvalue()


def decode_flac(data: bytes) -> np.ndarray:
    """A stored turn's FLAC → float32 mono 24 kHz."""
    samples, rate = sf.read(io.BytesIO(data), dtype="float32")
    if rate != SAMPLE_RATE:
        raise ValueError(f"stored audio is {rate} Hz, expected {SAMPLE_RATE}")
    return samples


def decode_flac_pcm16(data: bytes) -> np.ndarray:
    """A stored turn's FLAC → its int16 samples, exactly as stored."""
    samples, rate = sf.read(io.BytesIO(data), dtype="int16")
    if rate != SAMPLE_RATE:
        raise ValueError(f"stored audio is {rate} Hz, expected {SAMPLE_RATE}")
    return np.asarray(samples, dtype=np.int16)


def wav_stream_header(*, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A 44-byte WAV header (16-bit mono PCM) of open length: the RIFF and data sizes are
    0xFFFFFFFF, the convention for a WAV whose length is not known when it starts."""
    open_size = 0xFFFFFFFF
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        open_size,
        b"WAVE",
        b"fmt ",
        16,  # fmt chunk size
        1,  # PCM
        1,  # mono
        sample_rate,
        sample_rate * 2,  # bytes per second
        2,  # bytes per sample frame
        16,  # bits per sample
        b"data",
        open_size,
    )
