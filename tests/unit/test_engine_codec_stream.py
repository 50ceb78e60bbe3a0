"""StreamingDecoder: frame-by-frame Mimi decoding equals the one-shot decode of the whole clip.

Everything runs the real tiny checkpoint's codec (or a copy of its weights under a changed
config). Besides an SNR floor, every comparison bounds the max abs error tightly: the tiny
codec's decoder transformer is scaled down (layer scale 0.01), so a broken KV cache costs it
only ~1e-4 of error, which an SNR of 60 dB alone would let through.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch
from transformers import MimiModel

from shared.errors import EngineError
from worker.engine.codec_stream import StreamingDecoder
from worker.engine.csm import SamplingParams
from worker.engine.tiny import CODEBOOK_SIZE

MIN_SNR_DB = 60.0
MAX_ABS_ERROR = 1e-5  # relative to the reference's peak; float32 round-off is ~1e-6 here


@pytest.fixture(scope="module")
def codes(engine: Any) -> np.ndarray:
    out = engine.generate(
        [], 0, "Some text.", SamplingParams(max_frames=40, temperature=0.9, seed=1)
    )
    assert out.shape == (40, engine.num_codebooks)
    return out


def random_codes(engine: Any, frames: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, engine.codebook_size, size=(frames, engine.num_codebooks))


def stream(decoder: StreamingDecoder, codes: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """Push ``codes`` in chunks of ``sizes`` (cycled); return the concatenated audio."""
    chunks, start, turn = [], 0, 0
    while start < len(codes):
        size = sizes[turn % len(sizes)]
        chunk = decoder.push(codes[start : start + size])
        assert chunk.dtype == np.float32
        assert chunk.shape == (min(size, len(codes) - start) * decoder.frame_samples,)
        chunks.append(chunk)
        start, turn = start + size, turn + 1
    assert decoder.frames == len(codes)
    return np.concatenate(chunks)


def one_shot(codec: Any, codes: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        ids = torch.from_numpy(codes).transpose(0, 1)[None]
        return codec.decode(ids).audio_values[0, 0].float().numpy()


def snr_db(audio: np.ndarray, reference: np.ndarray) -> float:
    noise = float(np.sum((audio.astype(np.float64) - reference) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(signal / noise)


def assert_matches(audio: np.ndarray, reference: np.ndarray) -> None:
    assert audio.shape == reference.shape
    peak = float(np.abs(reference).max())
    assert peak > 0.1  # a silent reference would prove nothing
    max_abs = float(np.abs(audio - reference).max())
    assert snr_db(audio, reference) >= MIN_SNR_DB
    assert max_abs <= MAX_ABS_ERROR * peak, f"max abs error {max_abs:.3g} (peak {peak:.3g})"


def codec_variant(engine: Any, *, full_layer_scale: bool = False, **config: Any) -> MimiModel:
    """The tiny checkpoint's codec weights under a changed config (e.g. a small window)."""
    original = engine._model.codec_model
    changed = copy.deepcopy(original.config)
    for name, value in config.items():
        setattr(changed, name, value)
    codec = MimiModel(changed).eval()
    codec.load_state_dict(original.state_dict())
    if full_layer_scale:  # let the decoder transformer weigh as much as the SEANet
        with torch.no_grad():
            for name, param in codec.named_parameters():
                if name.endswith("layer_scale.scale"):
                    param.fill_(1.0)
    return codec


@pytest.mark.parametrize("sizes", [[1], [2], [5], [3, 1, 7, 2, 1, 9]], ids=str)
def test_chunks_equal_one_shot(engine: Any, codes: np.ndarray, sizes: list[int]) -> None:
    audio = stream(StreamingDecoder(engine._model.codec_model), codes, sizes)
    assert_matches(audio, engine.decode(codes))


def test_random_codes_equal_one_shot(engine: Any) -> None:
    codes = random_codes(engine, 25, seed=3)
    audio = stream(StreamingDecoder(engine._model.codec_model), codes, [4, 1])
    assert_matches(audio, engine.decode(codes))


def test_past_the_sliding_window(engine: Any) -> None:
    window = 6  # decoder transformer steps (25 Hz), i.e. 3 frames
    codec = codec_variant(engine, sliding_window=window, full_layer_scale=True)
    wide = codec_variant(engine, full_layer_scale=True)
    assert wide.config.sliding_window > 60
    codes = random_codes(engine, 30, seed=4)
    reference = one_shot(codec, codes)
    # the window really changes the audio, and only past it: the test can tell them apart
    split = window // 2 * engine.frame_samples
    difference = np.abs(reference - one_shot(wide, codes))
    assert difference[:split].max() == 0
    assert difference[split:].max() > 100 * MAX_ABS_ERROR * np.abs(reference).max()
    for sizes in ([1], [3], [7], [2, 5, 1]):  # chunks below, at and beyond the window
        assert_matches(stream(StreamingDecoder(codec), codes, sizes), reference)


def test_replicate_padding(engine: Any) -> None:
    codec = codec_variant(engine, pad_mode="replicate")
    codes = random_codes(engine, 12, seed=5)
    reference = one_shot(codec, codes)
    assert np.abs(reference - engine.decode(codes)).max() > 1e-3  # the pad mode matters
    assert_matches(stream(StreamingDecoder(codec), codes, [2, 1]), reference)


def test_refuses_non_causal_codec(engine: Any) -> None:
    codec = codec_variant(engine, use_causal_conv=False)
    with pytest.raises(EngineError, match="causal"):
        StreamingDecoder(codec)


def test_interleaved_decoders_keep_their_own_state(engine: Any, codes: np.ndarray) -> None:
    codec = engine._model.codec_model
    other = random_codes(engine, len(codes), seed=6)
    alone_a = stream(StreamingDecoder(codec), codes, [1])
    alone_b = stream(StreamingDecoder(codec), other, [1])
    first, second = StreamingDecoder(codec), StreamingDecoder(codec)
    out_a, out_b = [], []
    for i in range(len(codes)):
        out_a.append(first.push(codes[i : i + 1]))
        out_b.append(second.push(other[i : i + 1]))
    np.testing.assert_array_equal(np.concatenate(out_a), alone_a)
    np.testing.assert_array_equal(np.concatenate(out_b), alone_b)
    assert first.frames == second.frames == len(codes)


def test_decoders_in_threads(engine: Any, codes: np.ndarray) -> None:
    codec = engine._model.codec_model
    inputs = [codes, random_codes(engine, len(codes), seed=7), codes[::-1].copy()]
    results: dict[int, np.ndarray] = {}

    def run(index: int) -> None:
        results[index] = stream(StreamingDecoder(codec), inputs[index], [1, 2])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results) == [0, 1, 2]
    for index, codes_in in enumerate(inputs):
        assert_matches(results[index], engine.decode(codes_in))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros(4, dtype=np.int64), "shape"),
        (np.zeros((0, 4), dtype=np.int64), "shape"),
        (np.zeros((2, 3), dtype=np.int64), "shape"),
        (np.zeros((2, 4), dtype=np.float32), "integers"),
        (np.full((2, 4), CODEBOOK_SIZE, dtype=np.int64), "lie in"),
        (np.full((2, 4), -1, dtype=np.int64), "lie in"),
    ],
    ids=["1-d", "no-frames", "codebooks", "float", "too-big", "negative"],
)
def test_rejects_bad_codes(engine: Any, codes: np.ndarray, bad: np.ndarray, message: str) -> None:
    decoder = StreamingDecoder(engine._model.codec_model)
    with pytest.raises(EngineError, match=message) as caught:
        decoder.push(bad)
    assert caught.value.code == "invalid_input"
    # a refused push leaves the decoder as it was
    assert decoder.frames == 0
    assert_matches(stream(decoder, codes[:6], [2]), engine.decode(codes[:6]))
