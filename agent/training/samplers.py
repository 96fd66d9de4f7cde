"""What ``duplex train`` trains on: batches of windows drawn from the sources of ``TrainConfig.mix``.

- ``duplex``: slot-aligned windows of ``window_frames`` frames cut from the dialogues, prefixed with the
  session-start id (what the serving context looks like after a rebase); PAD in the text slot weighted
  ``pad_weight``; the agent's targets in decision frames (``decisions.py``) ``decision_weights`` by their
  kind; user ids are context only.
- ``listen`` / ``speak``: whole per-turn alignment sequences (``align.py``); ``text``: text-only chats
  (``textdata.py``), cut to the window.
- ``heard_chat``: duplex windows with their questions and answers swapped for new exchanges
  (``heard_chat.py``; heard-text layouts).

Every batch is ``(x, y, weights, roles)``, each ``(B, T)``: inputs, next ids, their loss weights and the head
(:func:`agent.training.loss.role_heads` index, -1 = none) that scores each target.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from agent.training.decisions import decision_weight_table
from agent.training.tokenize import load_decisions, load_split
from think.layout import DuplexLayout

if TYPE_CHECKING:
    from agent.training.train import TrainConfig


class WindowSampler:
    """Random slot-aligned windows of the duplex dialogues, with their loss weights and heads."""

    def __init__(self, sequences: list[np.ndarray], layout: DuplexLayout, cfg: TrainConfig,
                 decisions: list[np.ndarray] | None = None) -> None:
        """``decisions``: per dialogue, its decision frames ``(frames,)`` (``decisions.decision_frames``), whose
        agent targets weigh ``cfg.decision_weights`` of their kind times more; None = no such weighting."""
        if not sequences:
            raise ValueError("No dialogues in this split of the shards.")
        if decisions is not None and len(decisions) != len(sequences):
            raise ValueError(f"{len(decisions)} decision tracks for {len(sequences)} dialogues; the shards disagree.")
        self.seqs = sequences
        self.decisions = decisions
        self.decision_w = decision_weight_table(cfg.decision_weights)
        self.layout = layout
        self.cfg = cfg
        slot = layout.slot_size
        # Loss weight of predicting the id at slot position p (0 = user ids: context only), and its head.
        role_w = np.zeros(slot, dtype=np.float32)
        role_w[layout.q_in] = cfg.text_weight
        role_w[layout.q_in + 1:] = cfg.audio_weight
        self.role_w = role_w
        self.role_h = np.asarray([p - layout.q_in if p >= layout.q_in else -1 for p in range(slot)], dtype=np.int64)

    def window(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(ids (n,), weights (n - 1,), roles (n - 1,))``: ``weights[i]`` / ``roles[i]`` score ``ids[i + 1]``."""
        lay, slot, w = self.layout, self.layout.slot_size, self.cfg.window_frames
        k = int(rng.integers(len(self.seqs)))
        seq = self.seqs[k]
        frames = (len(seq) - 1) // slot
        start = int(rng.integers(0, max(1, frames - w + 1)))
        n = min(w, frames - start)
        body = seq[1 + start * slot: 1 + (start + n) * slot]
        ids = np.concatenate([[lay.special("session_start")], body]).astype(np.int64)
        weights = np.tile(self.role_w, n)
        text_pos = np.arange(n) * slot + lay.q_in
        weights[text_pos[body[text_pos] == lay.pad_id]] *= self.cfg.pad_weight
        if self.decisions is not None:  # weights[i] scores body[i]: frame i // slot
            weights.reshape(n, slot)[:] *= self.decision_w[self.decisions[k][start:start + n]][:, None]
        return ids, weights, np.tile(self.role_h, n)


class SequenceSampler:
    """Whole sequences (alignment turns or text-only chats) with precomputed weights and heads."""

    def __init__(self, items: list[tuple[np.ndarray, np.ndarray, np.ndarray]], max_len: int, name: str,
                 truncate: bool) -> None:
        """``items``: ``(ids (n,), weights (n - 1,), roles (n - 1,))``; longer than ``max_len`` ids: cut to it
        (``truncate``) or left out."""
        if truncate:
            items = [(i[:max_len], w[:max_len - 1], r[:max_len - 1]) for i, w, r in items]
        else:
            items = [it for it in items if len(it[0]) <= max_len]
        items = [it for it in items if it[1].sum() > 0]
        if not items:
            raise ValueError(f"No {name} sequence fits a window of {max_len} ids; raise window_frames.")
        self.items = items

    def window(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ids, w, r = self.items[rng.integers(len(self.items))]
        return ids.astype(np.int64), w, r


class MixSampler:
    """Batches whose windows are drawn from the sources of ``cfg.mix`` (one shared, resumable rng)."""

    def __init__(self, sources: dict[str, WindowSampler | SequenceSampler], mix: dict[str, float],
                 layout: DuplexLayout, seed: int) -> None:
        self.sources = {k: v for k, v in sources.items() if mix.get(k, 0) > 0}
        total = sum(mix[k] for k in self.sources)
        self.names = list(self.sources)
        self.p = np.asarray([mix[k] / total for k in self.names])
        self.layout = layout
        self.rng = np.random.default_rng(seed)

    def batch(self, size: int, source: str | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x, y, weights, roles)``, each ``(size, T)``: inputs, next ids, their loss weights and heads."""
        picks = [source or (self.names[0] if len(self.names) == 1 else
                            self.names[int(self.rng.choice(len(self.names), p=self.p))]) for _ in range(size)]
        items = [self.sources[k].window(self.rng) for k in picks]
        length = max(len(ids) for ids, _, _ in items)
        x = np.full((size, length), self.layout.pad_id, dtype=np.int64)
        wts = np.zeros((size, length - 1), dtype=np.float32)
        roles = np.full((size, length - 1), -1, dtype=np.int64)
        for i, (ids, weights, role) in enumerate(items):
            x[i, : len(ids)] = ids
            wts[i, : len(weights)] = weights
            roles[i, : len(role)] = role
        xt = torch.from_numpy(x)
        return xt[:, :-1], xt[:, 1:], torch.from_numpy(wts), torch.from_numpy(roles)


def build_sampler(cfg: TrainConfig, layout: DuplexLayout, split: str, seed: int) -> MixSampler | None:
    """The mix's sources for one split (None if none of them has data there); a clear error when the
    training split lacks a source the mix asks for."""
    from agent.training.align import LISTEN, SPEAK, align_targets, load_align
    from agent.training.textdata import load_text

    max_len = cfg.window_frames * layout.slot_size + 1
    wanted = [k for k, v in cfg.mix.items() if v > 0]
    sources: dict[str, WindowSampler | SequenceSampler] = {}
    align = load_align(cfg.shards, split) if {"listen", "speak"} & set(wanted) else {}
    # duplex and heard_chat cut their windows from the same dialogues: loaded once
    seqs = load_split(cfg.shards, split) if {"duplex", "heard_chat"} & set(wanted) else []
    weighted = any(v != 1 for v in cfg.decision_weights.values())
    decisions = load_decisions(cfg.shards, split) if seqs and weighted else None
    windows = WindowSampler(seqs, layout, cfg, decisions) if seqs else None
    hint = {"duplex": "`duplex data tokenize`", "heard_chat": "`duplex data tokenize`",
            "listen": "`duplex data tokenize` (without --no-align)",
            "speak": "`duplex data tokenize` (without --no-align)", "text": "`duplex data tokenize --text-conversations N`"}
    for name in wanted:
        if name == "duplex":
            if windows is not None:
                sources[name] = windows
        elif name == "heard_chat":
            if windows is not None:
                from agent.training.heard_chat import HeardChatSampler

                sources[name] = HeardChatSampler(windows, layout, _tokenizer(cfg), cfg, split)
        elif name in ("listen", "speak"):
            kind = LISTEN if name == "listen" else SPEAK
            items = [(s, *align_targets(s, kind, layout)) for s in align.get(kind, [])]
            if items:
                sources[name] = SequenceSampler(items, max_len, name, truncate=False)
        else:
            items = []
            for ids, mask in load_text(cfg.shards, split):
                roles = np.where(mask[1:] > 0, 0, -1).astype(np.int64)
                items.append((ids, mask[1:].astype(np.float32) * cfg.text_weight, roles))
            if items:
                sources[name] = SequenceSampler(items, max_len, "text", truncate=True)
        if split == "train" and name not in sources:
            raise ValueError(f"mix asks for {name!r} windows but {cfg.shards} has no {name} sequences in its train "
                             f"split; make them with {hint[name]}.")
    return MixSampler(sources, cfg.mix, layout, seed) if sources else None


def _tokenizer(cfg: TrainConfig):
    """The text tokenizer of the model being trained: its init checkpoint's, else the shipped one."""
    from think.tokenizer import TOKENIZER_FILE, default_tokenizer, load_tokenizer

    if cfg.init and (Path(cfg.init) / TOKENIZER_FILE).is_file():
        return load_tokenizer(cfg.init)
    return default_tokenizer()
