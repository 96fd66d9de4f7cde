"""Duplex checkpoint directories: make one (from a config or a local base LLM) and load one, checked.

A checkpoint directory is a plain Hugging Face causal-LM directory (so transformers and vLLM load it
unchanged) plus ``duplex_layout.json`` (the token layout) and ``tokenizer.json`` (the text tokenizer)::

    config.json  model.safetensors  generation_config.json  tokenizer.json  duplex_layout.json

plus ``duplex_init.json`` (provenance: ``init`` is "config", "base" or "speech-base") and, for checkpoints
from a base LLM with a chat template, ``chat_template.jinja``.

The model is a standard Llama-family decoder whose vocabulary is the layout's whole id space, padded
to a multiple of 64 (ids past the layout are never sampled).
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from think.layout import DuplexLayout
from think.tokenizer import TOKENIZER_FILE, default_tokenizer, load_tokenizer

log = logging.getLogger(__name__)
VOCAB_MULTIPLE = 64


@dataclass
class ModelConfig:
    """Shape of a from-scratch decoder (Llama architecture, so vLLM serves it as is).

    Attributes:
        layers: transformer blocks.
        hidden: model width.
        heads: attention heads (hidden must divide evenly).
        kv_heads: key/value heads (grouped-query attention when < heads).
        intermediate: MLP width.
        max_positions: longest context in ids (the rolling window stays below it).
        rope_theta: rotary base.
        tie_embeddings: share input embedding and output head (halves the vocab parameters).
    """

    layers: int = 4
    hidden: int = 256
    heads: int = 4
    kv_heads: int = 1
    intermediate: int = 512
    max_positions: int = 2048
    rope_theta: float = 10000.0
    tie_embeddings: bool = True


# Named shapes. "tiny" is the embedded default's shape; "nano" keeps tests fast. On a CPU a batch-1
# forward is memory-bound: it streams the weights and the whole KV cache. Measured here for 4x256 with
# 1300 -> 3900 ids of context: 20.7 -> 33.7 ms per codec2 frame with 4 KV heads, 15.8 -> 25.2 with 1.
# So "tiny" uses one KV head (multi-query attention) and a 1024-id window (78 codec2 frames, 6.2 s; a
# rebase keeps the newest half). Training is the other reason: windows must span every serving position,
# and at 1561 ids attention was 60 % of a CPU training step (bf16, 8 windows), 1.4x slower per id than at 1015.
MODEL_PRESETS: dict[str, ModelConfig] = {
    "nano": ModelConfig(layers=2, hidden=64, heads=2, kv_heads=2, intermediate=128, max_positions=4096),
    "tiny": ModelConfig(max_positions=1024),
    "small": ModelConfig(layers=8, hidden=384, heads=6, kv_heads=6, intermediate=1152),
    # "tiny" for the fsq layout: its 6 x 4096 audio ids per stream make the tied embedding 4x tiny's, so
    # the width drops to 192 (and depth rises to 6) to keep the shipped bf16 file under 25 MB (12.2 M params).
    "tiny-fsq": ModelConfig(layers=6, hidden=192, heads=3, kv_heads=1, intermediate=512, max_positions=1024),
}


def padded_vocab(layout: DuplexLayout) -> int:
    return -(-layout.vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def init_from_config(out_dir: str | Path, layout: DuplexLayout, config: ModelConfig, seed: int = 0,
                     tokenizer: Any = None) -> Path:
    """Write a randomly initialised checkpoint of the given shape for ``layout``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or default_tokenizer()
    if tokenizer.get_vocab_size() != layout.text_vocab_size:
        raise ValueError(f"Layout text_vocab_size={layout.text_vocab_size} but the tokenizer has "
                         f"{tokenizer.get_vocab_size()} ids.")
    if config.hidden % config.heads or config.heads % config.kv_heads:
        raise ValueError("hidden must be a multiple of heads, and heads a multiple of kv_heads.")
    if (config.hidden // config.heads) % 2:  # rotary embeddings rotate pairs of dimensions
        raise ValueError(f"hidden / heads (the head size) must be even for rotary embeddings, got "
                         f"{config.hidden} / {config.heads} = {config.hidden // config.heads}.")
    torch.manual_seed(seed)
    hf_config = LlamaConfig(
        vocab_size=padded_vocab(layout), hidden_size=config.hidden, intermediate_size=config.intermediate,
        num_hidden_layers=config.layers, num_attention_heads=config.heads,
        num_key_value_heads=config.kv_heads, max_position_embeddings=config.max_positions,
        rope_theta=config.rope_theta, tie_word_embeddings=config.tie_embeddings,
        bos_token_id=layout.special("session_start"), eos_token_id=layout.eot_id,
        pad_token_id=layout.pad_id, torch_dtype="float32",
    )
    model = LlamaForCausalLM(hf_config)
    return _write(out_dir, model, layout, tokenizer, {"init": "config", "model": asdict(config), "seed": seed})


def init_from_base(out_dir: str | Path, layout_for_vocab: Any, base: str | Path) -> Path:
    """Extend a local base LLM (Llama/Qwen2 family; see :mod:`think.base_llm` for what ``base`` may be)
    with the layout's ids and write a checkpoint.

    ``layout_for_vocab(text_vocab_size) -> DuplexLayout`` builds the layout once the base's text
    vocabulary size is known. New rows are drawn from the distribution of the existing embeddings
    (transformers' mean resizing), so the new ids start near the text ids rather than at random.
    """
    from think.base_llm import load_base_llm

    model, tokenizer, source = load_base_llm(base)
    text_vocab = model.get_input_embeddings().num_embeddings
    layout: DuplexLayout = layout_for_vocab(text_vocab)
    model.resize_token_embeddings(padded_vocab(layout), mean_resizing=True)
    if layout.heard_text:
        _heard_rows_from_text(model, layout, heard_shift(model, text_vocab))
    model.config.pad_token_id = layout.pad_id
    out = _write(out_dir, model, layout, tokenizer, {"init": "base", "base": source,
                                                    "text_vocab_size": text_vocab})
    template = getattr(tokenizer, "chat_template", None)
    if template:
        from think.base_llm import CHAT_TEMPLATE_FILE

        (out / CHAT_TEMPLATE_FILE).write_text(template)
    return out


def add_heard_text(src: str | Path, out_dir: str | Path) -> Path:
    """Grow a checkpoint into the heard-text layout (:mod:`think.layout`, version 2) and write it.

    The heard range is appended after every other id, so no existing id moves: the model keeps what it
    learned and only gains rows. Each heard row starts as a copy of its text twin's row ("hello" heard
    starts where "hello" written is), and training separates them. In a speech base (made from a base
    LLM) every heard row is its twin plus one shared vector (:func:`heard_shift`), and stays so in training.
    """
    import dataclasses

    loaded = load_checkpoint(src)
    old = loaded.layout
    if old.heard_text:
        raise ValueError(f"{src} already has a heard-text range.")
    layout = dataclasses.replace(old, heard_text=True, version=2)
    model = loaded.model
    model.resize_token_embeddings(padded_vocab(layout), mean_resizing=False)
    info_path = Path(src) / "duplex_init.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    _heard_rows_from_text(model, layout, heard_shift(model, old.text_vocab_size) if info.get("base") else None)
    out = _write(out_dir, model, layout, loaded.tokenizer, {**info, "heard_text_from": str(src)})
    from think.base_llm import CHAT_TEMPLATE_FILE

    if (Path(src) / CHAT_TEMPLATE_FILE).is_file():
        shutil.copy(Path(src) / CHAT_TEMPLATE_FILE, out / CHAT_TEMPLATE_FILE)
    return out


def heard_shift(model: Any, text_vocab: int, seed: int = 0) -> Any:
    """The shared vector ``(hidden,)`` that tells a speech base's heard rows from their text twins: Gaussian,
    at half the per-dimension spread of the text rows (large enough to be seen, small enough that the word
    still dominates the row). A speech base trains it (``train_new_rows_only``) instead of 49,152 rows: its
    heard range costs one row in the shipped delta (``think/delta.py``)."""
    import torch

    emb = model.get_input_embeddings().weight.detach()[:text_vocab].float()
    g = torch.Generator().manual_seed(seed)
    return torch.randn(emb.shape[1], generator=g) * emb.std(0) * 0.5


def _heard_rows_from_text(model: Any, layout: DuplexLayout, shift: Any = None) -> None:
    """Start every heard row as a copy of its text twin, plus ``shift`` ``(hidden,)`` if given (input
    embedding, and an untied output head)."""
    import torch

    text = slice(0, layout.text_vocab_size)
    heard = slice(layout.heard_offset, layout.heard_offset + layout.text_vocab_size)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[heard] = emb[text] + (0 if shift is None else shift.to(emb.dtype))
        head = model.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != emb.data_ptr():
            head.weight[heard] = head.weight[text] + (0 if shift is None else shift.to(head.weight.dtype))


def _write(out_dir: str | Path, model: Any, layout: DuplexLayout, tokenizer: Any, provenance: dict) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save(str(out / TOKENIZER_FILE))
    layout.save(out)
    n_params = sum(p.numel() for p in model.parameters())
    (out / "duplex_init.json").write_text(json.dumps({**provenance, "parameters": n_params}, indent=2) + "\n")
    log.info("wrote checkpoint %s (%.2f M parameters)", out, n_params / 1e6)
    return out


@dataclass
class LoadedModel:
    model: Any
    layout: DuplexLayout
    tokenizer: Any
    path: Path


def check_model_dir(path: str | Path) -> Path:
    """Raise a clear error unless ``path`` looks like a duplex checkpoint directory."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"Model directory {p} does not exist; pass --model with a directory made by "
                                f"`duplex model init` (or leave it out to use the embedded default).")
    if not p.is_dir() or not (p / "config.json").is_file():
        raise FileNotFoundError(f"{p} is not a model directory (no config.json); pass --model with a "
                                f"directory made by `duplex model init`.")
    return p


def trained_window_frames(path: str | Path) -> int | None:
    """The window, in frames, that the checkpoint's last training stage saw (``window_frames`` in the
    ``train_config.json`` that ``duplex train`` writes beside the weights); None if it does not say.

    Why: a model fine-tuned on short windows has never seen the duplex stream past them, even when its
    base's positions reach further (SmolLM2: 8,192 ids, 628 frames, against stage b's 120-frame windows)."""
    f = Path(path) / "train_config.json"
    try:
        frames = json.loads(f.read_text()).get("window_frames")
    except (OSError, ValueError, AttributeError):
        return None
    return frames if isinstance(frames, int) and not isinstance(frames, bool) and frames > 0 else None


def load_checkpoint(path: str | Path, device: str = "cpu", dtype: str = "float32") -> LoadedModel:
    """Load model, layout and tokenizer, and check that they agree."""
    import torch
    from transformers import AutoModelForCausalLM

    from transformers.utils import logging as hf_logging

    p = check_model_dir(path)
    layout = DuplexLayout.load(p)
    tokenizer = load_tokenizer(p)
    hf_logging.disable_progress_bar()  # a loading bar per session is noise on a CLI and in server logs
    try:
        model = AutoModelForCausalLM.from_pretrained(p, local_files_only=True, dtype=getattr(torch, dtype))
    except (OSError, ValueError) as e:
        text = str(e).strip()
        if "\n" not in text:
            raise  # transformers' own messages for missing/unreadable files are already clear
        # Some are pages (an unknown model_type: its paragraphs on upgrading transformers): keep the first.
        raise ValueError(f"Cannot load {p}: {' '.join(text.split(chr(10) * 2)[0].split())}") from e
    except Exception as e:  # e.g. safetensors' SafetensorError on damaged weights, shape mismatches
        raise ValueError(f"Cannot load the weights in {p} ({type(e).__name__}: {str(e).strip()}); the checkpoint "
                         f"is damaged or incomplete: rebuild it with `duplex model init`.") from e
    model.to(device).eval()
    check_agreement(model, layout, tokenizer, p)
    return LoadedModel(model=model, layout=layout, tokenizer=tokenizer, path=p)


def check_agreement(model: Any, layout: DuplexLayout, tokenizer: Any, where: Any = "") -> None:
    """The model must cover every layout id, and the tokenizer must match the text range."""
    rows = model.get_input_embeddings().num_embeddings
    if rows < layout.vocab_size:
        raise ValueError(f"Model in {where} has {rows} embedding rows but its layout needs {layout.vocab_size} "
                         f"ids; the layout and the weights do not belong together.")
    if rows != padded_vocab(layout):
        # Checkpoints pad the layout's ids to a multiple of 64; any other size means a layout that
        # shifted under the weights (every audio id would be off), even if it still "fits".
        raise ValueError(f"Model in {where} has {rows} embedding rows but its layout pads to {padded_vocab(layout)}; "
                         f"the layout and the weights do not belong together.")
    head = model.get_output_embeddings()
    if head is not None and head.weight.shape[0] < layout.vocab_size:
        raise ValueError(f"Model in {where} has an output head of {head.weight.shape[0]} ids but its layout needs "
                         f"{layout.vocab_size}.")
    if tokenizer.get_vocab_size() > layout.text_vocab_size:
        raise ValueError(f"Tokenizer in {where} has {tokenizer.get_vocab_size()} ids but the layout reserves "
                         f"only {layout.text_vocab_size} text ids.")
