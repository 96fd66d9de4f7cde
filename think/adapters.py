"""LoRA adapters served per session: found by name in one configured directory, checked before use.

An adapter is a PEFT ``save_pretrained`` directory (``adapter_config.json`` + weights) named
``<adapters_dir>/<name>``. Sessions choose one by *name only*: a name is one path component of letters,
digits, ``.``, ``_`` or ``-`` (no ``/``, no ``..``, not absolute), and the resolved directory must lie
inside ``adapters_dir``. The config is checked against what vLLM can serve: LoRA on the attention / MLP
projections only, no ``modules_to_save`` (vLLM rejects it, and extra vocabulary), rank within the
engine's ``max_lora_rank``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


class AdapterError(ValueError):
    """An adapter name or directory that cannot be served (the message is one sentence for the user)."""


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    path: Path
    rank: int
    alpha: float
    targets: tuple[str, ...]


def resolve_adapter(adapters_dir: str | Path | None, name: str, max_rank: int | None = None) -> AdapterInfo:
    """The checked adapter ``name`` under ``adapters_dir``; :class:`AdapterError` says what is wrong."""
    if adapters_dir is None:
        raise AdapterError(f"Adapter {name!r} was asked for but no adapter directory is configured.")
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", "..") or ".." in name:
        raise AdapterError(f"Adapter name {name!r} is not a plain name (letters, digits, '.', '_', '-'; "
                           f"no '/', '..' or absolute paths).")
    root = Path(adapters_dir).resolve()
    path = (root / name).resolve()
    if path.parent != root:
        raise AdapterError(f"Adapter {name!r} resolves outside the adapter directory {root}.")
    if not path.is_dir():
        raise AdapterError(f"No adapter named {name!r} in {root}.")
    cfg_file = path / "adapter_config.json"
    if not cfg_file.is_file():
        raise AdapterError(f"Adapter {name!r} has no adapter_config.json; it is not a PEFT adapter directory.")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise AdapterError(f"Adapter {name!r} has an unreadable adapter_config.json ({e}).") from e
    if not any((path / w).is_file() for w in _WEIGHTS):
        raise AdapterError(f"Adapter {name!r} has no adapter_model.safetensors; it is incomplete.")
    return check_adapter_config(name, path, cfg, max_rank)


def check_adapter_config(name: str, path: Path, cfg: dict, max_rank: int | None = None) -> AdapterInfo:
    """Refuse what vLLM cannot serve, one sentence per problem."""
    peft_type = str(cfg.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise AdapterError(f"Adapter {name!r} is a {peft_type} adapter; only LoRA adapters can be served.")
    if cfg.get("modules_to_save"):
        raise AdapterError(f"Adapter {name!r} has modules_to_save ({', '.join(map(str, cfg['modules_to_save']))}); "
                           f"vLLM serves LoRA on attention/MLP projections only, retrain it without them.")
    targets = cfg.get("target_modules") or []
    if isinstance(targets, str):
        raise AdapterError(f"Adapter {name!r} selects its target modules by a pattern ({targets!r}); "
                           f"list the projections ({', '.join(LORA_TARGETS)}) explicitly.")
    bad = sorted({str(t) for t in targets} - set(LORA_TARGETS))
    if bad or not targets:
        raise AdapterError(f"Adapter {name!r} targets {', '.join(bad) or 'nothing'}; only the attention/MLP "
                           f"projections ({', '.join(LORA_TARGETS)}) can be served.")
    for key in ("use_dora", "use_rslora"):
        if cfg.get(key):
            raise AdapterError(f"Adapter {name!r} uses {key.removeprefix('use_')}, which vLLM cannot serve.")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise AdapterError(f"Adapter {name!r} has per-module ranks (rank_pattern/alpha_pattern), which vLLM "
                           f"cannot serve.")
    if cfg.get("bias", "none") not in ("none", None):
        raise AdapterError(f"Adapter {name!r} trains biases (bias={cfg['bias']!r}), which vLLM cannot serve.")
    rank = int(cfg.get("r", 0))
    if rank < 1:
        raise AdapterError(f"Adapter {name!r} has no valid rank r in its adapter_config.json.")
    if max_rank is not None and rank > max_rank:
        raise AdapterError(f"Adapter {name!r} has rank {rank}, above the engine's max_lora_rank {max_rank}; "
                           f"restart the server with a larger max_lora_rank.")
    return AdapterInfo(name=name, path=path, rank=rank, alpha=float(cfg.get("lora_alpha", rank)),
                       targets=tuple(str(t) for t in targets))
