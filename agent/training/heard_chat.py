"""``heard_chat`` windows: the mapping from a heard question to its answer, where it is dense.

Why: a heard-text model (``think/layout.py``, layout version 2) reads the user's words from its text slot,
yet in the duplex windows the answers are a few percent of the targets, and each of the ~13 k training
questions comes back only a few times. Given the question's exact words (``docs/diagnostics/oracle_heard.py``)
v16 answered 4 of 47 test questions: it picks the intent's template but not the slot ("the plural of cactus
is fish" for "what do you call more than one mouse").

A ``heard_chat`` window is a real duplex window (``WindowSampler``) whose question/answer pairs are swapped
for new exchanges drawn from the intents (``agent/dialogue/content.py``; the train split draws train slot
values only, val its held-out ones). Everything that is timing stays real: where the user's heard words sit,
when the agent starts, its audio. Only the words change:

- each run of heard ids that an agent turn answers becomes the new question's words (as the recogniser writes
  them: :func:`listen.recognizer.normalize_text`), its pieces ending on the run's last frame;
- the agent turn becomes the new answer's pieces from the same first frame, paced as the agent voice speaks
  (``FRAMES_PER_CHAR``), then end-of-turn.

Loss weights: the new answer's pieces and its end-of-turn (``text_weight``), and the window's PAD frames outside
the swapped answers (``pad_weight``: when to speak stays real). Nothing else: the heard ids are the
recogniser's to write, the pacing inside an answer is estimated, and the audio no longer matches the words.
So these windows teach what to answer, and the duplex windows everything else.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from agent.dialogue.content import Picker, make_exchange
from listen.recognizer import normalize_text
from think.layout import DuplexLayout

if TYPE_CHECKING:
    from agent.training.train import TrainConfig

SOURCE = "heard_chat"
# Frames from one agent word's start to the next: a least-squares fit to data-v2's agent turns (the Piper
# voice): 0.78 frames per character (the space included) - 0.31.
FRAMES_PER_CHAR, FRAMES_OFFSET = 0.78, -0.31


def qa_spans(text: np.ndarray, layout: DuplexLayout) -> list[tuple[int, int, int, int]]:
    """``(q0, q1, a0, a1)`` frame ranges (inclusive) in a text track ``(frames,)``: a run of heard ids
    ``q0..q1`` with no agent text in it, answered by the agent turn ``a0..a1`` (first piece .. end-of-turn)
    that follows it. Agent turns with heard ids inside (an interruption) or cut by the window's end are
    left out."""
    heard = _heard(text, layout)
    agent = (text >= 0) & (text < layout.text_vocab_size)
    spans, f, frames, last_end = [], 0, len(text), -1
    while f < frames:
        if not agent[f]:
            f += 1
            continue
        a0 = f
        while f < frames and text[f] != layout.eot_id:
            f += 1
        if f >= frames:
            break  # the turn runs past the window
        a1 = f
        f += 1
        inside = heard[a0:a1 + 1].any()
        before = np.flatnonzero(heard[last_end + 1:a0]) + last_end + 1
        last_end = a1
        if inside or not len(before):
            continue
        spans.append((int(before[0]), int(before[-1]), a0, a1))
    return spans


def _heard(text: np.ndarray, layout: DuplexLayout) -> np.ndarray:
    """``layout.is_heard_id`` over a whole track ``(frames,)`` (the heard ids are the layout's last range)."""
    return (text >= layout.heard_offset) & (text < layout.vocab_size)


def _answer_slots(words: list[str], tokenizer, start: int) -> list[tuple[int, int]]:
    """``(frame, piece)`` for an answer starting at ``start``: each word's pieces in a row, the next word
    ``FRAMES_PER_CHAR`` x its characters later (never before the previous word's pieces end)."""
    out, at = [], start
    for word in words:
        pieces = tokenizer.encode(" " + word).ids
        out += [(at + i, p) for i, p in enumerate(pieces)]
        at = max(at + len(pieces), at + int(round(FRAMES_PER_CHAR * (len(word) + 1) + FRAMES_OFFSET)))
    return out


class HeardChatSampler:
    """Duplex windows with their question/answer pairs swapped for new exchanges (see the module).

    ``windows``: the duplex source of the same split (``samplers.WindowSampler``); ``split``: which slot
    values the new exchanges draw (``Picker``)."""

    def __init__(self, windows, layout: DuplexLayout, tokenizer, cfg: TrainConfig, split: str) -> None:
        if not layout.heard_text:
            raise ValueError("heard_chat windows need a heard-text layout (duplex model init --heard-text).")
        self.windows, self.layout, self.tokenizer, self.cfg, self.split = windows, layout, tokenizer, cfg, split

    def window(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(ids (n,), weights (n - 1,), roles (n - 1,))`` as ``WindowSampler.window``; a window with no
        question/answer pair in it is drawn again (up to 20 times, then kept as it is, unweighted)."""
        lay, slot = self.layout, self.layout.slot_size
        for _ in range(20):
            ids, _, roles = self.windows.window(rng)
            text = ids[1 + lay.q_in::slot].copy()
            spans = qa_spans(text, lay)
            if spans:
                break
        weights = np.zeros(len(ids) - 1, dtype=np.float32)
        if not spans:
            return ids, weights, roles
        text_w = np.where(text == lay.pad_id, self.cfg.pad_weight * self.cfg.text_weight, 0.0).astype(np.float32)
        picker = Picker(rng, self.split)
        taken = text != lay.pad_id  # the frames the window's own words hold
        floor = 0
        for q0, q1, a0, a1 in spans:
            later = np.flatnonzero(taken[a1 + 1:])
            limit = a1 + 1 + int(later[0]) if len(later) else len(text)  # up to the next words in the window
            ex = make_exchange(picker)
            self._write_question(text, normalize_text(ex.question).split(), q0, q1, floor)
            text[a0:a1 + 1] = lay.pad_id
            text_w[a0:limit] = 0.0  # inside the new answer the pacing is estimated, not real
            slots = _answer_slots(ex.answer.split(), self.tokenizer, a0)  # as text_track writes the agent's words
            floor = a1 + 1
            for frame, piece in slots + [(slots[-1][0] + 1 if slots else a0, lay.eot_id)]:
                if frame >= limit:
                    break
                text[frame] = piece
                text_w[frame] = self.cfg.text_weight
                floor = max(floor, frame + 1)
        text_w[_heard(text, lay)] = 0.0  # a new question may take a PAD frame before its run
        ids = ids.copy()
        ids[1 + lay.q_in::slot] = text
        # weights[i] scores ids[i + 1]: the text slot of frame f is ids[1 + f * slot + q_in]
        weights[np.arange(len(text)) * slot + lay.q_in] = text_w
        return ids, weights, roles

    def _write_question(self, text: np.ndarray, words: list[str], q0: int, q1: int, floor: int) -> None:
        """The new question's heard pieces in place of the run ``q0..q1``: spread over the run, the last piece
        on ``q1``; a run too short for them takes the free frames before it too (not before ``floor``; the
        question's start falls off the window when even those run out)."""
        lay = self.layout
        run = np.arange(q0, q1 + 1)
        text[run] = lay.pad_id  # the run holds heard ids and PAD only
        pieces = [lay.heard_id(p) for w in words for p in self.tokenizer.encode(" " + w).ids]
        if not pieces:
            return
        k = len(pieces)
        if len(run) >= k:  # spread as the user spoke them, the last on q1 (steps of >= 1 frame: no collisions)
            text[np.round(q1 - (q1 - q0) * np.arange(k)[::-1] / max(k - 1, 1)).astype(int)] = pieces
            return
        free = [f for f in range(q1, floor - 1, -1) if text[f] == lay.pad_id][: len(pieces)]
        text[sorted(free)] = pieces[len(pieces) - len(free):]
