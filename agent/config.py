"""Configuration: one dataclass per component, YAML presets, ``--set a.b=value`` overrides.

Every output directory gets the resolved configuration saved beside it (``*.config.json``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent.heard import HeardConfig
from agent.policy import PolicyConfig
from think.context import ContextConfig
from think.sampling import SamplingConfig

PRESETS = Path(__file__).parent / "presets"


@dataclass
class SessionConfig:
    """One conversation.

    Attributes:
        system_prompt: text placed before the conversation (persona, instructions).
        vad_aggressiveness: webrtcvad mode 0 (lenient) .. 3 (strict). 3: mode 2 takes a noise suppressor's
            residue and a cancelled echo for speech, and each such run can cut the agent (the model card's
            *A stricter VAD*).
        resample_quality: soxr quality of the microphone resampler ("QQ", "LQ", "MQ", "HQ", "VHQ"); higher
            qualities hold back more audio (HQ: up to ~115 ms for 16 -> 8 kHz), so live sessions use LQ.
        max_queued_frames: user frames waiting for the model before the oldest are dropped (real time
            only; offline runs never drop).
        sampling: how the agent's ids are drawn.
        policy: barge-in and echo settings.
        context: rolling-window settings.
        heard: who writes a heard-text model's transcript of the user (its own draws or the listener's
            recogniser; ``agent/heard.py``).
        turn_detector: the turn detector that tells a mid-turn pause from a finished turn
            (``listen/turn_detector.py``; the policy's ``wait_unfinished``): "" the shipped one (none when this
            copy ships none), "off", or a detector directory (``duplex turn train``).
    """

    system_prompt: str = ""
    vad_aggressiveness: int = 3
    resample_quality: str = "LQ"
    max_queued_frames: int = 25
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    context: ContextConfig = field(default_factory=ContextConfig)
    heard: HeardConfig = field(default_factory=HeardConfig)
    turn_detector: str = ""

    def __post_init__(self) -> None:
        if self.vad_aggressiveness not in (0, 1, 2, 3):
            raise ValueError("vad_aggressiveness must be 0, 1, 2 or 3.")
        if self.resample_quality not in ("QQ", "LQ", "MQ", "HQ", "VHQ"):
            raise ValueError("resample_quality must be one of QQ, LQ, MQ, HQ, VHQ.")
        if self.max_queued_frames < 1:
            raise ValueError("max_queued_frames must be >= 1.")


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def from_dict(cls: type, data: dict | None, where: str = "") -> Any:
    """Build dataclass ``cls`` from a (nested) dict, refusing unknown keys with a clear message."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"Unknown setting(s) {', '.join(sorted(where + k for k in unknown))}; "
                         f"known: {', '.join(sorted(names))}.")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            kwargs[key] = from_dict(hint, value, f"{where}{key}.")
        else:
            kwargs[key] = value
    return cls(**kwargs)


_INT_LIMIT = 2 ** 63  # no setting needs more; beyond it torch (seeds) and C code overflow
_KIND_WORDS = {bool: "true/false", int: "an integer", float: "a number", str: "text", type(None): "null"}


def plain_kinds(hint: Any) -> tuple | None:
    """The plain types a field's hint allows (bool, int, float, str, None), or None for any other hint
    (a section, a list, a dict: checked by their own dataclass)."""
    if typing.get_origin(hint) in (list, tuple, dict, set):
        return None
    allowed = typing.get_args(hint) or (hint,)
    return allowed if all(t in _KIND_WORDS for t in allowed) else None


def kind_error(name: str, value: Any, allowed: tuple) -> str | None:
    """Why ``value`` does not fit a setting of the plain types ``allowed`` (None when it does)."""
    ok = ((value is None and type(None) in allowed) or (isinstance(value, str) and str in allowed)
          or (isinstance(value, bool) and bool in allowed)
          or (not isinstance(value, bool) and isinstance(value, int) and (int in allowed or float in allowed)
              and abs(value) < _INT_LIMIT)
          or (isinstance(value, float) and float in allowed))
    if ok:
        return None
    kinds = " or ".join(dict.fromkeys(_KIND_WORDS[t] for t in allowed))
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= _INT_LIMIT:
        kinds += f" below {_INT_LIMIT:.1e}"
    quote = " (quote it to make it text)" if str in allowed and isinstance(value, (int, float)) else ""
    return f"{name} must be {kinds}{quote}, got {value!r:.80}."


def check_types(cls: type, data: dict | None, where: str = "") -> None:
    """Check a (nested) settings dict against ``cls``'s field types before building it, so a wrong
    type is named (``sampling.seed must be an integer or null, got 1.5``) instead of failing later
    inside a component. Only plain types (bool, int, float, str and unions with None) are checked;
    unknown keys are left to :func:`from_dict`."""
    if not isinstance(data, dict):
        return
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        hint = hints.get(key)
        if hint is None:
            continue
        name = f"{where}{key}"
        if dataclasses.is_dataclass(hint):
            if isinstance(value, dict):
                check_types(hint, value, f"{name}.")
            else:
                raise ValueError(f"{name} must be a section of settings (a mapping), got {value!r:.80}.")
            continue
        allowed = plain_kinds(hint)
        error = kind_error(name, value, allowed) if allowed else None
        if error:
            raise ValueError(error)


# YAML 1.1 reads "5e-4" (an exponent without a dot) as text; every user means the number.
_EXPONENT_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def parse_scalar(text: str) -> Any:
    """A ``--set`` value as YAML reads it, with ``5e-4``-style numbers read as numbers."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
        return float(value)
    return value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=value`` strings to a nested dict (values parsed as YAML scalars)."""
    data = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"Override {item!r} must look like key.sub=value.")
        key, value = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"Override {item!r}: {part} is not a section.")
        node[parts[-1]] = parse_scalar(value)
    return data


# Which settings a preset holds, by its name's prefix (the rest are session presets).
PRESET_KINDS = {"train-": "training", "codec-": "codec training", "data-": "data synthesis", "daemon": "daemon"}


def preset_kind(name: str) -> str:
    return next((kind for prefix, kind in PRESET_KINDS.items() if name.startswith(prefix)), "session")


def is_finite_number(v: Any) -> bool:
    """An int or float (not a bool, not NaN or infinite): what a numeric setting from YAML or JSON must be."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def load_yaml(path_or_preset: str | Path, kind: str | None = None) -> dict:
    """Load a YAML file, or a preset by name from ``agent/presets``; with ``kind`` (see ``PRESET_KINDS``), a
    preset of another kind is refused by name instead of failing on its unknown settings."""
    path = Path(path_or_preset)
    if not path.is_file():
        preset = PRESETS / f"{path_or_preset}.yaml"
        names = sorted(p.stem for p in PRESETS.glob("*.yaml") if kind is None or preset_kind(p.stem) == kind)
        if not preset.is_file():
            raise FileNotFoundError(f"No config file or preset named {path_or_preset!r}; presets: {', '.join(names)}.")
        if kind is not None and preset_kind(preset.stem) != kind:
            raise ValueError(f"{preset.stem} is a {preset_kind(preset.stem)} preset, not {kind} settings; "
                             f"{kind} presets: {', '.join(names)}.")
        path = preset
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a UTF-8 text file of settings.") from None
    except yaml.YAMLError as e:  # one line, not the parser's multi-line report
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ValueError(f"{path} is not valid YAML{where}: {getattr(e, 'problem', None) or e}.") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of settings.")
    _check_plain(data, path, "", set())
    return data


def _check_plain(node: Any, path: Path, where: str, seen: set[int]) -> None:
    """Refuse what YAML reads into something other than text, numbers, booleans, lists and mappings (an unquoted
    date such as ``system_prompt: 2024-01-01``, ``!!binary``, ``!!set``, a self-referencing anchor), naming the
    key: such values would otherwise fail far from the file with a bare Python error."""
    if isinstance(node, (dict, list)):
        if id(node) in seen:
            raise ValueError(f"{where} in {path} refers to itself (a YAML anchor used inside itself).")
        seen = seen | {id(node)}
        for key, value in (node.items() if isinstance(node, dict) else enumerate(node)):
            if isinstance(node, dict):
                if not isinstance(key, (str, int)) or isinstance(key, bool):  # 1: ... is refused by name later
                    raise ValueError(f"{key!r} in {path} is not a setting name (names are text).")
                child = f"{where}.{key}" if where else str(key)
            else:
                child = f"{where}[{key}]"
            _check_plain(value, path, child, seen)
    elif node is not None and not isinstance(node, (str, int, float, bool)):
        raise ValueError(f"{where or 'a value'} in {path} is a {type(node).__name__} ({node}), not text or a "
                         f"number; quote it to make it text.")


def resolve_session_config(config: str | Path | None = None, overrides: list[str] | None = None) -> SessionConfig:
    data = load_yaml(config, kind="session") if config else {}
    return from_dict(SessionConfig, apply_overrides(data, overrides or []))


def add_train_flags(p: Any, outputs: str, set_example: str) -> None:
    """The flags every small model's ``train`` command takes (argparse parser ``p``); what they set is read back
    by :func:`config_from_flags`."""
    p.add_argument("--data", help="dialogue directories (duplex data synth), comma-separated")
    p.add_argument("--out", help=f"output directory ({outputs})")
    p.add_argument("--steps", type=int, help="training steps")
    p.add_argument("--max-seconds", type=float, help="wall-clock budget (the schedule ends with it)")
    p.add_argument("--threads", type=int, help="torch threads (default 2)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a setting, e.g. {set_example}")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def config_from_flags(cls: type, args: Any, flags: tuple[str, ...]) -> Any:
    """A ``cls`` config from a command's flags (``args.<flag>``; those not given are left to the defaults) and its
    ``--set KEY=VALUE`` overrides (``args.overrides``), types checked first (nested dict fields are left to
    ``from_dict``)."""
    data = {k: getattr(args, k) for k in flags if getattr(args, k, None) is not None}
    data = apply_overrides(data, getattr(args, "overrides", None) or [])
    check_types(cls, {k: v for k, v in data.items() if not isinstance(v, dict)})
    return from_dict(cls, data)


def save_resolved(path: str | Path, **sections: Any) -> Path:
    """Write the resolved configuration (dataclasses or plain values) as JSON."""
    out = {k: (to_dict(v) if dataclasses.is_dataclass(v) else v) for k, v in sections.items()}
    path = Path(path)
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    return path
