"""Alignment sequences (speech-base stage a): teach a text LLM to *listen* (audio -> text) and to *speak*
(text -> audio) one turn at a time, before it learns the interleaved duplex layout.

Built from the same synthetic dialogues and codec codes as the duplex shards (``duplex data tokenize``
writes both). With ``SS`` = session_start, ``SYS`` = system_start, ``SYE`` = system_end, ``EOT`` =
end_of_turn (the layout's specials, :data:`think.layout.SPECIALS`)::

    listening  [SS] + user turn audio (frames flattened, Q_in ids per frame) + [SYS] + transcript text ids + [EOT]
    speaking   [SS, SYS] + text ids + [SYE] + agent turn audio (Q_out ids per frame, coarse -> fine) + [EOT]

The transcript's text ids are the checkpoint tokenizer's ids of ``" " + text`` (the pieces the duplex text
slot uses). An agent turn cut by an interruption is taken only up to ``cut_at``, with the words actually
spoken. Loss (:func:`align_targets`): listening trains the text after ``SYS`` and the final ``EOT`` (in the
text slot's range: text ids, PAD, EOT); speaking trains the audio after ``SYE`` (codebook ``k`` of each
frame in agent codebook ``k``'s range) and the final ``EOT`` (text slot range). Everything before is context.

Shards: ``align-<split>-NNNN.npz`` next to the duplex shards, with ``ids`` (all sequences concatenated,
int32), ``offsets`` ``(n + 1,)``, ``kinds`` ``(n,)`` (0 = listening, 1 = speaking) and ``names`` (the
dialogue id of each sequence), ``dialogues`` (the shard's source dialogues, for resuming); listed under ``align_shards`` in ``shards.json``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from think.layout import DuplexLayout

LISTEN, SPEAK = 0, 1
KINDS = ("listen", "speak")


def listen_sequence(layout: DuplexLayout, user_ids: np.ndarray, text_ids: list[int]) -> np.ndarray:
    """``[SS] + user_ids.flatten() + [SYS] + text_ids + [EOT]`` from user audio ids ``(frames, Q_in)``."""
    user_ids = np.asarray(user_ids, dtype=np.int64)
    if user_ids.ndim != 2 or user_ids.shape[1] != layout.q_in:
        raise ValueError(f"User audio ids must be (frames, {layout.q_in}), got {user_ids.shape}.")
    _check_text(layout, text_ids)
    return np.concatenate([[layout.special("session_start")], user_ids.reshape(-1), [layout.special("system_start")],
                           text_ids, [layout.eot_id]]).astype(np.int32)


def speak_sequence(layout: DuplexLayout, text_ids: list[int], agent_ids: np.ndarray) -> np.ndarray:
    """``[SS, SYS] + text_ids + [SYE] + agent_ids.flatten() + [EOT]`` from agent audio ids ``(frames, Q_out)``."""
    agent_ids = np.asarray(agent_ids, dtype=np.int64)
    if agent_ids.ndim != 2 or agent_ids.shape[1] != layout.q_out:
        raise ValueError(f"Agent audio ids must be (frames, {layout.q_out}), got {agent_ids.shape}.")
    _check_text(layout, text_ids)
    return np.concatenate([[layout.special("session_start"), layout.special("system_start")], text_ids,
                           [layout.special("system_end")], agent_ids.reshape(-1), [layout.eot_id]]).astype(np.int32)


def _check_text(layout: DuplexLayout, text_ids: list[int]) -> None:
    if len(text_ids) == 0 or min(text_ids) < 0 or max(text_ids) >= layout.text_vocab_size:
        raise ValueError(f"Text ids must be a non-empty list of ids below {layout.text_vocab_size}.")


def align_targets(seq: np.ndarray, kind: int, layout: DuplexLayout) -> tuple[np.ndarray, np.ndarray]:
    """Loss weights and heads for predicting ``seq[1:]``: ``(weights, roles)``, both ``(len(seq) - 1,)``.

    ``roles`` index :func:`agent.training.loss.role_heads` (0 = text slot range, 1 + k = agent codebook k;
    -1 = context, no loss); ``weights`` is 1 where a role is set, else 0.
    """
    seq = np.asarray(seq)
    n = len(seq) - 1
    roles = np.full(n, -1, dtype=np.int64)
    if kind == LISTEN:
        start = int(np.nonzero(seq == layout.special("system_start"))[0][0])
        roles[start:] = 0  # targets seq[start + 1:]: the transcript and EOT
    elif kind == SPEAK:
        start = int(np.nonzero(seq == layout.special("system_end"))[0][0])
        audio = n - 1 - start  # targets seq[start + 1: -1] are audio, the last one is EOT
        if audio % layout.q_out:
            raise ValueError(f"A speaking sequence's audio has {audio} ids, not a multiple of Q_out={layout.q_out}.")
        roles[start:n - 1] = 1 + np.arange(audio) % layout.q_out
        roles[n - 1] = 0
    else:
        raise ValueError(f"Unknown alignment kind {kind!r}; 0 = listening, 1 = speaking.")
    return (roles >= 0).astype(np.float32), roles


def _frame_range(start: float, end: float, frame_s: float, frames: int) -> tuple[int, int]:
    return max(0, int(math.floor(start / frame_s))), min(frames, int(math.ceil(end / frame_s)))


def dialogue_alignments(record: dict, user_ids: np.ndarray, agent_ids: np.ndarray, layout: DuplexLayout,
                        tokenizer) -> list[tuple[int, np.ndarray]]:
    """Every turn of one dialogue as ``(kind, sequence)``: user turns listening, agent turns speaking.

    ``user_ids`` ``(frames, Q_in)`` and ``agent_ids`` ``(frames, Q_out)`` are the dialogue's audio ids (the
    duplex slots' user and agent columns). Turns with no text or no audio frames are skipped.
    """
    frame_s = layout.frame_ms / 1000.0
    frames = len(user_ids)
    out: list[tuple[int, np.ndarray]] = []
    for turn in sorted(record["turns"], key=lambda t: t["start"]):
        if turn["speaker"] == "user":
            text = str(turn.get("text") or "").strip()
            f0, f1 = _frame_range(turn["start"], turn["end"], frame_s, frames)
            if text and f1 > f0:
                out.append((LISTEN, listen_sequence(layout, user_ids[f0:f1], tokenizer.encode(" " + text).ids)))
        elif turn["speaker"] == "agent":
            cut = turn.get("cut_at")
            words = [str(w["word"]).strip() for w in turn.get("words") or [] if str(w["word"]).strip()]
            text = " ".join(words) if words else ("" if cut is not None else str(turn.get("text") or "").strip())
            f0, f1 = _frame_range(turn["start"], cut if cut is not None else turn["end"], frame_s, frames)
            if text and f1 > f0:
                out.append((SPEAK, speak_sequence(layout, tokenizer.encode(" " + text).ids, agent_ids[f0:f1])))
    return out


def save_align_shard(path: Path, items: list[tuple[str, int, np.ndarray]], dialogues: list[str]) -> dict:
    """Write ``(dialogue id, kind, sequence)`` items made from ``dialogues`` to ``path`` (atomically); returns
    its counts."""
    seqs = [s for _, _, s in items] or [np.zeros(0, dtype=np.int32)]
    offsets = np.cumsum([0] + [len(s) for _, _, s in items]).astype(np.int64)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, ids=np.concatenate(seqs).astype(np.int32), offsets=offsets,
             kinds=np.asarray([k for _, k, _ in items], dtype=np.int8), names=np.asarray([n for n, _, _ in items]),
             dialogues=np.asarray(dialogues))
    tmp.replace(path)
    return shard_counts(path)


def shard_counts(path: Path) -> dict:
    from agent.training.tokenize import load_npz

    z = load_npz(path, ("kinds", "offsets"))
    kinds = z["kinds"]
    return {"file": path.name, "sequences": int(len(kinds)), "listen": int((kinds == LISTEN).sum()),
            "speak": int((kinds == SPEAK).sum()), "ids": int(z["offsets"][-1])}


def load_align(shard_dir: str | Path, split: str) -> dict[int, list[np.ndarray]]:
    """The alignment sequences of one split by kind: ``{LISTEN: [...], SPEAK: [...]}`` (each ``(n,)`` int32)."""
    from agent.training.tokenize import load_npz, read_index

    shard_dir = Path(shard_dir)
    index = read_index(shard_dir)
    out: dict[int, list[np.ndarray]] = {LISTEN: [], SPEAK: []}
    for s in index.get("align_shards", []):
        if s["split"] != split:
            continue
        z = load_npz(shard_dir / s["file"], ("ids", "offsets", "kinds"))
        ids, offsets, kinds = z["ids"], z["offsets"], z["kinds"]
        for i, kind in enumerate(kinds.tolist()):
            out[int(kind)].append(ids[offsets[i]:offsets[i + 1]])
    return out
