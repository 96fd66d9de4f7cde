"""``duplex data synth``: synthetic two-channel spoken dialogues for training the full-duplex model.

Output directory (the contract the tokenizer and trainer read):

- ``<id>.wav``   16 kHz, 2 channels, PCM16: channel 0 = the user as the model hears it (augmented, with the
  agent's echo), channel 1 = the agent, clean.
- ``<id>.json``  ``{"id", "split", "sample_rate", "duration", "user_voice", "agent_voice", "augment",
  "turns": [{"speaker", "start", "end", "text", "kind", "words": [{"word", "start", "end"}], "cut_at"}],
  "events": [{"type", "time", ...}], "qa": [{"question", "answer", "intent", "turn_index", "completed"}],
  "phenomena": [...], "word_alignment": "piper"|"estimate"}``. Times are seconds on the dialogue clock,
  rounded to 1 ms. Agent turns carry the words actually spoken (up to ``cut_at`` when interrupted; then
  ``text`` is those words and ``planned_text`` the full answer). User turns have ``words: []``.
  Turn kinds: user ``request`` | ``request_start`` (before a pause) | ``request_end`` (after it) |
  ``interruption`` | ``backchannel``; agent ``answer`` | ``backchannel``. Event types: ``turn_end``,
  ``pause``, ``user_backchannel``, ``interruption``, ``agent_backchannel``, ``silence``.
- ``manifest.json``  counts and durations per split, per event type, per turn kind, per phenomenon and intent;
  voice pools and voices used per split; the resolved config.

Deterministic given ``--seed``: dialogue ``i`` draws everything from ``numpy.random.default_rng([seed, i])``,
so the output does not depend on ``--workers`` or on resuming. Resumable: a dialogue whose ``.wav`` and
``.json`` both exist is skipped (files are written under a temporary name and renamed).
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from agent.config import is_finite_number
from agent.dialogue import augment as aug
from agent.dialogue import tts
from agent.dialogue.content import Picker, slot_split
from agent.dialogue.timeline import PHENOMENA, Builder, TimelineConfig, held

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"
USER_ENGINES = ("espeak", "flite", "festival", "kokoro")


@dataclass
class VoiceConfig:
    engines: list = field(default_factory=lambda: ["espeak", "flite", "festival"])
    # whole voices held out of training
    heldout: dict = field(default_factory=lambda: {"val": ["flite:awb", "festival:kal_diphone"],
                                                   "test": ["flite:kal", "festival:ked_diphone"]})
    # espeak-ng accents held out of training (every variant)
    heldout_accents: dict = field(default_factory=lambda: {"val": ["en-gb-scotland"], "test": ["en-gb-x-gbcwmd"]})
    # also hold out ~10 % + 10 % of the espeak-ng variants (in every accent) by a stable hash
    heldout_variants: bool = True
    # a dialogue's user voice: an engine by these weights, then a voice of that engine from the split's pool
    engine_weights: dict = field(default_factory=lambda: {"espeak": 0.5, "flite": 0.3, "festival": 0.2})
    espeak_rate: tuple = (130, 190)          # words per minute, drawn per dialogue
    espeak_pitch: tuple = (25, 75)           # espeak-ng pitch 0-99, drawn per dialogue
    kokoro_speed: tuple = (0.85, 1.15)       # Kokoro speaking rate, drawn per dialogue


@dataclass
class SynthConfig:
    count: int = 3
    splits: dict = field(default_factory=lambda: {"val": 1, "test": 1, "train": 18})   # one cycle, in order
    heldout_share: float = 0.6
    seconds_per_dialogue: float = 2.5        # measured here, for the time estimate only
    timeline: TimelineConfig = field(default_factory=TimelineConfig)
    augment: aug.AugmentConfig = field(default_factory=aug.AugmentConfig)
    voices: VoiceConfig = field(default_factory=VoiceConfig)


def _fill(cls, data: dict, where: str = ""):
    names = {f.name: f for f in dataclasses.fields(cls)}
    kw = {}
    for k, v in (data or {}).items():
        if k not in names:
            raise ValueError(f"unknown setting {k!r} for {cls.__name__}; known: {', '.join(names)}")
        ft = names[k].type
        sub = {"TimelineConfig": TimelineConfig, "aug.AugmentConfig": aug.AugmentConfig,
               "AugmentConfig": aug.AugmentConfig, "VoiceConfig": VoiceConfig}.get(ft if isinstance(ft, str)
                                                                                  else ft.__name__)
        if sub and not isinstance(v, dict):
            raise ValueError(f"data preset setting {where}{k} must be a section of settings (a mapping), got {v!r}.")
        kw[k] = _fill(sub, v, f"{where}{k}.") if sub else _check_kind(f"{where}{k}", v, _default(names[k]))
    return _check_values(cls(**kw))


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _check_kind(name: str, v, default):
    """A data preset value of the kind its default is (a wrong one failed inside the first dialogue's worker)."""
    bad = ((isinstance(default, bool) and not isinstance(v, bool))
           or (isinstance(default, int) and not isinstance(default, bool)
               and (isinstance(v, bool) or not isinstance(v, int)))
           or (isinstance(default, float) and not is_finite_number(v))
           or (isinstance(default, tuple) and not (isinstance(v, (list, tuple)) and len(v) == 2
                                                   and all(map(is_finite_number, v)) and v[0] <= v[1]))
           or (isinstance(default, (dict, list)) and not isinstance(v, type(default)))
           or (default is None and v is not None and not isinstance(v, dict)))
    if bad:
        want = ("true or false" if isinstance(default, bool) else "an integer" if isinstance(default, int)
                else "a number" if isinstance(default, float) else "a [low, high] range of numbers"
                if isinstance(default, tuple) else "a mapping" if isinstance(default, dict) or default is None
                else "a list")
        raise ValueError(f"data preset setting {name} must be {want}, got {v!r}.")
    return tuple(v) if isinstance(default, tuple) else v


def _weights(name: str, w: dict, known: tuple[str, ...] | None = None) -> None:
    unknown = [k for k in w if known is not None and k not in known]
    if unknown:
        raise ValueError(f"data preset setting {name} has unknown key(s) {', '.join(map(str, unknown))}; "
                         f"known: {', '.join(known)}.")
    if not all(is_finite_number(x) and x >= 0 for x in w.values()) or not sum(w.values()) > 0:
        raise ValueError(f"data preset setting {name} must map names to numbers >= 0 with a positive sum, got {w!r}.")


def _check_values(cfg):
    """The ranges the synthesis needs (each of these failed inside a worker, or divided by zero)."""
    if isinstance(cfg, SynthConfig):
        _weights("splits", cfg.splits, ("train", "val", "test"))
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in cfg.splits.values()):
            raise ValueError(f"data preset setting splits must map splits to whole dialogue counts, got {cfg.splits!r}.")
        if not 0 <= cfg.heldout_share <= 1 or cfg.seconds_per_dialogue <= 0:
            raise ValueError("data preset settings heldout_share must be 0 to 1 and seconds_per_dialogue > 0.")
    elif isinstance(cfg, VoiceConfig):
        unknown = [e for e in cfg.engines if e not in USER_ENGINES]
        if unknown or not cfg.engines:
            raise ValueError(f"data preset setting voices.engines must name user voice engines from "
                             f"{', '.join(USER_ENGINES)}, got {cfg.engines!r}.")
        _weights("voices.engine_weights", cfg.engine_weights, USER_ENGINES)
        for name, (lo, hi) in (("espeak_rate", (80, 450)), ("espeak_pitch", (0, 99)), ("kokoro_speed", (0.5, 2.0))):
            a, b = getattr(cfg, name)
            if not lo <= a <= b <= hi:
                raise ValueError(f"data preset setting voices.{name} must be a range within {lo} to {hi}, "
                                 f"got {[a, b]}.")
    elif isinstance(cfg, TimelineConfig):
        _weights("timeline.phenomena", cfg.phenomena, PHENOMENA)
        if not (0 < cfg.min_duration and cfg.min_duration + 3.0 <= cfg.max_duration):
            raise ValueError(f"data preset settings timeline.min_duration and max_duration need 0 < min and "
                             f"min + 3 s <= max, got {cfg.min_duration} and {cfg.max_duration}.")
    return cfg


def load_preset(name_or_path: str | None) -> SynthConfig:
    """A ``data-*`` preset name (agent/presets/NAME.yaml) or a YAML file path."""
    if not name_or_path:
        return SynthConfig()
    p = Path(name_or_path)
    if not p.exists():
        p = PRESET_DIR / f"{name_or_path}.yaml"
    if not p.exists():
        known = sorted(x.stem for x in PRESET_DIR.glob("data-*.yaml"))
        raise FileNotFoundError(f"no data preset {name_or_path!r}; known: {', '.join(known)} (or a YAML path).")
    from agent.config import load_yaml

    return _fill(SynthConfig, load_yaml(p))  # one-sentence errors for bad YAML, dates, a list instead of settings


# ---------------------------------------------------------------------------------------------------------------
# voices per split

def voice_split(voice: str, vc: VoiceConfig) -> str:
    for split, voices in vc.heldout.items():
        if voice in voices:
            return split
    engine, name = voice.split(":", 1)
    if engine == "espeak":
        accent, variant = name.split("+", 1)
        for split, accents in vc.heldout_accents.items():
            if accent in accents:
                return split
        if vc.heldout_variants:
            return slot_split("voice_variant", variant)
    return "train"


def voice_pools(vc: VoiceConfig, check: bool = True) -> dict[str, list[str]]:
    pools: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for v in tts.all_user_voices():
        if tts.engine_of(v) not in vc.engines or (check and not tts.voice_available(v)):
            continue
        pools[voice_split(v, vc)].append(v)
    return pools


def split_of(i: int, cfg: SynthConfig) -> str:
    cycle = [s for s, n in cfg.splits.items() for _ in range(int(n))]
    return cycle[i % len(cycle)]


def dialogue_id(i: int) -> str:
    return f"d{i:06d}"


# ---------------------------------------------------------------------------------------------------------------
# one dialogue

_STATE: dict = {}


def _init(cfg: SynthConfig, seed: int, out: str, threads: int) -> None:
    _STATE.update(cfg=cfg, seed=seed, out=Path(out), agent=tts.AgentVoice(threads=threads),
                  pools=voice_pools(cfg.voices), user_cache={})
    from agent.dialogue.content import chat_pairs

    chat_pairs()


def make_dialogue(i: int) -> dict:
    """Synthesize dialogue ``i`` and return its record (audio in ``record['_audio']``, shape (n, 2))."""
    cfg: SynthConfig = _STATE["cfg"]
    rng = np.random.default_rng([_STATE["seed"], i])
    split = split_of(i, cfg)
    pool = _STATE["pools"][split] or _STATE["pools"]["train"]
    vc = cfg.voices
    engines = sorted({tts.engine_of(v) for v in pool})
    w = np.array([float(vc.engine_weights.get(e, 0.0)) for e in engines]) + 1e-9
    engine = engines[int(rng.choice(len(engines), p=w / w.sum()))]
    pool = [v for v in pool if tts.engine_of(v) == engine]
    voice = pool[int(rng.integers(len(pool)))]
    params = {}
    if tts.engine_of(voice) == "espeak":
        params = {"rate_wpm": int(rng.integers(vc.espeak_rate[0], vc.espeak_rate[1] + 1)),
                  "pitch": int(rng.integers(vc.espeak_pitch[0], vc.espeak_pitch[1] + 1))}
    elif tts.engine_of(voice) == "kokoro":
        params = {"speed": round(float(rng.uniform(vc.kokoro_speed[0], vc.kokoro_speed[1])), 3)}
    augp = aug.draw(cfg.augment, rng)
    cache = _STATE["user_cache"]
    if len(cache) > 5000:
        cache.clear()

    def speak_user(text: str) -> np.ndarray:
        key = (text, voice, *sorted(params.items()), augp["speed"], augp["pitch_cents"])
        if key not in cache:
            cache[key] = aug.speed_pitch(tts.synth_user(text, voice, **params), augp["speed"], augp["pitch_cents"])
        return cache[key]

    def speak_head(head: str, rest: str) -> np.ndarray:
        """Words before a mid-turn pause. espeak-ng ends them on a continuation pitch given a comma; flite,
        festival and Kokoro ignore it, so their words are cut out of the whole sentence, mid-utterance pitch
        and all."""
        if tts.engine_of(voice) == "espeak":
            return speak_user(held(head))
        key = ("head", head, rest, voice, *sorted(params.items()), augp["speed"], augp["pitch_cents"])
        if key not in cache:
            whole = tts.synth_user(f"{head} {rest}", voice, **params)
            if tts.engine_of(voice) == "kokoro":  # it lengthens a phrase's end far more: the head alone overshoots
                approx = int(len(whole) * len(head) / len(f"{head} {rest}"))
            else:
                approx = len(tts.synth_user(held(head), voice, **params))
            cache[key] = aug.speed_pitch(tts.cut_at_word_gap(whole, approx), augp["speed"], augp["pitch_cents"])
        return cache[key]

    agent = _STATE["agent"]
    picker = Picker(rng, split, cfg.heldout_share)
    dlg = Builder(cfg.timeline, rng, picker, speak_user, agent.speak, speak_head).build()

    n = int(round(dlg.duration * tts.SAMPLE_RATE))
    user = np.zeros(n, np.float32)
    agent_ch = np.zeros(n, np.float32)
    for t in dlg.turns:
        a = int(round(t.start * tts.SAMPLE_RATE))
        seg = t.audio[: max(0, n - a)]
        (user if t.speaker == "user" else agent_ch)[a:a + len(seg)] += seg
    heard, augp = aug.apply(user, agent_ch, augp)
    augp["user_voice_params"] = params

    r3 = lambda x: round(float(x), 3)  # noqa: E731
    turns = []
    for t in dlg.turns:
        rec = {"speaker": t.speaker, "start": r3(t.start), "end": r3(min(t.end, n / tts.SAMPLE_RATE)),
               "text": t.text, "kind": t.kind,
               "words": [{"word": w, "start": r3(a), "end": r3(b)} for w, a, b in t.words],
               "cut_at": None if t.cut_at is None else r3(t.cut_at)}
        if t.planned_text is not None:
            rec["planned_text"] = t.planned_text
        turns.append(rec)
    events = [{k: (r3(v) if isinstance(v, float) else v) for k, v in e.items()} for e in dlg.events]
    record = {"id": dialogue_id(i), "split": split, "sample_rate": tts.SAMPLE_RATE, "duration": r3(n / tts.SAMPLE_RATE),
              "user_voice": voice, "agent_voice": tts.AGENT_VOICE, "augment": augp, "turns": turns,
              "events": events, "qa": dlg.qa, "phenomena": dlg.phenomena, "word_alignment": agent.alignment}
    record["_audio"] = np.stack([heard, agent_ch], axis=1)
    return record


def write_dialogue(i: int) -> str:
    out: Path = _STATE["out"]
    did = dialogue_id(i)
    if (out / f"{did}.wav").exists() and (out / f"{did}.json").exists():
        return did
    try:
        rec = make_dialogue(i)
    except tts.MissingTTS:
        raise
    except Exception as e:  # name the dialogue, so a failure can be reproduced with --count
        raise RuntimeError(f"dialogue {did} (index {i}, seed {_STATE['seed']}) failed: {e}") from e
    audio = rec.pop("_audio")
    tmp = out / f".{did}.wav.tmp"
    sf.write(tmp, np.clip(audio, -1.0, 1.0), tts.SAMPLE_RATE, subtype="PCM_16", format="WAV")
    os.replace(tmp, out / f"{did}.wav")
    tmp = out / f".{did}.json.tmp"
    tmp.write_text(json.dumps(rec, indent=1))
    os.replace(tmp, out / f"{did}.json")
    return did


# ---------------------------------------------------------------------------------------------------------------
# the command

def check_tts(cfg: SynthConfig) -> None:
    """Raise :class:`agent.dialogue.tts.MissingTTS` (one sentence with the install command) if a voice is missing."""
    tts.require_engines({"piper"} | set(cfg.voices.engines))
    try:
        import onnx  # noqa: F401
    except ImportError:
        print("duplex: note: the onnx package is missing, so agent word timings are estimated from phoneme counts "
              "(pip install onnx for Piper's exact phoneme durations).", file=sys.stderr)
    pools = voice_pools(cfg.voices)
    for split in sorted({split_of(i, cfg) for i in range(min(cfg.count, 1000))}):
        if not pools[split]:
            hints = "; ".join(f"{e}: {tts.INSTALL_HINT.get(e, '?')}" for e in sorted(set(cfg.voices.engines)))
            raise tts.MissingTTS(f"no user voice is available for the {split} split; install the engines of its "
                                 f"held-out voices ({hints}) or hold out a voice for it (voices.heldout).")


def synth(out: str | Path, count: int | None = None, preset: str | None = "data-smoke", seed: int = 0,
          workers: int = 1, progress: bool = True, announce=print, splits: list[str] | None = None) -> dict:
    """Write ``count`` dialogues (default: the preset's) into ``out`` and return the manifest.

    ``splits`` (e.g. ``["test"]``) writes only the dialogues of those splits out of the ``count``: the same
    dialogues, byte for byte, that a full run writes (each dialogue's randomness depends on its index alone),
    so a held-out set can be made without its training dialogues.
    """
    from tqdm import tqdm

    cfg = load_preset(preset)
    if count is not None:
        cfg.count = int(count)
    if cfg.count < 1:
        raise ValueError("--count must be at least 1.")
    if seed < 0:  # numpy's generators take no negative seed; it failed inside the first dialogue
        raise ValueError(f"--seed must be >= 0, got {seed}.")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"--workers must be a number of processes >= 1, got {workers!r}.")
    if splits is not None:
        unknown = sorted(set(splits) - set(cfg.splits))
        if unknown or not splits:
            raise ValueError(f"--split must name the preset's splits ({', '.join(cfg.splits)}), got "
                             f"{', '.join(unknown) or 'none'}.")
    check_tts(cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(cfg.count) if (splits is None or split_of(i, cfg) in splits)
            and not ((out / f"{dialogue_id(i)}.wav").exists() and (out / f"{dialogue_id(i)}.json").exists())]
    if todo:
        est = len(todo) * cfg.seconds_per_dialogue / min(workers, os.cpu_count() or 1)
        wanted = cfg.count if splits is None else sum(split_of(i, cfg) in splits for i in range(cfg.count))
        announce(f"{len(todo)} of {wanted} dialogues to write ({wanted - len(todo)} already there); "
                 f"estimated {est / 60:.1f} min at ~{60 / cfg.seconds_per_dialogue:.0f} dialogues/min per worker.")
    # one ONNX Runtime thread per worker: other thread counts change Piper's float rounding (and so the
    # output bytes); use --workers to use more cores
    threads = 1
    bar = tqdm(total=len(todo), unit="dlg", desc="synth", disable=not progress or not todo, dynamic_ncols=True)
    t0 = time.time()
    try:
        if workers == 1 or len(todo) <= 1:
            _init(cfg, seed, str(out), threads)
            for i in todo:
                write_dialogue(i)
                bar.update(1)
        else:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")
            with ctx.Pool(workers, initializer=_init, initargs=(cfg, seed, str(out), threads)) as pool:
                for _ in pool.imap_unordered(write_dialogue, todo, chunksize=1):
                    bar.update(1)
    finally:
        bar.close()
    elapsed = time.time() - t0
    manifest = build_manifest(out, cfg, seed, splits)
    if todo:
        manifest["last_run"] = {"dialogues": len(todo), "seconds": round(elapsed, 1), "workers": workers}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def build_manifest(out: Path, cfg: SynthConfig, seed: int, only_splits: list[str] | None = None) -> dict:
    splits: dict = defaultdict(lambda: {"dialogues": 0, "duration_s": 0.0, "user_voices": set()})
    events: dict = defaultdict(lambda: {"count": 0, "duration_s": 0.0})
    events_split: dict = defaultdict(lambda: defaultdict(int))
    turn_kinds: Counter = Counter()
    phen: Counter = Counter()
    intents: Counter = Counter()
    align = set()
    written = [i for i in range(cfg.count) if only_splits is None or split_of(i, cfg) in only_splits]
    for i in written:
        rec = json.loads((out / f"{dialogue_id(i)}.json").read_text())
        s = splits[rec["split"]]
        s["dialogues"] += 1
        s["duration_s"] += rec["duration"]
        s["user_voices"].add(rec["user_voice"])
        for e in rec["events"]:
            ev = events[e["type"]]
            ev["count"] += 1
            if "end" in e:
                ev["duration_s"] += e["end"] - e["time"]
            elif e["type"] == "interruption":
                ev["duration_s"] += e["stop_latency"]
            events_split[rec["split"]][e["type"]] += 1
        turn_kinds.update(f"{t['speaker']}:{t['kind']}" for t in rec["turns"])
        phen.update(rec.get("phenomena", []))
        intents.update(q["intent"] for q in rec["qa"])
        align.add(rec.get("word_alignment"))
    pools = voice_pools(cfg.voices, check=False)
    return {
        "format": "duplex-dialogues/1",
        "sample_rate": tts.SAMPLE_RATE, "channels": {"0": "user as heard (augmented, with echo)", "1": "agent clean"},
        "count": len(written), "seed": seed, "agent_voice": tts.AGENT_VOICE,
        **({"only_splits": sorted(only_splits), "of_count": cfg.count} if only_splits is not None else {}),
        "word_alignment": sorted(a for a in align if a),
        "total_duration_s": round(sum(s["duration_s"] for s in splits.values()), 2),
        "splits": {k: {"dialogues": v["dialogues"], "duration_s": round(v["duration_s"], 2),
                       "user_voices_used": sorted(v["user_voices"])} for k, v in sorted(splits.items())},
        "events": {k: {"count": v["count"], "duration_s": round(v["duration_s"], 2)} for k, v in sorted(events.items())},
        "events_per_split": {k: dict(sorted(v.items())) for k, v in sorted(events_split.items())},
        "turn_kinds": dict(sorted(turn_kinds.items())),
        "phenomena": dict(sorted(phen.items())),
        "intents": dict(sorted(intents.items())),
        "voice_pools": {k: v for k, v in pools.items()},
        "config": _jsonable(asdict(cfg)),
    }


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x
