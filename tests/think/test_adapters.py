"""LoRA adapters by name: resolution refuses paths and unservable configs; the reference merges them."""
from __future__ import annotations

import json

import numpy as np
import pytest

from think.adapters import AdapterError, resolve_adapter


def _fake_adapter(root, name, **cfg):
    d = root / name
    d.mkdir(parents=True)
    base = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "bias": "none"}
    (d / "adapter_config.json").write_text(json.dumps({**base, **cfg}))
    (d / "adapter_model.safetensors").write_bytes(b"")
    return d


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/b", "..", ".", "x/../y", "", "~user", "a\\b"])
def test_names_that_are_paths_are_refused(tmp_path, name):
    _fake_adapter(tmp_path, "x")
    with pytest.raises(AdapterError, match="plain name"):
        resolve_adapter(tmp_path, name)


def test_a_symlink_out_of_the_directory_is_refused(tmp_path):
    outside = _fake_adapter(tmp_path / "elsewhere", "real")
    (tmp_path / "ads").mkdir()
    (tmp_path / "ads" / "link").symlink_to(outside)
    with pytest.raises(AdapterError, match="outside"):
        resolve_adapter(tmp_path / "ads", "link")


@pytest.mark.parametrize("cfg, message", [
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"target_modules": ["q_proj", "embed_tokens"]}, "embed_tokens"),
    ({"target_modules": ".*proj"}, "pattern"),
    ({"r": 64}, "max_lora_rank 16"),
    ({"use_dora": True}, "dora"),
    ({"peft_type": "IA3"}, "only LoRA"),
    ({"bias": "all"}, "biases"),
])
def test_configs_vllm_cannot_serve_are_refused_in_one_sentence(tmp_path, cfg, message):
    _fake_adapter(tmp_path, "bad", **cfg)
    with pytest.raises(AdapterError, match=message) as info:
        resolve_adapter(tmp_path, "bad", max_rank=16)
    assert str(info.value).count(". ") == 0 and str(info.value).endswith(".")


def test_missing_and_valid_adapters(tmp_path):
    with pytest.raises(AdapterError, match="No adapter named"):
        resolve_adapter(tmp_path, "nope")
    with pytest.raises(AdapterError, match="no adapter directory"):
        resolve_adapter(None, "x")
    _fake_adapter(tmp_path, "ok-1.v2")
    info = resolve_adapter(tmp_path, "ok-1.v2", max_rank=8)
    assert info.rank == 8 and info.targets == ("q_proj", "v_proj") and info.path == (tmp_path / "ok-1.v2").resolve()


def test_transformers_reference_serves_a_merged_adapter_per_session(nano_model_dir, tmp_path, rng):
    pytest.importorskip("peft")
    import torch

    from tests.think.lora import random_lora
    from think.sampling import SamplingConfig
    from think.transformers_backend import TransformersBackend

    pm = random_lora(nano_model_dir, None, seed=0, scale=1.0, rank=4, targets=["q_proj", "v_proj", "down_proj"],
                     save=False)
    pm.save_pretrained(tmp_path / "ads" / "one")
    backend = TransformersBackend.from_dir(nano_model_dir, adapters_dir=tmp_path / "ads")
    greedy = SamplingConfig(text_temperature=0, audio_temperature=0)
    base, tuned = backend.open_session(greedy), backend.open_session(greedy, adapter="one")
    sizes = np.asarray(backend.layout.codec.codebook_sizes[: backend.layout.q_in])
    for _ in range(5):
        c = rng.integers(0, sizes)
        base.step_sync(c)
        tuned.step_sync(c)
    ids = tuned.window.prefix + [t for s in tuned.window.slots for t in s]
    with torch.inference_mode():
        want = torch.log_softmax(pm(input_ids=torch.tensor([ids])).logits[0, :-1].float(), -1)
    assert torch.allclose(tuned.teacher_forced_logprobs(ids), want, atol=1e-4)  # merged == PEFT
    assert list(base.window.slots) != list(tuned.window.slots)
    assert backend.adapter_backend("one") is tuned.backend  # merged once, shared by sessions
    with pytest.raises(AdapterError):
        backend.open_session(greedy, adapter="../one")


def test_an_adapter_opened_from_many_threads_at_once_is_merged_once(nano_model_dir, tmp_path):
    pytest.importorskip("peft")
    from concurrent.futures import ThreadPoolExecutor

    from tests.think.lora import random_lora
    from think.sampling import SamplingConfig
    from think.transformers_backend import TransformersBackend

    random_lora(nano_model_dir, None, seed=0, scale=1.0, rank=4, targets=["q_proj"], save=False).save_pretrained(
        tmp_path / "ads" / "one")
    backend = TransformersBackend.from_dir(nano_model_dir, adapters_dir=tmp_path / "ads")
    merges = []
    real = backend._merged_backend
    backend._merged_backend = lambda name: merges.append(name) or real(name)
    with ThreadPoolExecutor(4) as pool:  # what the server does: sessions open in worker threads
        sessions = list(pool.map(lambda _: backend.open_session(SamplingConfig(), adapter="one"), range(4)))
    assert merges == ["one"]
    assert len({id(s.backend) for s in sessions}) == 1
