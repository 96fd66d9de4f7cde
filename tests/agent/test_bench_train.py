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


def test_model_export_halves_the_weights_and_loads_back_close(run_cli, nano_model, tmp_path):
    import numpy as np
    import torch

    from think.checkpoint import load_checkpoint

    r = run_cli("model", "export", nano_model, tmp_path / "shipped")
    assert r.rc == 0, r.err
    src, out = load_checkpoint(nano_model), load_checkpoint(tmp_path / "shipped")
    assert out.layout == src.layout
    size = lambda d: sum(f.stat().st_size for f in d.glob("*.safetensors"))  # noqa: E731
    assert size(tmp_path / "shipped") < 0.6 * size(nano_model)
    a = src.model.get_input_embeddings().weight
    b = out.model.get_input_embeddings().weight
    assert b.dtype == torch.float32 and torch.allclose(a, b, rtol=1e-2, atol=1e-3)
    assert np.array_equal(out.tokenizer.encode("hello").ids, src.tokenizer.encode("hello").ids)
    r = run_cli("model", "export", nano_model, nano_model)
    assert r.rc != 0 and r.error_lines


def test_bench_counts_with_nothing_to_time_are_one_clear_error(run_cli):
    # Zero timed steps or frames used to end in an IndexError traceback from the median of nothing.
    r = run_cli("bench", "train", "--preset", "nano", "--steps", "0")
    assert r.rc == 2 and any("--steps must be >= 1" in line for line in r.error_lines), r.err
    r = run_cli("bench", "step", "--preset", "nano", "--frames", "0")
    assert r.rc == 2 and any("--frames must be >= 1" in line for line in r.error_lines), r.err
    r = run_cli("bench", "train", "--preset", "nano", "--steps", "1", "--threads", "-1")
    assert r.rc == 2 and any("--threads must be a positive" in line for line in r.error_lines), r.err
