"""BatchedStreamingDecoder: each row's audio equals its own per-turn StreamingDecoder's.

Everything runs the real tiny checkpoint's codec (or its weights under a changed config, as in
test_engine_codec_stream.py). The reference for a row is a fresh ``StreamingDecoder`` fed the
same frames. A row alone must match it bit for bit; among other rows the BLAS rounds the batched
products in another order, so those comparisons hold an SNR floor of 100 dB and a max abs error
of 1e-5 of the peak (the tiny codec's decoder transformer is scaled down, so the window tests use
a full layer scale, where a wrong mask or ring entry costs far more than that).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.errors import EngineError
from tests.unit.test_engine_codec_stream import codec_variant, random_codes, snr_db
from worker.engine.codec_batch import BatchedStreamingDecoder
from worker.engine.codec_stream import StreamingDecoder
from worker.engine.csm import CsmEngine, SamplingParams
from worker.engine.tiny import CODEBOOK_SIZE

MIN_SNR_DB = 100.0
MAX_ABS_ERROR = 1e-5  # relative to the reference's peak


def reference(codec: Any, codes: np.ndarray) -> np.ndarray:
    """One turn through its own StreamingDecoder, frame by frame."""
    decoder = StreamingDecoder(codec)
    return np.concatenate([decoder.push(codes[i : i + 1]) for i in range(len(codes))])


def assert_close(audio: np.ndarray, expected: np.ndarray) -> None:
    assert audio.shape == expected.shape
    peak = float(np.abs(expected).max())
    assert peak > 0.1  # a silent reference would prove nothing
    max_abs = float(np.abs(audio - expected).max())
    assert snr_db(audio, expected) >= MIN_SNR_DB
    assert max_abs <= MAX_ABS_ERROR * peak, f"max abs error {max_abs:.3g} (peak {peak:.3g})"


def run_schedule(
    decoder: BatchedStreamingDecoder,
    turns: dict[str, np.ndarray],
    joins: dict[str, int],
    chunks: Sequence[int] = (1,),
    leave_after: dict[str, int] | None = None,
) -> dict[str, np.ndarray]:
    """Call by call: rows join at ``joins[key]`` (a call index) and leave when their codes run
    out (or after ``leave_after[key]`` frames); call ``c`` decodes ``chunks[c % len]`` frames for
    every row that has that many left, then one frame for the rest. Returns each row's audio."""
    leave_after = leave_after or {}
    fed = dict.fromkeys(turns, 0)
    out: dict[str, list[np.ndarray]] = {key: [] for key in turns}
    call = 0
    while any(fed[k] < len(turns[k]) and fed[k] < leave_after.get(k, 10**9) for k in turns):
        for key, at in joins.items():
            if at == call:
                decoder.admit(key)
        active = [k for k in decoder.rows if fed[k] < len(turns[k])]
        size = chunks[call % len(chunks)]
        groups = [
            [k for k in active if len(turns[k]) - fed[k] >= size],
            [k for k in active if len(turns[k]) - fed[k] < size],
        ]
        for keys, k_frames in zip(groups, (size, 1), strict=True):
            if not keys:
                continue
            got = decoder.decode({k: turns[k][fed[k] : fed[k] + k_frames] for k in keys})
            assert set(got) == set(keys)
            for k in keys:
                assert got[k].dtype == np.float32
                assert got[k].shape == (k_frames * decoder.frame_samples,)
                out[k].append(got[k])
                fed[k] += k_frames
        for key in list(decoder.rows):
            if fed[key] >= min(len(turns[key]), leave_after.get(key, 10**9)):
                decoder.remove(key)
        call += 1
    assert not decoder.rows
    return {k: np.concatenate(v) if v else np.zeros(0, np.float32) for k, v in out.items()}


def test_rows_join_and_leave_mid_run(engine: Any) -> None:
    codec = engine._model.codec_model
    lengths = {"a": 12, "b": 5, "c": 9, "d": 1, "e": 7}
    joins = {"a": 0, "b": 0, "c": 2, "d": 5, "e": 6}  # d, then e, take the slot b left
    turns = {k: random_codes(engine, n, seed=10 + i) for i, (k, n) in enumerate(lengths.items())}
    decoder = BatchedStreamingDecoder(codec, max_rows=3)
    audio = run_schedule(decoder, turns, joins)
    for key, codes in turns.items():
        assert_close(audio[key], reference(codec, codes))


def test_several_frames_per_call(engine: Any) -> None:
    codec = engine._model.codec_model
    turns = {k: random_codes(engine, n, seed=20 + n) for k, n in (("a", 14), ("b", 9), ("c", 4))}
    # 7 frames exceed max_chunk_frames (3): decoded in pieces
    decoder = BatchedStreamingDecoder(codec, max_rows=4, max_chunk_frames=3)
    audio = run_schedule(decoder, turns, {"a": 0, "b": 0, "c": 1}, chunks=[2, 1, 3, 7])
    for key, codes in turns.items():
        assert_close(audio[key], reference(codec, codes))


def test_one_row_alone_and_among_fifteen(engine: Any) -> None:
    codec = engine._model.codec_model
    frames = 8
    mine = random_codes(engine, frames, seed=30)
    expected = reference(codec, mine)

    def among(neighbour_seed: int | None, slot: int) -> np.ndarray:
        decoder = BatchedStreamingDecoder(codec, max_rows=16)
        others = [] if neighbour_seed is None else list(range(15))
        keys: list[object] = [*others[:slot], "mine", *others[slot:]]
        for key in keys:
            decoder.admit(key)
        inputs = {
            k: random_codes(engine, frames, seed=(neighbour_seed or 0) + i)
            for i, k in enumerate(keys)
        }
        inputs["mine"] = mine
        chunks = [
            decoder.decode({k: v[t : t + 1] for k, v in inputs.items()}) for t in range(frames)
        ]
        return np.concatenate([c["mine"] for c in chunks])

    alone = among(None, 0)
    np.testing.assert_array_equal(alone, expected)  # bit-exact with one row
    crowded = among(100, 0)
    assert_close(crowded, expected)
    # other neighbours, another slot: the row's samples do not change by a bit
    np.testing.assert_array_equal(among(200, 15), crowded)
    np.testing.assert_array_equal(among(300, 7), crowded)


def test_cancel_mid_batch_frees_the_slot(engine: Any) -> None:
    codec = engine._model.codec_model
    turns = {k: random_codes(engine, 10, seed=40 + i) for i, k in enumerate("abcd")}
    # b is cancelled after 3 frames; d joins at once into the freed slot and starts fresh
    decoder = BatchedStreamingDecoder(codec, max_rows=3)
    audio = run_schedule(decoder, turns, {"a": 0, "b": 0, "c": 0, "d": 3}, leave_after={"b": 3})
    for key in "acd":
        assert_close(audio[key], reference(codec, turns[key]))
    assert_close(audio["b"], reference(codec, turns["b"][:3]))
    with pytest.raises(ValueError, match="not in the decoder"):
        decoder.decode({"b": turns["b"][3:4]})


def test_rows_left_out_of_a_call_keep_their_state(engine: Any) -> None:
    codec = engine._model.codec_model
    turns = {k: random_codes(engine, 6, seed=50 + i) for i, k in enumerate("abc")}
    decoder = BatchedStreamingDecoder(codec, max_rows=3)
    for key in turns:
        decoder.admit(key)
    out: dict[str, list[np.ndarray]] = {k: [] for k in turns}
    fed = dict.fromkeys(turns, 0)
    for subset in ["abc", "c", "a", "bc", "ab", "c", "abc", "b", "ab", "c", "a"]:
        got = decoder.decode({k: turns[k][fed[k] : fed[k] + 1] for k in subset})
        for k in subset:
            out[k].append(got[k])
            fed[k] += 1
    for key, codes in turns.items():
        assert fed[key] == len(codes)
        assert_close(np.concatenate(out[key]), reference(codec, codes))


def test_past_the_sliding_window_at_different_positions(engine: Any) -> None:
    codec = codec_variant(engine, sliding_window=6, full_layer_scale=True)
    turns = {k: random_codes(engine, n, seed=60 + n) for k, n in (("a", 16), ("b", 11), ("c", 9))}
    decoder = BatchedStreamingDecoder(codec, max_rows=3, max_chunk_frames=2)
    audio = run_schedule(decoder, turns, {"a": 0, "b": 2, "c": 5}, chunks=[1, 1, 2, 5])
    for key, codes in turns.items():
        assert_close(audio[key], reference(codec, codes))


def test_replicate_padding(engine: Any) -> None:
    codec = codec_variant(engine, pad_mode="replicate")
    turns = {k: random_codes(engine, n, seed=70 + n) for k, n in (("a", 6), ("b", 4))}
    decoder = BatchedStreamingDecoder(codec, max_rows=2)
    audio = run_schedule(decoder, turns, {"a": 0, "b": 2})
    for key, codes in turns.items():
        assert_close(audio[key], reference(codec, codes))


def test_refuses_codecs_it_cannot_stream(engine: Any) -> None:
    with pytest.raises(EngineError, match="causal"):
        BatchedStreamingDecoder(codec_variant(engine, use_causal_conv=False), max_rows=2)
    with pytest.raises(EngineError, match="pad_mode='reflect'"):
        BatchedStreamingDecoder(codec_variant(engine, pad_mode="reflect"), max_rows=2)


def test_membership_limits(engine: Any) -> None:
    decoder = BatchedStreamingDecoder(engine._model.codec_model, max_rows=2)
    decoder.admit("a")
    with pytest.raises(ValueError, match="already"):
        decoder.admit("a")
    decoder.admit("b")
    with pytest.raises(ValueError, match="full"):
        decoder.admit("c")
    decoder.remove("a")
    decoder.remove("a")  # a second remove is a no-op
    decoder.admit("c")
    assert decoder.rows == ["b", "c"]
    assert decoder.decode({}) == {}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros(4, dtype=np.int64), "shape"),
        (np.zeros((0, 4), dtype=np.int64), "shape"),
        (np.zeros((1, 3), dtype=np.int64), "shape"),
        (np.zeros((1, 4), dtype=np.float32), "integers"),
        (np.full((1, 4), CODEBOOK_SIZE, dtype=np.int64), "lie in"),
        (np.full((1, 4), -1, dtype=np.int64), "lie in"),
        (np.zeros((2, 4), dtype=np.int64), "same number of frames"),
    ],
    ids=["1-d", "no-frames", "codebooks", "float", "too-big", "negative", "other-k"],
)
def test_rejects_bad_codes(engine: Any, bad: np.ndarray, message: str) -> None:
    codec = engine._model.codec_model
    turns = {k: random_codes(engine, 5, seed=80 + i) for i, k in enumerate("ab")}
    decoder = BatchedStreamingDecoder(codec, max_rows=2)
    decoder.admit("a")
    decoder.admit("b")
    first = decoder.decode({k: v[:1] for k, v in turns.items()})
    with pytest.raises(EngineError, match=message) as caught:
        decoder.decode({"a": turns["a"][1:2], "b": bad})
    assert caught.value.code == "invalid_input"
    # a refused call changes no row: both go on as if it had not happened
    rest = [decoder.decode({k: v[t : t + 1] for k, v in turns.items()}) for t in range(1, 5)]
    for key, codes in turns.items():
        audio = np.concatenate([first[key], *(r[key] for r in rest)])
        assert_close(audio, reference(codec, codes))


# ---------------------------------------------------------------- through the engine's loop


def test_the_engine_hands_each_turn_its_audio_with_its_frames(engine: Any) -> None:
    """Concurrent turns through ``CsmEngine.generate``: each frame arrives with its samples,
    which equal the turn's own streaming decode (one turn stops early, another joins late)."""
    codec = engine._model.codec_model
    turns = [
        ([], 0, "The first of three turns.", 14, None),
        ([], 1, "A second, stopped early.", 20, 5),
        ([], 0, "And a third one.", 9, None),
    ]
    got: dict[int, tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]] = {}
    occupancy: list[int] = []

    def speak(i: int) -> None:
        context, speaker, text, frames, stop = turns[i]
        seen: list[np.ndarray] = []
        heard: list[np.ndarray] = []

        def on_frame(frame: np.ndarray, audio: np.ndarray) -> bool:
            assert audio.dtype == np.float32 and audio.shape == (engine.frame_samples,)
            seen.append(frame)
            heard.append(audio)
            occupancy.append(engine.batcher.active)
            return stop is not None and len(seen) >= stop

        params = SamplingParams(max_frames=frames, seed=i)
        codes = engine.generate(context, speaker, text, params, on_frame=on_frame)
        got[i] = (codes, seen, heard)

    threads = [threading.Thread(target=speak, args=(i,)) for i in range(len(turns))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(got) == [0, 1, 2]
    assert max(occupancy) > 1  # turns really shared decoder passes
    for i, (codes, seen, heard) in got.items():
        expected_frames = turns[i][4] or turns[i][3]
        assert codes.shape == (expected_frames, engine.num_codebooks)
        np.testing.assert_array_equal(np.stack(seen), codes)
        assert_close(np.concatenate(heard), reference(codec, codes))
    assert engine.batcher.active == 0


def test_a_turn_whose_codes_cannot_be_decoded_fails_alone(tiny_model_dir: Path) -> None:
    """Random weights draw the extra ids (>= codebook size) unless suppressed: such a turn fails
    with invalid_input from the loop's decoder, and the loop goes on serving turns."""
    eng = CsmEngine.load(str(tiny_model_dir), device="cpu")
    config = eng._model.generation_config
    kept = list(config.suppress_tokens)
    config.suppress_tokens = [t for t in range(eng._model.config.vocab_size) if t != CODEBOOK_SIZE]
    with pytest.raises(EngineError, match="lie in") as caught:
        eng.generate([], 0, "x", SamplingParams(max_frames=3, seed=1))
    assert caught.value.code == "invalid_input"
    assert eng.batcher.active == 0
    config.suppress_tokens = kept
    heard: list[np.ndarray] = []
    codes = eng.generate(
        [],
        0,
        "x",
        SamplingParams(max_frames=3, seed=1),
        on_frame=lambda f, a: heard.append(a) or False,
    )
    assert codes.shape == (3, 4)
    assert_close(np.concatenate(heard), reference(eng._model.codec_model, codes))
