"""``duplex data tokenize``: synthetic dialogues -> the layout's token sequences, in shards.

For every dialogue (a 2-channel WAV: user = channel 0 as the model hears it, agent = channel 1, plus its
JSON with the agent's word timings) and every 80 ms frame ``t``, the slot is::

    [ user codes(t)[:Q_in] ] [ text(t) ] [ agent codes(t)[:Q_out] ]

The agent's text is written ``δ = layout.text_lead`` frames *before* the audio that speaks it: a word
starting at audio frame ``f`` puts its word pieces at slots ``f - δ, f - δ + 1, ...`` (never before
the previous word's pieces), and an agent turn ends with one end-of-turn id. With a heard-text layout
(``think/layout.py``) the user's words go, as heard ids, into the frames the agent's text leaves free
(:func:`place_heard`). Every other text slot is PAD. A sequence is ``[session start] + slots``; a loss mask marks the ids the model must learn to
produce (the agent's text and audio), with PAD text down-weighted at training time.

Shards are ``.npz`` files of concatenated sequences with offsets, written next to ``shards.json``
(the layout, the source, counts) so that training can refuse a layout mismatch. Resumable: shards
already written are kept.

Speech-base training (see ``agent/training/align.py`` and ``textdata.py``) adds, in the same directory:
``align-<split>-NNNN.npz`` (one listening / speaking sequence per turn, from the same codec codes; on by
default) and ``text-<split>-NNNN.npz`` (text-only chats, ``text_conversations`` > 0), listed under
``align_shards`` and ``text_shards`` in ``shards.json``.
"""
from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from agent.training.decisions import decision_frames, frame_at
from agent.training.mic_paths import DEFAULT_MIC_PATHS, OFFLINE_PATHS, check_paths, path_for, to_codec_rate
from listen.wavio import read_wav
from streaming.codecs.base import Codec
from think.layout import DuplexLayout

SHARD_INDEX = "shards.json"


@dataclass
class TokenizedDialogue:
    """One dialogue in the layout.

    Attributes:
        ids: ``(1 + frames * slot_size,)`` int32, the session start then every slot.
        frames: number of frames.
        split: train / val / test.
    """

    id: str
    ids: np.ndarray
    frames: int
    split: str


def _codec_rate_audio(codec: Codec, pcm: np.ndarray, rate: int, frames: int, path: str = "soxr-hq",
                      far: np.ndarray | None = None) -> np.ndarray:
    """Bring to the codec rate the way ``path`` (``mic_paths.py``) does (``far``: the agent's channel, for the
    echo canceller of ``browser-apm``), exactly ``frames`` frames long ``(frames * frame_samples,)``."""
    x = to_codec_rate(pcm, rate, codec.spec.sample_rate, path, far=far)
    need = frames * codec.spec.frame_samples
    return np.pad(x[:need], (0, max(0, need - len(x))))


def _encode_channel(codec: Codec, pcm: np.ndarray, rate: int, frames: int, path: str = "soxr-hq",
                    far: np.ndarray | None = None) -> np.ndarray:
    """:func:`_codec_rate_audio`, encoded -> ``(frames, Q)``."""
    return codec.encode_all(_codec_rate_audio(codec, pcm, rate, frames, path, far))[:frames]


def text_track(record: dict, layout: DuplexLayout, tokenizer, frames: int) -> np.ndarray:
    """The text slot for every frame ``(frames,)``: word pieces δ frames ahead of their audio, EOT after
    each agent turn (an interrupted turn's δ frames before its audio stops), PAD elsewhere; with a heard-text
    layout, the user's words in the free frames (:func:`place_heard`)."""
    frame_s = layout.frame_ms / 1000.0
    text = np.full(frames, layout.pad_id, dtype=np.int64)
    speaking = np.zeros(frames, dtype=bool)  # from an agent turn's first piece to its EOT
    next_free = 0
    for turn in sorted((t for t in record["turns"] if t["speaker"] == "agent"), key=lambda t: t["start"]):
        words = turn.get("words") or []
        placed, first = False, None
        for w in words:
            word = str(w["word"]).strip()
            if not word:
                continue
            pieces = tokenizer.encode(" " + word).ids
            slot = max(next_free, int(math.floor(w["start"] / frame_s)) - layout.text_lead, 0)
            for piece in pieces:
                if slot >= frames:
                    break
                text[slot] = piece
                first = slot if first is None else first
                slot += 1
                placed = True
            next_free = slot
        if placed and turn.get("cut_at") is not None:
            # An interrupted turn's last word began before the user did, so an EOT right after its pieces would
            # ask the model to end the turn before anything tells it to. The script's agent falls silent at
            # ``cut_at`` (200-400 ms after the user's onset): its EOT goes there, PAD until then, as between words.
            next_free = max(next_free, frame_at(turn["cut_at"], frame_s) - layout.text_lead)
        if placed and next_free < frames:
            text[next_free] = layout.eot_id
            next_free += 1
        if placed:
            speaking[first:next_free] = True
    if layout.heard_text:
        place_heard(text, record, layout, tokenizer, speaking)
    return text


# A heard piece later than this many frames after its word is stale (the agent spoke over it): dropped.
HEARD_MAX_LAG = 4


def place_heard(text: np.ndarray, record: dict, layout: DuplexLayout, tokenizer,
                speaking: np.ndarray | None = None) -> None:
    """Write the user's words as heard ids into the PAD frames of ``text`` ``(frames,)``, in place.

    A heard word goes where a streaming listener could write it: its pieces end on the frame after the
    word's end (the user turns carry no word timings, so a word's span is estimated from its share of the
    turn's characters), and the last word of a turn ends on the frame that holds the turn's end (known
    exactly), so the whole question is written down before the agent's answer starts. The agent's own turns keep
    their frames (``speaking`` ``(frames,)``: True from a turn's first piece to its EOT, so heard ids never
    split the agent's sentence); a heard piece that finds no free frame within ``HEARD_MAX_LAG`` frames
    is dropped.
    """
    frame_s = layout.frame_ms / 1000.0
    frames = len(text)
    busy = (text != layout.pad_id) if speaking is None else (speaking | (text != layout.pad_id))
    next_free = 0
    for turn in sorted((t for t in record["turns"] if t["speaker"] == "user"), key=lambda t: t["start"]):
        words = [w for w in str(turn.get("text", "")).split() if w.strip()]
        if not words:
            continue
        start, end = float(turn["start"]), float(turn["end"])
        if turn.get("cut_at") is not None:
            end = min(end, float(turn["cut_at"]))
        total = sum(len(w) for w in words)
        done = 0
        for i, word in enumerate(words):
            begin = int(math.floor((start + (end - start) * done / total) / frame_s))
            done += len(word)
            if i == len(words) - 1:
                target = int(math.floor(end / frame_s))
            else:
                target = int(math.floor((start + (end - start) * done / total) / frame_s)) + 1
            pieces = tokenizer.encode(" " + word).ids
            # a long word's pieces end at its end frame (a streaming listener writes while it hears)
            slot = max(next_free, begin + 1, target - len(pieces) + 1)
            for piece in pieces:
                while slot < frames and busy[slot] and slot - target <= HEARD_MAX_LAG:
                    slot += 1
                if slot >= frames or slot - target > HEARD_MAX_LAG:
                    break
                text[slot] = layout.heard_id(piece)
                busy[slot] = True
                slot += 1
            next_free = max(next_free, slot)


def tokenize_dialogue(wav_path: Path, record: dict, layout: DuplexLayout, codec: Codec, tokenizer,
                      mic_paths: tuple[str, ...] = OFFLINE_PATHS, heard_recognizer=None,
                      heard_during_agent_turn: bool = False) -> TokenizedDialogue:
    return tokenize_dialogue_and_turns(wav_path, record, layout, codec, tokenizer, mic_paths, heard_recognizer,
                                       heard_during_agent_turn)[0]


def check_dialogue_audio(wav_path: Path, record: dict, channels: int | None = None, seconds: float | None = None) -> None:
    """A dialogue's WAV must be stereo (user, agent) and as long as its record says (a truncated file would
    be scored or trained on as a conversation in which nobody speaks). ``channels``/``seconds``: already read."""
    from listen.wavio import wav_info

    if channels is None or seconds is None:
        info = wav_info(wav_path)
        channels, seconds = info.channels, info.duration
    if channels != 2:
        raise ValueError(f"{wav_path} must have 2 channels (user, agent), has {channels}.")
    said = record.get("duration")
    if isinstance(said, (int, float)) and not isinstance(said, bool) and seconds < float(said) - 0.5:
        raise ValueError(f"{wav_path} holds {seconds:.1f} s of audio but its record says {float(said):.1f} s: the "
                         f"file is truncated; make it again with `duplex data synth`.")


def tokenize_dialogue_and_turns(wav_path: Path, record: dict, layout: DuplexLayout, codec: Codec, tokenizer,
                                mic_paths: tuple[str, ...] = OFFLINE_PATHS, heard_recognizer=None,
                                heard_during_agent_turn: bool = False
                                ) -> tuple[TokenizedDialogue, list[tuple[int, np.ndarray]]]:
    """The dialogue in the layout and its turns as alignment sequences (``(kind, ids)``, see ``align.py``).
    The user channel takes one of ``mic_paths`` to the codec rate (drawn from the dialogue's id). With a
    heard-text layout and ``heard_recognizer`` (a model from ``listen.recognizer.load_recognizer``), the heard
    ids are what that recogniser writes live (``agent.heard.recognized_heard``; ``heard_during_agent_turn``: also
    inside the agent's turns), not the script's words."""
    from agent.training.align import dialogue_alignments

    audio, rate = read_wav(wav_path)
    check_dialogue_audio(wav_path, record, audio.shape[1], len(audio) / rate)
    frames = int(math.ceil(len(audio) / rate * 1000.0 / layout.frame_ms))
    user_pcm = _codec_rate_audio(codec, audio[:, 0], rate, frames, path_for(str(record["id"]), mic_paths),
                                 far=audio[:, 1])
    user = codec.encode_all(user_pcm)[:frames]
    agent = _encode_channel(codec, audio[:, 1], rate, frames)
    text = text_track(record, layout, tokenizer, frames)
    if heard_recognizer is not None and layout.heard_text:
        from agent.heard import recognized_heard

        text = recognized_heard(text, user_pcm, codec.spec.sample_rate, codec.spec.frame_samples, layout, tokenizer,
                                heard_recognizer, during_agent_turn=heard_during_agent_turn)
    user_ids = layout.user_ids(user)  # (frames, Q_in)
    agent_ids = layout.agent_audio_ids(agent)  # (frames, Q_out)
    slots = np.concatenate([user_ids, text[:, None], agent_ids], axis=1)
    ids = np.concatenate([[layout.special("session_start")], slots.reshape(-1)]).astype(np.int32)
    dialogue = TokenizedDialogue(id=record["id"], ids=ids, frames=frames, split=record.get("split", "train"))
    return dialogue, dialogue_alignments(record, user_ids, agent_ids, layout, tokenizer)


def _is_time(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _record_problem(record) -> str | None:
    """What in a dialogue record would break tokenizing or scoring, in a few words; None when it is sound."""
    if not isinstance(record, dict):
        return "it does not hold a JSON object"
    if "id" not in record or not isinstance(record.get("turns"), list):
        return "it has no " + ("id" if "id" not in record else "list of turns")
    for turn in record["turns"]:
        if not isinstance(turn, dict) or not {"speaker", "start", "end"} <= set(turn):
            return "a turn lacks its speaker, start or end"
        if not (_is_time(turn["start"]) and _is_time(turn["end"])):
            return "a turn's start or end is not a number"
        if not all(isinstance(w, dict) and {"word", "start"} <= set(w) for w in turn.get("words") or []):
            return "a word lacks its word or start"
    events, qa = record.get("events", []), record.get("qa", [])
    if not isinstance(events, list) or not all(isinstance(e, dict) and isinstance(e.get("type"), str)
                                               and _is_time(e.get("time")) for e in events):
        return "an event lacks its type or a numeric time"
    if not all(_is_time(e[k]) for e in events for k in ("end", "duration") if k in e):
        return "an event's end or duration is not a number"
    if not isinstance(qa, list) or not all(isinstance(q, dict) and isinstance(q.get("question"), str)
                                           and isinstance(q.get("answer"), str) for q in qa):
        return "a question lacks its question or answer text"
    for q in qa:
        i = q.get("turn_index")
        if i is not None and (not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(record["turns"])):
            return f"a question's turn_index {i!r} is not one of its {len(record['turns'])} turns"
    return None


def read_record(path: Path) -> dict:
    """One dialogue's JSON, checked for what tokenizing and scoring read (a clear error naming the file
    instead of a KeyError deep inside, or a dialogue silently scored as having no turns)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a valid dialogue JSON file ({e}); remake it with `duplex data synth`.") from None
    problem = _record_problem(record)
    if problem:
        raise ValueError(f"{path} is not a dialogue made by `duplex data synth`: {problem}.")
    return record


def dialogue_dirs(data: str) -> list[Path]:
    """The dialogue directories of a comma-separated ``--data`` value, each checked to exist."""
    dirs = [Path(d) for d in data.split(",") if d]
    for d in dirs:
        if not d.is_dir():
            raise FileNotFoundError(f"No dialogue directory {d}; make one with `duplex data synth`.")
    return dirs


def iter_dialogues(data_dir: Path) -> Iterable[tuple[Path, dict]]:
    records = sorted(p for p in data_dir.glob("*.json") if p.name not in ("manifest.json", SHARD_INDEX))
    if not records:
        raise FileNotFoundError(f"No dialogues (*.json + *.wav) in {data_dir}; make them with `duplex data synth`.")
    for path in records:
        record = read_record(path)
        wav = path.with_suffix(".wav")
        if not wav.is_file():
            raise FileNotFoundError(f"{path} has no audio file {wav.name}.")
        yield wav, record


def load_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """``keys`` of a shard, or one clear error when it is missing, truncated (an interrupted copy) or not a shard."""
    try:
        with np.load(path) as z:
            return {k: z[k] for k in keys}
    except FileNotFoundError:
        raise FileNotFoundError(f"Shard {path} is missing; run `duplex data tokenize` again into "
                                f"{path.parent}.") from None
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise ValueError(f"Shard {path} is corrupt or incomplete ({type(e).__name__}); delete it and run "
                         f"`duplex data tokenize` again into {path.parent}.") from None


def read_index(shard_dir: str | Path) -> dict:
    """``shards.json`` of a shard directory, checked (a clear error for a missing, corrupt or unfinished one)."""
    path = Path(shard_dir) / SHARD_INDEX
    if not path.is_file():
        raise FileNotFoundError(f"No {SHARD_INDEX} in {shard_dir}; make shards with `duplex data tokenize`.")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        index = None
    if not isinstance(index, dict) or not isinstance(index.get("layout"), dict) or not isinstance(
            index.get("shards"), list):
        raise ValueError(f"{path} is corrupt (not a shard index); delete {shard_dir} and run `duplex data tokenize` "
                         "again.")
    return index


def _write_index(path: Path, index: dict) -> None:
    tmp = path.with_suffix(".tmp")  # atomic: an interrupted write never leaves a half index
    tmp.write_text(json.dumps(index, indent=2) + "\n")
    tmp.replace(path)


def _shard_names(path: Path, key: str) -> list[str] | None:
    """The names a shard written earlier holds (None when it is missing or unreadable: it is written again)."""
    if not path.is_file():
        return None
    try:
        return list(load_npz(path, (key,))[key])
    except ValueError:
        return None


def write_shards(data_dir: str | Path, out_dir: str | Path, layout: DuplexLayout, codec: Codec, tokenizer,
                 shard_size: int = 256, progress: bool = True, align: bool = True, text_conversations: int = 0,
                 chat_template: str | None = None, text_val_percent: int = 5, text_max_ids: int = 512,
                 mic_paths: tuple[str, ...] = DEFAULT_MIC_PATHS, heard_recognizer: str | None = None,
                 heard_during_agent_turn: bool = False) -> dict:
    """Tokenize every dialogue of ``data_dir`` into ``out_dir/<split>-NNNN.npz`` shards.

    ``align``: also write the turns as alignment sequences (``align-<split>-NNNN.npz``).
    ``text_conversations``: also write that many text-only chats (``text-<split>-NNNN.npz``), rendered with
    ``chat_template`` (ChatML when None), ``text_val_percent`` % held out, each at most ``text_max_ids`` ids.
    ``mic_paths``: the live input paths the user channel is drawn through, one per dialogue (``mic_paths.py``).
    ``heard_recognizer``: a recogniser directory whose live output becomes the heard ids (heard-text layouts;
    ``agent/heard.py``) instead of the script's words; ``heard_during_agent_turn``: written inside the agent's
    turns too (``HeardConfig.during_agent_turn``).
    """
    from tqdm import tqdm

    from agent.training.align import save_align_shard, shard_counts

    mic_paths = check_paths(mic_paths)
    recognizer = None
    if heard_recognizer:
        if not layout.heard_text:
            raise ValueError("--heard-recognizer needs a heard-text model (duplex model init --heard-text).")
        from listen.recognizer import load_recognizer

        recognizer = load_recognizer(heard_recognizer)
    heard = f"recognizer:{Path(heard_recognizer).resolve()}" if heard_recognizer else "script"
    if heard_recognizer and heard_during_agent_turn:
        heard += " (also during the agent's turns)"
    if shard_size < 1:
        raise ValueError(f"--shard-size must be at least 1 dialogue, got {shard_size}.")
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    index_path = out_dir / SHARD_INDEX
    old: dict = {}
    if index_path.is_file():
        old = read_index(out_dir)
        if DuplexLayout.from_dict(old["layout"]) != layout:
            raise ValueError(f"{out_dir} holds shards of another layout; use a new --out directory.")
        old_paths = tuple(old.get("mic_paths", OFFLINE_PATHS))
        if old_paths != mic_paths:
            raise ValueError(f"{out_dir} holds shards made with other microphone paths ({', '.join(old_paths)}); "
                             "use a new --out directory.")
        if old.get("heard", "script") != heard and layout.heard_text:
            raise ValueError(f"{out_dir} holds shards whose heard text came from {old.get('heard', 'script')}; "
                             "use a new --out directory.")
    by_split: dict[str, list[tuple[Path, dict]]] = {}
    for wav, record in iter_dialogues(data_dir):
        by_split.setdefault(record.get("split", "train"), []).append((wav, record))
    # Claim the directory for this layout before the first shard: a run stopped half-way (Ctrl-C) and run again
    # with another --model must be refused, not resumed from shards of the other layout; training refuses an
    # unfinished index.
    _write_index(index_path, {**old, "layout": layout.to_dict(), "mic_paths": list(mic_paths), "heard": heard,
                              "shards": old.get("shards", []), "incomplete": True})
    chunks = [(split, n, items[i:i + shard_size]) for split, items in sorted(by_split.items())
              for n, i in enumerate(range(0, len(items), shard_size))]
    shards: list[dict] = []
    align_shards: list[dict] = []
    totals: dict[str, dict] = {}
    bar = tqdm(total=sum(len(c) for _, _, c in chunks), desc="tokenize", unit="dialogue", disable=not progress)
    for split, n, chunk in chunks:
        path = out_dir / f"{split}-{n:04d}.npz"
        align_path = out_dir / f"align-{split}-{n:04d}.npz"
        names = [record["id"] for _, record in chunk]
        if _shard_names(path, "names") == names and (not align or _shard_names(align_path, "dialogues") == names):
            z = load_npz(path, ("offsets", "frames"))  # resumable: this shard was already written from the same dialogues
            offsets, frames = z["offsets"], z["frames"]
            bar.update(len(chunk))
        else:
            done, decisions = [], []
            for wav, record in chunk:  # the bar moves per dialogue, not per shard of hundreds
                d = tokenize_dialogue_and_turns(wav, record, layout, codec, tokenizer, mic_paths, recognizer,
                                                heard_during_agent_turn)
                done.append(d)
                decisions.append(decision_frames(record, layout.frame_ms, d[0].frames, layout.text_lead))
                bar.update(1)
            offsets = np.cumsum([0] + [len(d.ids) for d, _ in done]).astype(np.int64)
            frames = np.asarray([d.frames for d, _ in done], dtype=np.int32)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, ids=np.concatenate([d.ids for d, _ in done]), offsets=offsets, frames=frames,
                     names=np.asarray(names), decisions=np.concatenate(decisions))
            tmp.replace(path)
            if align:
                save_align_shard(align_path, [(d.id, kind, seq) for d, turns in done for kind, seq in turns], names)
        if align:
            align_shards.append({**shard_counts(align_path), "split": split})
        shards.append({"file": path.name, "split": split, "dialogues": len(chunk), "ids": int(offsets[-1]),
                       "frames": int(frames.sum())})
        t = totals.setdefault(split, {"dialogues": 0, "frames": 0, "ids": 0})
        t["dialogues"] += len(chunk)
        t["frames"] += int(frames.sum())
        t["ids"] += int(offsets[-1])
    bar.close()
    index = {"layout": layout.to_dict(), "source": str(data_dir), "mic_paths": list(mic_paths), "heard": heard,
             "shards": shards, "totals": totals}
    if align:
        index["align_shards"] = align_shards
    if text_conversations > 0:
        from agent.training.textdata import CHATML, write_text_shards

        text = {"conversations": text_conversations, "val_percent": text_val_percent, "max_ids": text_max_ids,
                "chat_template": chat_template or CHATML}
        if old.get("text") == text and all((out_dir / e["file"]).is_file() for e in old.get("text_shards", [])):
            index["text_shards"] = old["text_shards"]  # resumable: the same chats were already written
        else:
            index["text_shards"] = write_text_shards(out_dir, tokenizer, text["chat_template"], text_conversations,
                                                     text_val_percent, text_max_ids)
        index["text"] = text
        if not index["text_shards"]:
            raise ValueError("No text-only chats could be made (is chitchat-dataset installed and text_max_ids large "
                             "enough?).")
    _write_index(index_path, index)
    return index


def load_split(shard_dir: str | Path, split: str) -> list[np.ndarray]:
    """All sequences of one split, each ``(1 + frames * slot_size,)`` int32."""
    shard_dir = Path(shard_dir)
    index = read_index(shard_dir)
    out = []
    for s in index["shards"]:
        if s["split"] != split:
            continue
        z = load_npz(shard_dir / s["file"], ("ids", "offsets"))
        ids, offsets = z["ids"], z["offsets"]
        out.extend(ids[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1))
    return out


def load_decisions(shard_dir: str | Path, split: str) -> list[np.ndarray]:
    """The decision frames (``decisions.decision_frames``) of the dialogues of :func:`load_split`, in its order,
    each ``(frames,)`` uint8; one clear error for shards written before they were stored."""
    shard_dir = Path(shard_dir)
    out = []
    for s in read_index(shard_dir)["shards"]:
        if s["split"] != split:
            continue
        with np.load(shard_dir / s["file"]) as z:
            if "decisions" not in z.files:
                raise ValueError(f"{shard_dir / s['file']} was written before shards stored the decision frames; "
                                 "run `duplex data tokenize` again into a new --out to train with decision_weights.")
            marks, frames = z["decisions"], z["frames"]
        bounds = np.cumsum([0, *frames.tolist()])
        out.extend(marks[bounds[i]:bounds[i + 1]] for i in range(len(frames)))
    return out


def shard_layout(shard_dir: str | Path) -> DuplexLayout:
    index = read_index(shard_dir)
    if index.get("incomplete"):
        raise ValueError(f"{shard_dir} is an unfinished `duplex data tokenize` run (stopped before its end); run it "
                         "again with the same arguments to finish it.")
    return DuplexLayout.from_dict(index["layout"])
