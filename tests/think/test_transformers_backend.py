"""The transformers reference backend: engines agree, masks hold, forced silence is visible, memory is flat."""
from __future__ import annotations

import resource

import numpy as np
import pytest
import torch

from think.checkpoint import MODEL_PRESETS, ModelConfig, init_from_config, load_checkpoint
from think.context import ContextConfig
from think.layout import DuplexLayout
from think.lean_llama import LeanLlama
from think.sampling import SamplingConfig
from think.tokenizer import default_tokenizer
from think.transformers_backend import TransformersBackend


@pytest.fixture(scope="module")
def small_model_dir(tmp_path_factory, small_spec):
    layout = DuplexLayout(small_spec, default_tokenizer().get_vocab_size(), q_in=2, q_out=2)
    return init_from_config(tmp_path_factory.mktemp("small") / "m", layout, MODEL_PRESETS["nano"], seed=3)


@pytest.fixture(scope="module")
def gqa_model_dir(tmp_path_factory, small_spec):
    layout = DuplexLayout(small_spec, default_tokenizer().get_vocab_size(), q_in=2, q_out=2)
    cfg = ModelConfig(layers=2, hidden=64, heads=4, kv_heads=2, intermediate=96, max_positions=1024,
                      tie_embeddings=False)
    return init_from_config(tmp_path_factory.mktemp("gqa") / "m", layout, cfg, seed=4)


def _user_codes(rng, layout, n):
    sizes = np.asarray(layout.codec.codebook_sizes[: layout.q_in])
    return [rng.integers(0, sizes) for _ in range(n)]


@pytest.mark.parametrize("which", ["small_model_dir", "gqa_model_dir"])
def test_lean_engine_logits_match_transformers(which, request, rng):
    loaded = load_checkpoint(request.getfixturevalue(which))
    lean = LeanLlama(loaded.model)
    ids = rng.integers(0, loaded.layout.vocab_size, 40).tolist()
    with torch.inference_mode():
        ref = loaded.model(input_ids=torch.tensor([ids])).logits[0]
    state = lean.new_state(64)
    lean.forward(ids[:25], state)  # a block prefill, then single steps
    for i in range(25, 40):
        out = lean.forward([ids[i]], state)
        assert torch.allclose(out, ref[i], atol=1e-4), f"position {i}: max diff {(out - ref[i]).abs().max()}"
    lo, hi = 100, 300
    state2 = lean.new_state(64)
    sliced = lean.forward(ids, state2, rows=(lo, hi))
    assert torch.allclose(sliced, ref[-1, lo:hi], atol=1e-4)


def test_lean_and_hf_engines_sample_identical_greedy_slots(nano_model_dir, rng):
    greedy = SamplingConfig(text_temperature=0, audio_temperature=0)
    sessions = [TransformersBackend.from_dir(nano_model_dir, engine=e).open_session(greedy) for e in ("lean", "hf")]
    for codes in _user_codes(rng, sessions[0].layout, 30):
        a, b = (s.step_sync(codes) for s in sessions)
        assert a.text_id == b.text_id and np.array_equal(a.agent_codes, b.agent_codes)


def test_sampled_ids_always_lie_in_their_slot_ranges(nano_model_dir, rng):
    backend = TransformersBackend.from_dir(nano_model_dir)
    hot = SamplingConfig(text_temperature=3.0, audio_temperature=3.0, text_top_k=0, audio_top_k=0, seed=1)
    session = backend.open_session(hot)
    layout = backend.layout
    for codes in _user_codes(rng, layout, 60):
        r = session.step_sync(codes)
        assert layout.is_text_slot_id(r.text_id)
        sizes = np.asarray(layout.codec.codebook_sizes[: layout.q_out])
        assert r.agent_codes.shape == (layout.q_out,)
        assert np.all(r.agent_codes >= 0) and np.all(r.agent_codes < sizes)
        slot = session.window.slots[-1]
        layout.validate(np.asarray(slot), start_position=0)


def test_pad_bias_moves_the_text_slot_between_speaking_and_waiting(nano_model_dir, rng):
    backend = TransformersBackend.from_dir(nano_model_dir)
    pad = backend.layout.pad_id
    codes = _user_codes(rng, backend.layout, 20)

    def pad_share(bias: float) -> float:
        s = backend.open_session(SamplingConfig(seed=3, pad_bias=bias))
        return float(np.mean([s.step_sync(c).text_id == pad for c in codes]))

    assert pad_share(20.0) == 1.0 and pad_share(-20.0) == 0.0
    with pytest.raises(ValueError, match="pad_bias"):
        SamplingConfig(pad_bias=float("nan"))


def test_speak_now_draws_a_word_piece_where_the_model_would_wait(nano_model_dir, rng):
    """The policy's answer prompt: with PAD all but certain (bias +20), the text slot still draws a word piece,
    never PAD or end-of-turn, on exactly the frames asked."""
    backend = TransformersBackend.from_dir(nano_model_dir)
    lay = backend.layout
    session = backend.open_session(SamplingConfig(seed=3, pad_bias=20.0))
    asked = [i % 3 == 2 for i in range(12)]
    got = [session.step_sync(c, speak_now=a).text_id for c, a in zip(_user_codes(rng, lay, 12), asked)]
    assert all((t < lay.text_vocab_size) == a for t, a in zip(got, asked)), got


def test_forced_silence_is_what_the_model_sees(nano_model_dir, rng):
    backend = TransformersBackend.from_dir(nano_model_dir)
    session = backend.open_session()
    layout = backend.layout
    codes = _user_codes(rng, layout, 3)
    session.step_sync(codes[0])
    r = session.step_sync(codes[1], force_silence=True)
    assert r.forced and r.text_id == layout.pad_id
    assert np.array_equal(r.agent_codes, layout.agent_silence_codes())
    expected = layout.slot(codes[1], layout.pad_id, layout.agent_silence_codes()).tolist()
    assert session.window.slots[-1] == expected
    before = session.context_tokens
    session.step_sync(codes[2])
    # Fed with the next frame: frame 0's last agent id, the forced slot (user + PAD + silence), then
    # this frame's user ids and its text + first Q_out - 1 agent ids.
    assert session.context_tokens == before + 1 + layout.slot_size + layout.q_in + layout.q_out


def test_sessions_on_one_backend_do_not_share_state(nano_model_dir, rng):
    backend = TransformersBackend.from_dir(nano_model_dir)
    greedy = SamplingConfig(text_temperature=0, audio_temperature=0)
    frames = _user_codes(rng, backend.layout, 15)
    alone = backend.open_session(greedy)
    ref = [alone.step_sync(c) for c in frames]
    a, b = backend.open_session(greedy), backend.open_session(greedy, system_prompt="you are a pirate")
    for i, c in enumerate(frames):
        b.step_sync(frames[-1 - i])  # another conversation interleaved
        out = a.step_sync(c)
        assert out.text_id == ref[i].text_id and np.array_equal(out.agent_codes, ref[i].agent_codes)


def test_rolling_context_keeps_memory_flat_over_a_ten_minute_session(small_model_dir, rng):
    """7500 frames of 80 ms = 10 minutes; the window rebases many times and memory stays put."""
    loaded = load_checkpoint(small_model_dir)
    backend = TransformersBackend(loaded, context=ContextConfig(max_frames=120))
    session = backend.open_session(SamplingConfig(seed=2))
    layout = backend.layout
    codes = _user_codes(rng, layout, 50)
    peak_after_warmup = None
    max_context = 0
    for i in range(7500):
        session.step_sync(codes[i % 50], force_silence=(i % 7 == 3), quiet=(i % 40 == 0))
        max_context = max(max_context, session.context_tokens)
        if i == 1000:
            peak_after_warmup = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_end = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert session.window.rebases >= 50
    assert len(session.window.slots) <= session.window.hard_limit
    assert max_context <= session.capacity
    assert (peak_end - peak_after_warmup) < 20 * 1024, f"peak RSS grew by {(peak_end - peak_after_warmup) / 1024:.1f} MB"


@pytest.mark.parametrize("train_config, max_frames, expected", [
    ('{"window_frames": 40}', 0, 40),     # the window its training saw
    ('{"window_frames": 40}', 60, 60),    # an explicit limit may go past it
    ('{"window_frames": 100000}', 0, None),  # never past the positions
    (None, 0, None),                      # no training record: as many frames as the positions hold
    ("not json", 0, None),
])
def test_sessions_stay_within_the_window_the_model_was_trained_on(small_model_dir, tmp_path, train_config,
                                                                  max_frames, expected):
    import shutil

    model = tmp_path / "m"
    shutil.copytree(small_model_dir, model)
    (model / "train_config.json").unlink(missing_ok=True)
    if train_config is not None:
        (model / "train_config.json").write_text(train_config)
    backend = TransformersBackend(load_checkpoint(model), context=ContextConfig(max_frames=max_frames))
    session = backend.open_session(SamplingConfig(seed=0))
    fit = (backend.max_positions - len(session.window.prefix) - 2 * backend.layout.slot_size) // backend.layout.slot_size
    assert session.window.hard_limit == (expected or fit)
    assert fit > 100  # the nano preset holds far more than the trained window


def test_model_smaller_than_its_layout_is_rejected(small_model_dir, tmp_path):
    import json
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(small_model_dir, bad)
    data = json.loads((bad / "duplex_layout.json").read_text())
    data["text_vocab_size"] += 5000
    data.pop("vocab_size")
    (bad / "duplex_layout.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="do not belong together|layout needs"):
        load_checkpoint(bad)


def test_close_during_a_step_lets_it_finish_and_refuses_the_next(nano_model_dir, rng):
    import asyncio
    import time

    backend = TransformersBackend.from_dir(nano_model_dir)
    session = backend.open_session(SamplingConfig(seed=0))
    frames = _user_codes(rng, backend.layout, 2)
    stream = session.stream
    real_feed = stream.feed
    overlap = []

    def slow_feed(ids, rows):
        if not overlap:
            try:  # another step of the same session while this one runs
                session.step_sync(frames[1])
            except RuntimeError as e:
                overlap.append(str(e))
            deadline = time.monotonic() + 10
            while not session.closed and time.monotonic() < deadline:  # close() arrives mid-step
                time.sleep(0.001)
        return real_feed(ids, rows)

    stream.feed = slow_feed

    async def main():
        step = asyncio.create_task(session.step(frames[0]))
        await asyncio.sleep(0.05)
        await session.close()
        return await step

    result = asyncio.run(main())
    assert result.frame == 0 and len(result.agent_codes) == backend.layout.q_out
    assert overlap and "already running a step" in overlap[0]
    assert session.stream is None
    with pytest.raises(RuntimeError, match="closed"):
        session.step_sync(frames[1])


def test_system_prompt_with_lone_surrogates_is_served_and_a_non_text_one_refused(nano_model_dir, rng):
    backend = TransformersBackend.from_dir(nano_model_dir)
    session = backend.open_session(system_prompt="be brief \ud800 \U0001F916")  # "\ud800" is valid JSON
    assert session.window.prefix[-1] == backend.layout.special("system_end")
    assert session.step_sync(_user_codes(rng, backend.layout, 1)[0]).frame == 0
    with pytest.raises(TypeError, match="system prompt must be text"):
        backend.open_session(system_prompt=b"be brief")


@pytest.mark.parametrize("bad, match", [
    (np.array([0.5, 1.7, 0, 0, 0, 0]), "must be integers"),
    (np.array([np.nan, 0, 0, 0, 0, 0]), "must be integers"),
    (np.zeros((2, 6), np.int64), "one frame of user codes"),
])
def test_malformed_user_codes_get_a_clear_error(nano_model_dir, bad, match):
    backend = TransformersBackend.from_dir(nano_model_dir)
    session = backend.open_session()
    with pytest.raises(ValueError, match=match):
        session.step_sync(bad)
    assert session.step_sync(np.zeros(backend.layout.q_in, np.int64)).frame == 0  # still usable
