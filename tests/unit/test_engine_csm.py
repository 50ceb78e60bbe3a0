"""The CSM engine against transformers' own raw-audio path, on the tiny random checkpoint."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, CsmForConditionalGeneration

from shared.errors import EngineError, ModelLoadError
from worker.engine.csm import ContextTurn, CsmEngine, SamplingParams
from worker.engine.tiny import TINY_MARKER, build_tiny_checkpoint

SR = 24000
NEW_SPEAKER = 1
NEW_TEXT = "Great to hear, let's go."


def _chirp(seconds: float, f0: float, f1: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.5 * np.sin(2 * np.pi * (f0 + (f1 - f0) * t / (2 * seconds)) * t)).astype(np.float32)


@pytest.fixture(scope="session")
def conversation_audio() -> list[tuple[int, str, np.ndarray]]:
    """Three context turns of (speaker, text, audio): chirps and noise of 0.5 to 1.5 s."""
    rng = np.random.default_rng(7)
    noise = (0.2 * rng.standard_normal(int(1.3 * SR))).astype(np.float32)
    return [
        (0, "Hello there.", _chirp(0.5, 200.0, 900.0)),
        (1, "Hi! How are you doing today?", noise),
        (0, "Fine, thanks. And you?", _chirp(1.47, 600.0, 250.0)),
    ]


# ---------------------------------------------------------------- helpers


def _context(engine: CsmEngine, turns: list[tuple[int, str, np.ndarray]]) -> list[ContextTurn]:
    return [ContextTurn(spk, text, engine.encode(audio)) for spk, text, audio in turns]


def _reference_inputs(processor: Any, turns: list[tuple[int, str, np.ndarray]]) -> dict[str, Any]:
    """transformers' raw-audio path: the chat template over audio arrays."""
    conversation: list[dict[str, Any]] = [
        {
            "role": str(spk),
            "content": [{"type": "text", "text": text}, {"type": "audio", "path": audio}],
        }
        for spk, text, audio in turns
    ]
    conversation.append({"role": str(NEW_SPEAKER), "content": [{"type": "text", "text": NEW_TEXT}]})
    return dict(processor.apply_chat_template(conversation, tokenize=True, return_dict=True))


def _reference_generate(
    model: CsmForConditionalGeneration, inputs: dict[str, Any], params: SamplingParams
) -> np.ndarray:
    """model.generate on the raw path with every knob spelled out (independent of the engine)."""
    if params.temperature == 0:
        kw: dict[str, Any] = {
            "do_sample": False,
            "temperature": None,
            "top_k": None,
            "depth_decoder_do_sample": False,
            "depth_decoder_temperature": None,
            "depth_decoder_top_k": None,
        }
    else:
        kw = {
            "do_sample": True,
            "temperature": params.temperature,
            "top_k": params.top_k,
            "depth_decoder_do_sample": True,
            "depth_decoder_temperature": params.temperature,
            "depth_decoder_top_k": params.top_k,
        }
    if params.seed is not None:
        torch.manual_seed(params.seed)
    out = model.generate(**inputs, output_audio=False, max_new_tokens=params.max_frames, **kw)
    return out[0].numpy()


# ---------------------------------------------------------------- 1. building and loading


def test_tiny_build_is_reproducible_and_loads(tmp_path: Path) -> None:
    a = build_tiny_checkpoint(tmp_path / "a", seed=3)
    b = build_tiny_checkpoint(tmp_path / "b", seed=3)
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    assert {"model.safetensors", "config.json", TINY_MARKER} <= set(names)
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    c = build_tiny_checkpoint(tmp_path / "c", seed=4)
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()

    model = CsmForConditionalGeneration.from_pretrained(a)
    processor = AutoProcessor.from_pretrained(a)
    assert model.config.num_codebooks == 4
    assert model.config.max_position_embeddings == 2048
    assert processor.audio_token_id == model.config.audio_token_id == model.config.pad_token_id
    assert model.depth_decoder.generation_config.suppress_tokens == [64, 65, 66]

    engine = CsmEngine.load(str(a), device="cpu")
    assert engine.is_test_model
    assert (engine.num_codebooks, engine.max_positions) == (4, 2048)
    assert (engine.sample_rate, engine.frame_samples, engine.device) == (24000, 1920, "cpu")

    (a / TINY_MARKER).unlink()
    assert not CsmEngine.load(str(a), device="cpu").is_test_model


# ---------------------------------------------------------------- 2. load failures


def test_load_failures_raise_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="/nonexistent"):
        CsmEngine.load("/nonexistent")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=re.escape(str(empty))):
        CsmEngine.load(str(empty))


def test_folder_with_processor_but_no_weights(tmp_path: Path, tiny_model_dir: Path) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(tiny_model_dir, partial)
    (partial / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="partial"):
        CsmEngine.load(str(partial))


# ---------------------------------------------------------------- 3. the key test


@pytest.mark.parametrize("n_context", [3, 2, 0])
def test_generate_from_codes_equals_raw_audio_path(
    engine: CsmEngine,
    tiny_model_dir: Path,
    conversation_audio: list[tuple[int, str, np.ndarray]],
    n_context: int,
) -> None:
    turns = conversation_audio[:n_context]
    context = _context(engine, turns)
    inputs = _reference_inputs(engine._processor, turns)
    model = engine._model
    # Sampled first, then greedy, then sampled again: a depth_decoder_* knob left over from the
    # previous call (they persist in the depth decoder's generation config) would show.
    for params in (
        SamplingParams(temperature=0.9, top_k=50, max_frames=8, seed=11),
        SamplingParams(temperature=0, max_frames=8),
        SamplingParams(temperature=1.3, top_k=5, max_frames=6, seed=12),
    ):
        mine = engine.generate_reference(context, NEW_SPEAKER, NEW_TEXT, params)
        ref = _reference_generate(model, inputs, params)
        assert mine.dtype == np.int64
        assert mine.shape == (params.max_frames, 4)
        np.testing.assert_array_equal(mine, ref)
        if params.greedy:  # Parley's frame loop too (its sampling draws differ by design)
            loop = engine.generate(context, NEW_SPEAKER, NEW_TEXT, params)
            np.testing.assert_array_equal(loop, ref)


def test_prompt_embeddings_equal_the_models_own_merge(
    engine: CsmEngine, conversation_audio: list[tuple[int, str, np.ndarray]]
) -> None:
    context = _context(engine, conversation_audio)
    inputs = _reference_inputs(engine._processor, conversation_audio)
    ids, codes = engine._prompt.token_ids(context, NEW_SPEAKER, NEW_TEXT)
    assert ids == inputs["input_ids"][0].tolist()
    embeds, mask = engine._prompt.embed_ids(ids, codes)
    merged: Any = engine._model._merge_input_ids_with_input_values(
        inputs["input_ids"], inputs["input_values"], inputs["input_values_cutoffs"]
    )
    assert torch.equal(embeds, merged["inputs_embeds"])
    assert torch.equal(mask, inputs["attention_mask"])


# ---------------------------------------------------------------- 4. codec and costs


def test_decode_encode_and_costs(
    engine: CsmEngine, conversation_audio: list[tuple[int, str, np.ndarray]]
) -> None:
    codes = engine.generate([], 0, "Hello.", SamplingParams(max_frames=7, seed=1))
    audio = engine.decode(codes)
    assert audio.dtype == np.float32 and audio.shape == (7 * 1920,)
    assert np.isfinite(audio).all()
    again = engine.encode(audio)
    assert again.shape == (7, 4) and again.dtype == np.int64
    assert again.min() >= 0 and again.max() < 64
    assert engine.encode(np.zeros(24000, dtype=np.float32)).shape == (13, 4)  # 1 s = 13 frames

    context = _context(engine, conversation_audio)
    ids, _ = engine._prompt.token_ids(context, NEW_SPEAKER, NEW_TEXT)
    total = sum(engine.turn_cost(t) for t in context) + engine.request_cost(NEW_SPEAKER, NEW_TEXT)
    embeds, _ = engine._prompt.embed_ids(*engine._prompt.token_ids(context, NEW_SPEAKER, NEW_TEXT))
    assert total == len(ids) == embeds.shape[1]
    # bos + "[0]" + 5 bytes + eos, then 3 frames and the audio end
    assert engine.turn_cost(ContextTurn(0, "Hello", np.zeros((3, 4), np.int64))) == 10 + 3 + 1
    assert engine.request_cost(12, "héllo") == 1 + 4 + 6 + 1  # "[12]" and 6 UTF-8 bytes


def test_control_tokens_in_text_stay_plain_text(engine: CsmEngine) -> None:
    text = "<|AUDIO|><|audio_eos|>"
    assert engine.request_cost(0, text) == 1 + 3 + len(text) + 1
    ids, _ = engine._prompt.token_ids([], 0, text)
    assert engine._prompt.audio_id not in ids and engine._prompt.audio_eos_id not in ids


def test_invalid_inputs(engine: CsmEngine) -> None:
    bad_calls: list[Callable[[], object]] = [
        lambda: engine.decode(np.zeros((3, 5), np.int64)),
        lambda: engine.decode(np.full((3, 4), 64)),
        lambda: engine.decode(np.zeros((3, 4), np.float32)),
        lambda: engine.encode(np.zeros((2, 100), np.float32)),
        lambda: engine.encode(np.array([0.0, np.nan], np.float32)),
        lambda: engine.generate([], -1, "x", SamplingParams(max_frames=2)),
        lambda: engine.generate([], 0, "x", SamplingParams(max_frames=0)),
        lambda: engine.generate([], 0, "x", SamplingParams(temperature=-1.0)),
    ]
    for call in bad_calls:
        with pytest.raises(EngineError) as info:
            call()
        assert info.value.code == "invalid_input"
    long_turn = ContextTurn(0, "x", np.ones((2030, 4), np.int64))
    fits = engine.max_positions - engine.turn_cost(long_turn) - engine.request_cost(0, "y")
    assert fits == 2048 - (6 + 2030 + 1) - 6 == 5
    with pytest.raises(EngineError, match="2048") as info:
        engine.generate([long_turn], 0, "y", SamplingParams(max_frames=fits + 1))
    assert info.value.code == "prompt_too_long"
    assert engine.generate([long_turn], 0, "y", SamplingParams(max_frames=fits)).shape == (fits, 4)


# ---------------------------------------------------------------- 5. cancel


def _counting(
    stop_at: int, seen: list[int], frames: list[np.ndarray] | None = None
) -> Callable[[np.ndarray, np.ndarray], bool]:
    def on_frame(frame: np.ndarray, audio: np.ndarray) -> bool:
        seen.append(len(seen) + 1)
        if frames is not None:
            frames.append(frame)
        return len(seen) >= stop_at

    return on_frame


def test_on_frame_cancels_after_three_frames(
    engine: CsmEngine, conversation_audio: list[tuple[int, str, np.ndarray]]
) -> None:
    context = _context(engine, conversation_audio[:1])
    params = SamplingParams(max_frames=10, seed=5)
    seen: list[int] = []
    frames: list[np.ndarray] = []
    codes = engine.generate(context, 1, "Stop me.", params, on_frame=_counting(3, seen, frames))
    assert codes.shape == (3, 4)
    assert seen == [1, 2, 3]
    np.testing.assert_array_equal(np.stack(frames), codes)  # each frame as it came
    full = engine.generate(context, 1, "Stop me.", params)
    np.testing.assert_array_equal(codes, full[:3])

    seen = []
    engine.generate(
        context, 1, "Run on.", SamplingParams(max_frames=4), on_frame=_counting(99, seen)
    )
    assert seen == [1, 2, 3, 4]

    def boom(frame: np.ndarray, audio: np.ndarray) -> bool:
        raise KeyError("from the callback")

    with pytest.raises(KeyError, match="from the callback"):
        engine.generate([], 0, "x", SamplingParams(max_frames=3), on_frame=boom)


def test_end_frame_stops_generation_and_is_dropped(tiny_model_dir: Path) -> None:
    eng = CsmEngine.load(str(tiny_model_dir), device="cpu")
    model = eng._model
    # Allow only code 0 everywhere: the first frame is the end frame.
    only_zero = list(range(1, model.config.vocab_size))
    model.generation_config.suppress_tokens = only_zero
    model.depth_decoder.generation_config.suppress_tokens = only_zero
    seen: list[int] = []
    codes = eng.generate(
        [], 0, "x", SamplingParams(max_frames=5, seed=1), on_frame=_counting(9, seen)
    )
    assert codes.shape == (0, 4) and codes.dtype == np.int64
    assert seen == []
    assert eng.decode(codes).shape == (0,)


# ---------------------------------------------------------------- 6. seeds


def test_seed_reproducibility(
    engine: CsmEngine, conversation_audio: list[tuple[int, str, np.ndarray]]
) -> None:
    context = _context(engine, conversation_audio[:2])
    a = engine.generate(context, 1, NEW_TEXT, SamplingParams(max_frames=8, seed=42))
    b = engine.generate(context, 1, NEW_TEXT, SamplingParams(max_frames=8, seed=42))
    c = engine.generate(context, 1, NEW_TEXT, SamplingParams(max_frames=8, seed=43))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    g1 = engine.generate(context, 1, NEW_TEXT, SamplingParams(temperature=0, max_frames=8))
    g2 = engine.generate(context, 1, NEW_TEXT, SamplingParams(temperature=0, max_frames=8, seed=9))
    np.testing.assert_array_equal(g1, g2)
