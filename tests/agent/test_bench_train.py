"""`duplex bench train` times real training steps and prints JSON."""
from __future__ import annotations

import json


def test_bench_train_prints_step_times_for_both_precisions(run_cli):
    r = run_cli("bench", "train", "--preset", "nano", "--window-frames", "4", "--batch-size", "2", "--steps", "1",
                "--threads", "1", "--device", "cpu")
    assert r.rc == 0, r.err
    out = json.loads(r.out)
    assert out["benchmark"] == "train" and out["window_ids"] == 4 * 13 and out["device"] == "cpu"
    for precision in ("bf16_autocast", "fp32"):
        assert out[precision]["step_s_median"] > 0 and out[precision]["frames_per_s"] > 0


def test_bench_train_refuses_cuda_on_a_machine_without_it(run_cli):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the refusal is for CPU-only machines")
    r = run_cli("bench", "train", "--preset", "nano", "--device", "cuda", "--steps", "1")
    assert r.rc != 0 and any("CUDA" in line for line in r.error_lines), r.err
