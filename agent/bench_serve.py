"""``duplex bench serve``: many concurrent sessions on one backend, paced in real time, as JSON.

Every session steps once per frame on its own frame clock (frame k starts at ``t0 + k * frame_ms``,
with a small per-session offset so sessions do not all start at the same instant) with random user
codes, so this measures the *think* step (the model) under concurrency, not listen/speak. A frame is
late when its step ends after the next frame's start. For each session count it reports step-time
percentiles, frames late, generated ids per second and peak memory; with ``--sweep`` it runs
1..N sessions and reports the largest count that stays real time (at most ``--max-late`` of frames late
and p95 step within the frame). The transformers path needs no vLLM.
"""
from __future__ import annotations

import asyncio
import os
import platform
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from think.sampling import SamplingConfig


def _pct(values: list[float]) -> dict:
    a = np.asarray(values) if values else np.zeros(1)
    return {q: round(float(np.percentile(a, int(q[1:]))), 3) for q in ("p50", "p95", "p99")} | {
        "mean": round(float(a.mean()), 3), "max": round(float(a.max()), 3)}


def _memory_mb() -> dict:
    """Peak RSS of this process, and the current RSS of it plus its children (vLLM's engine processes)."""
    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    try:
        import psutil

        me = psutil.Process()
        total = me.memory_info().rss + sum(c.memory_info().rss for c in me.children(recursive=True))
        out["rss_with_children_mb"] = round(total / 2 ** 20, 1)
    except Exception:  # psutil missing or a child already gone
        pass
    return out


async def _one_session(backend: Any, sampling: SamplingConfig, frames: int, frame_s: float, t0: float,
                       seed: int, adapter: str | None) -> tuple[list[float], int, int]:
    layout = backend.layout
    rng = np.random.default_rng(seed)
    sizes = np.asarray(layout.codec.codebook_sizes[: layout.q_in])
    codes = [rng.integers(0, sizes) for _ in range(frames)]
    session = backend.open_session(sampling, adapter=adapter)
    steps, late, ids = [], 0, 0
    loop = asyncio.get_running_loop()
    try:
        for k, c in enumerate(codes):
            start = t0 + k * frame_s
            delay = start - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            a = loop.time()
            await session.step(c)
            b = loop.time()
            steps.append((b - a) * 1000.0)
            late += int(b > start + frame_s)
            ids += 1 + layout.q_out
    finally:
        await session.close()
    return steps, late, ids


async def _run_sessions(backend: Any, n: int, frames: int, sampling: SamplingConfig,
                        adapter: str | None) -> dict:
    frame_s = backend.layout.frame_ms / 1000.0
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.05
    wall0 = time.perf_counter()
    results = await asyncio.gather(*(
        _one_session(backend, sampling, frames, frame_s, t0 + i * frame_s / max(n, 1), 100 + i, adapter)
        for i in range(n)))
    wall = time.perf_counter() - wall0
    steps = [s for r in results for s in r[0]]
    late = sum(r[1] for r in results)
    ids = sum(r[2] for r in results)
    total = n * frames
    return {"sessions": n, "frames": total, "step_ms": _pct(steps), "frames_late": late,
            "late_fraction": round(late / total, 4), "generated_ids_per_s": round(ids / wall, 1),
            "wall_s": round(wall, 2), **_memory_mb()}


def _make_backend(kind: str, path: Path, sessions: int, adapters_dir: str | None, threads: int | None,
                  engine_args: dict | None) -> Any:
    if kind == "transformers":
        from think.transformers_backend import TransformersBackend

        return TransformersBackend.from_dir(path, threads=threads, adapters_dir=adapters_dir)
    if kind == "vllm":
        # vLLM logs to stdout by default; leave stdout to the JSON (its records then go to stderr).
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
        try:
            import vllm  # noqa: F401

            from think.vllm_backend import VllmBackend, VllmConfig
        except ImportError as e:
            raise ValueError(f"--backend vllm needs vLLM installed (pip install -e '.[vllm]'): {e}") from e
        # Measuring, not serving: let every asked-for session in even when frames run late.
        cfg = VllmConfig(max_sessions=sessions, max_late_fraction=1.0, adapters_dir=adapters_dir,
                         engine_args=engine_args)
        return VllmBackend(path, cfg)
    raise ValueError(f"--backend must be transformers or vllm, got {kind!r}.")


def bench_serve(backend: str = "transformers", sessions: int = 1, model: str | None = None, preset: str = "nano",
                codec: str = "codec2", frames: int = 100, sweep: bool = False, max_late: float = 0.01,
                greedy: bool = False, adapter: str | None = None, adapters_dir: str | None = None,
                threads: int | None = None, engine_args: dict | None = None) -> dict:
    """Run the benchmark and return its JSON-able result."""
    if sessions < 1 or frames < 1:
        raise ValueError("--sessions and --frames must be >= 1.")
    from agent.models import init_model

    sampling = SamplingConfig(text_temperature=0, audio_temperature=0) if greedy else SamplingConfig()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(model) if model else init_model(Path(tmp) / "model", preset=preset, codec=codec)
        t0 = time.perf_counter()
        b = _make_backend(backend, path, sessions, adapters_dir, threads, engine_args)
        start_s = time.perf_counter() - t0
        detail = {k: v for k, v in getattr(b, "health", lambda: {})().items()
                  if k in ("engine_start_seconds", "warmup_seconds")}
        try:
            counts = list(range(1, sessions + 1)) if sweep else [sessions]
            runs = [asyncio.run(_run_sessions(b, n, frames, sampling, adapter)) for n in counts]
        finally:
            if backend == "vllm":
                b.shutdown()
    frame_ms = b.layout.frame_ms
    for r in runs:
        r["realtime"] = bool(r["late_fraction"] <= max_late and r["step_ms"]["p95"] <= frame_ms)
    realtime = max([r["sessions"] for r in runs if r["realtime"]], default=0)
    return {
        "benchmark": "serve", "backend": backend, "model": model or f"random:{preset}", "codec": b.layout.codec.name,
        "frame_ms": frame_ms, "ids_per_frame": 1 + b.layout.q_out, "what": "think step only, real-time paced",
        "sampling": "greedy" if greedy else "default", "adapter": adapter, "backend_start_s": round(start_s, 2), **detail,
        "runs": runs, "largest_realtime_sessions": realtime, "realtime_rule": f"late <= {max_late:.0%} and p95 <= frame",
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        **_memory_mb(),
    }
