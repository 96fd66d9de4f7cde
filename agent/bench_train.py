"""``duplex bench train``: optimizer steps per second for a model shape, on this machine.

Random slot-valid ids (so every head slice sees in-range targets), the real loss and optimizer of
``duplex train``; the first steps are warm-up and not counted. Prints JSON: step seconds
(median, p90), ids and audio frames per second, for bfloat16 autocast on and off.
"""
from __future__ import annotations

import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def _valid_windows(layout, batch: int, frames: int, seed: int):
    import torch

    rng = np.random.default_rng(seed)
    n = 1 + frames * layout.slot_size
    ids = np.empty((batch, n), dtype=np.int64)
    ids[:, 0] = layout.special("session_start")
    for p in range(layout.slot_size):
        lo, hi = layout.allowed_range(p)[0]
        ids[:, 1 + p::layout.slot_size] = rng.integers(lo, hi, size=(batch, frames))
    x = torch.from_numpy(ids)
    return x[:, :-1], x[:, 1:], torch.ones(batch, n - 1)


def bench_train(preset: str = "tiny", codec: str = "codec2", window_frames: int = 78, batch_size: int = 8,
                steps: int = 5, warmup: int = 2, threads: int | None = None, device: str = "auto",
                model: str | None = None) -> dict:
    """Time ``steps`` training steps per precision; builds a random model of ``preset`` unless ``model``."""
    import torch

    from agent.models import init_model
    from agent.training.train import TrainConfig, _device, forward_loss
    from think.checkpoint import load_checkpoint

    if steps < 1 or warmup < 0:  # no timed step: the median of nothing was an IndexError
        raise ValueError(f"--steps must be >= 1 (got {steps}) and warm-up steps >= 0 (got {warmup}).")
    if threads is not None and threads < 0:
        raise ValueError(f"--threads must be a positive number of torch threads, got {threads}.")
    if threads:
        torch.set_num_threads(threads)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(model) if model else init_model(Path(tmp) / "model", preset=preset, codec=codec)
        loaded = load_checkpoint(path)
        cfg = TrainConfig(device=device, window_frames=window_frames, batch_size=batch_size)
        dev = _device(cfg)
        net, layout = loaded.model.to(dev).train(), loaded.layout
        x, y, w = (t.to(dev) for t in _valid_windows(layout, batch_size, window_frames, seed=0))
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
        for autocast in (True, False):
            times = []
            for i in range(warmup + steps):
                t0 = time.perf_counter()
                loss, _ = forward_loss(net, x, y, w, layout, autocast)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
            med = float(np.median(times))
            results["bf16_autocast" if autocast else "fp32"] = {
                "step_s_median": round(med, 3), "step_s_p90": round(float(np.percentile(times, 90)), 3),
                "ids_per_s": round(x.numel() / med), "frames_per_s": round(batch_size * window_frames / med, 1)}
        params = sum(p.numel() for p in net.parameters())
    return {"benchmark": "train", "model": model or f"random:{preset}", "parameters_m": round(params / 1e6, 3),
            "codec": layout.codec.name, "window_frames": window_frames, "window_ids": int(x.shape[1]),
            "batch_size": batch_size, "steps_timed": steps, "device": str(dev),
            "torch_threads": torch.get_num_threads(), "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            **results}
