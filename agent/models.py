"""Finding and building models: the embedded default, ``duplex model init``, and codec loading.

Nothing is downloaded: a model is a local directory. Without ``--model`` the embedded default under
``demo/default_model`` (the project's trained tiny model, see its MODEL_CARD.md) is used; where that
directory is missing (a trimmed install), an untrained random "tiny" model is built once into the
user's cache instead (and the CLI says so).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from streaming.codecs.base import Codec, load_codec
from think.checkpoint import (
    MODEL_PRESETS,
    ModelConfig,
    check_model_dir,
    init_from_base,
    init_from_config,
)
from think.layout import LAYOUT_FILE, DuplexLayout
from think.tokenizer import default_tokenizer

log = logging.getLogger(__name__)
EMBEDDED_DEFAULT = Path(__file__).resolve().parent.parent / "demo" / "default_model"

# Codec presets for layouts: name -> (codec name, options, q_in, q_out).
CODEC_PRESETS: dict[str, tuple[str, dict, int | None, int | None]] = {
    "codec2": ("codec2", {"mode": "700C", "frame_ms": 80}, None, None),
    "codec2-1300": ("codec2", {"mode": 1300, "frame_ms": 80}, None, None),
    "codec2-3200": ("codec2", {"mode": 3200, "frame_ms": 80}, None, None),
    "mimi": ("mimi", {"num_quantizers": 8}, 8, 8),
    "snac": ("snac", {}, None, None),
    "fsq": ("fsq", {}, None, None),  # the project's own codec: the weights shipped in streaming/codecs/assets/fsq
}


def cache_dir() -> Path:
    root = os.environ.get("DUPLEX_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")),
                                                         "duplex-agent")
    return Path(root)


def codec_for_layout(layout: DuplexLayout, codec_weights: str | Path | None = None) -> Codec:
    """Rebuild the codec a layout was made with (neural codecs need their local weights)."""
    options = dict(layout.codec.options)
    if codec_weights:
        options["weights_dir"] = str(codec_weights)
    return load_codec(layout.codec.name, **options)


def build_layout(codec: Codec, text_vocab_size: int, q_in: int | None = None, q_out: int | None = None,
                 text_lead: int = 1, heard_text: bool = False) -> DuplexLayout:
    return DuplexLayout.for_codec(codec, text_vocab_size, q_in=q_in, q_out=q_out, text_lead=text_lead,
                                  heard_text=heard_text)


def codec_from_preset(name: str, codec_weights: str | Path | None = None,
                      codec_config: dict | None = None) -> tuple[Codec, int | None, int | None]:
    if name not in CODEC_PRESETS:
        raise ValueError(f"Unknown codec preset {name!r}; choose one of {', '.join(CODEC_PRESETS)}.")
    codec_name, options, q_in, q_out = CODEC_PRESETS[name]
    options = dict(options)
    if codec_weights:
        options["weights_dir"] = str(codec_weights)
    if codec_config:
        options["config"] = codec_config
    return load_codec(codec_name, **options), q_in, q_out


def init_model(out_dir: str | Path, preset: str = "tiny", codec: str = "codec2", base: str | Path | None = None,
               q_in: int | None = None, q_out: int | None = None, text_lead: int = 1, seed: int = 0,
               codec_weights: str | Path | None = None, model_overrides: dict | None = None,
               codec_config: dict | None = None, heard_text: bool = False) -> Path:
    """``duplex model init``: a checkpoint directory from a shape preset or a local base LLM
    (``heard_text``: the layout's text slot also carries the user's transcript, see :mod:`think.layout`)."""
    codec_obj, pq_in, pq_out = codec_from_preset(codec, codec_weights, codec_config)
    # None means "the preset's default"; 0 is a bad value for the layout to refuse, not "all".
    q_in = pq_in if q_in is None else q_in
    q_out = pq_out if q_out is None else q_out
    for name, q in (("--q-in", q_in), ("--q-out", q_out)):
        if q is not None and q < 1:
            raise ValueError(f"{name} must be >= 1 (leave it out to use all of the codec's codebooks), got {q}.")
    if base:
        return init_from_base(out_dir, lambda v: build_layout(codec_obj, v, q_in, q_out, text_lead, heard_text), base)
    if preset not in MODEL_PRESETS:
        raise ValueError(f"Unknown model preset {preset!r}; choose one of {', '.join(MODEL_PRESETS)}.")
    cfg = _model_config(preset, model_overrides)
    tok = default_tokenizer()
    layout = build_layout(codec_obj, tok.get_vocab_size(), q_in, q_out, text_lead, heard_text)
    return init_from_config(out_dir, layout, cfg, seed=seed, tokenizer=tok)


def _model_config(preset: str, overrides: dict | None) -> ModelConfig:
    """The preset's shape with ``overrides`` (``--model-json``) applied, each key and value checked."""
    base = dict(MODEL_PRESETS[preset].__dict__)
    if overrides is None:
        return ModelConfig(**base)
    if not isinstance(overrides, dict):
        raise ValueError(f'Model shape overrides must be a JSON object such as {{"layers": 6}}, got {overrides!r}.')
    unknown = sorted(set(overrides) - set(base))
    if unknown:
        raise ValueError(f"Unknown model shape key(s) {', '.join(unknown)}; known: {', '.join(base)}.")
    for key, value in overrides.items():
        kind = type(base[key])
        if kind is bool:
            ok = isinstance(value, bool)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
        if not ok:
            want = {bool: "true or false", int: "a positive integer"}.get(kind, "a positive number")
            raise ValueError(f"Model shape {key} must be {want}, got {value!r}.")
    return ModelConfig(**{**base, **overrides})


def random_tiny_dir() -> Path:
    """Where the untrained stand-in for the default model is cached (named by its shape and codec)."""
    shape = json.dumps([MODEL_PRESETS["tiny"].__dict__, CODEC_PRESETS["codec2"]], sort_keys=True, default=str)
    return cache_dir() / f"random-tiny-{hashlib.sha1(shape.encode()).hexdigest()[:8]}"


def resolve_model(model: str | Path | None, announce: Any = None) -> Path:
    """The model directory to load: ``--model``, else the embedded default, else a cached random tiny."""
    if model:
        return check_model_dir(model)
    if (EMBEDDED_DEFAULT / LAYOUT_FILE).is_file():
        return EMBEDDED_DEFAULT
    path = random_tiny_dir()  # named by shape and codec: a changed preset never reuses a stale model
    if not (path / LAYOUT_FILE).is_file():
        if announce:
            announce(f"The embedded default model ({EMBEDDED_DEFAULT}) is missing; building an untrained random 'tiny' model in {path}.")
        init_model(path, preset="tiny", codec="codec2")
    elif announce:
        announce(f"Using the untrained random 'tiny' model in {path} (the embedded default {EMBEDDED_DEFAULT} is missing).")
    return path


# What a shipped model directory carries besides its weights: what `--model` needs, and how it was made.
EXPORT_FILES = ("duplex_layout.json", "tokenizer.json", "generation_config.json", "train_config.json",
                "final_metrics.json", "loss.png", "duplex_init.json")


def export_model(src: str | Path, out: str | Path, dtype: str = "bfloat16") -> Path:
    """Write a shipping copy of checkpoint ``src`` with its weights stored in ``dtype`` (loading casts
    them back to float32; bfloat16 halves the file). Provenance files travel with it."""
    import shutil

    import torch

    from think.checkpoint import load_checkpoint

    if dtype not in ("bfloat16", "float16", "float32"):
        raise ValueError(f"--dtype must be bfloat16, float16 or float32, got {dtype!r}.")
    loaded = load_checkpoint(src)
    out = Path(out)
    if out.resolve() == Path(src).resolve():
        raise ValueError("Export into a new directory, not over the source checkpoint.")
    out.mkdir(parents=True, exist_ok=True)
    loaded.model.to(getattr(torch, dtype)).save_pretrained(out, safe_serialization=True)
    for name in EXPORT_FILES:
        if (Path(src) / name).is_file():
            shutil.copy(Path(src) / name, out / name)
    return out
