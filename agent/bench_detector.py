"""``duplex bench detector``: the turn detector's cost per session frame when many sessions run in one
process, as JSON.

Every session of a server runs the turn detector (``listen/turn_detector.py``) on each 80 ms user frame. One
at a time that is one small forward per session per frame, on the event loop. Sessions now await
``push_async``: the frames waiting at once go through one batched forward in a worker thread
(:class:`listen.turn_detector.DetectorBatcher`). For each session count this runs ``frames`` rounds of one frame
per session (speech-like audio), each session on its own real-time frame clock (their offsets spread over a
frame, as live sessions' are), first one forward per frame on the loop (``push``, the old way), then
``push_async``, and reports the process's CPU per frame and as a share of one core, the frames whose verdict
came after the next frame began, and the mean batch (the CPU includes the pacing's own asyncio work, alike in
both); then the best case for batching, every session's frame at once without pacing, against the forward
alone (``forward_ms``). No model or codec: only the detector.
"""
from __future__ import annotations

import asyncio
import time

import numpy as np

from agent.bench import _cpus, synthetic_speech


def _streams(n: int, seconds: float, rate: int) -> list[np.ndarray]:
    import soxr

    base = synthetic_speech(seconds, 16000, seed=0)
    x = soxr.resample(base, 16000, rate).astype(np.float32)
    return [np.roll(x, 997 * k) for k in range(n)]  # the same voice, each session at another point of it


def _one_count(model, sessions: int, frames: int, frame_samples: int, rate: int) -> dict:
    from listen.turn_detector import DetectorBatcher, TurnDetector

    audio = _streams(sessions, frames * frame_samples / rate + 1.0, rate)
    frame_s = frame_samples / rate

    async def paced(batched: bool) -> dict:
        """Each session on its own frame clock (offsets spread over a frame, as live sessions are)."""
        dets = [TurnDetector(model, rate) for _ in range(sessions)]
        loop = asyncio.get_running_loop()
        t0 = loop.time() + 0.05
        late = 0

        async def session(k: int) -> None:
            nonlocal late
            for f in range(frames):
                start = t0 + (k / sessions + f) * frame_s
                if start > loop.time():
                    await asyncio.sleep(start - loop.time())
                x = audio[k][f * frame_samples:(f + 1) * frame_samples]
                if batched:
                    await dets[k].push_async(x)
                else:
                    dets[k].push(x)
                late += loop.time() > start + frame_s  # this frame's verdict came after the next frame began

        cpu = time.process_time()
        await asyncio.gather(*(session(k) for k in range(sessions)))
        cpu = time.process_time() - cpu
        out = {"cpu_ms_per_frame": round(cpu * 1e3 / (frames * sessions), 3),
               "cpu_share_of_a_core": round(cpu / (frames * frame_s), 3), "late_frames": late}
        if batched:
            b = DetectorBatcher.for_model(model)
            out["mean_batch"] = round(b.frames / max(1, b.batches), 2)
        return out

    async def together() -> dict:
        """The best case for batching: every session's frame arrives at once, round after round, no pacing."""
        dets = [TurnDetector(model, rate) for _ in range(sessions)]
        cpu = time.process_time()
        for f in range(frames):
            await asyncio.gather(*(d.push_async(x[f * frame_samples:(f + 1) * frame_samples])
                                   for d, x in zip(dets, audio)))
        return {"cpu_ms_per_frame": round((time.process_time() - cpu) * 1e3 / (frames * sessions), 3)}

    out = {"sessions": sessions, "one_at_a_time": asyncio.run(paced(False)), "batched": asyncio.run(paced(True)),
           "all_at_once_batched": asyncio.run(together())}
    out["cpu_saved"] = round(1.0 - out["batched"]["cpu_ms_per_frame"] / out["one_at_a_time"]["cpu_ms_per_frame"], 3)
    return out


def bench_detector(sessions: list[int] | None = None, frames: int = 50, detector: str = "",
                   frame_ms: float = 80.0, threads: int | None = 1) -> dict:
    """``sessions``: the counts to measure (default 1, 8, 32, 64); ``detector``: a directory ("" = shipped)."""
    import torch

    from listen.turn_detector import TurnDetector, load_detector

    if threads:
        torch.set_num_threads(threads)
    model = load_detector(detector or None)
    rate = model.cfg.sample_rate
    frame_samples = int(round(rate * frame_ms / 1000.0))
    counts = sessions or [1, 8, 32, 64]
    if any(n < 1 for n in counts) or frames < 1:
        raise ValueError("--sessions and --frames must be positive.")
    _one_count(model, 2, 3, frame_samples, rate)  # first calls pay for allocation
    det = TurnDetector(model, rate)
    x = _streams(1, 2.0, rate)[0]
    t = time.process_time()
    for f in range(20):
        det.push(x[f * frame_samples:(f + 1) * frame_samples])
    forward_ms = (time.process_time() - t) * 1e3 / 20
    return {"benchmark": "detector", "detector": detector or "shipped", "frame_ms": frame_ms, "frames": frames,
            "torch_threads": torch.get_num_threads(), "cpus": _cpus(), "forward_ms": round(forward_ms, 3),
            "results": [_one_count(model, n, frames, frame_samples, rate) for n in counts]}
