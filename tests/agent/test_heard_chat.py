"""heard_chat windows (agent/training/heard_chat.py): real windows whose questions and answers are swapped for
new exchanges; the timing and the audio stay, the loss falls on the new answer."""
from __future__ import annotations

import numpy as np
import pytest

import agent.training.heard_chat as heard_chat
from agent.dialogue.content import Exchange
from agent.training.heard_chat import HeardChatSampler, qa_spans
from agent.training.train import TrainConfig
from streaming.codecs import load_codec
from think.layout import DuplexLayout
from think.tokenizer import default_tokenizer

FRAMES = 70


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


@pytest.fixture(scope="module")
def lay(tok):
    return DuplexLayout.for_codec(load_codec("codec2"), tok.get_vocab_size(), heard_text=True)


def _track(lay, tok) -> np.ndarray:
    """A text track: a question (frames 2-11) answered at 14-19 (EOT 20); at 40-42 a question whose answer
    (44-49, EOT 50) the user interrupts (a heard id at 46); at 60-61 a question whose answer (64-) runs past
    the window."""
    text = np.full(FRAMES, lay.pad_id, np.int64)
    heard = [lay.heard_id(p) for p in tok.encode(" hello there how are you").ids]
    text[2:12] = (heard * 2)[:10]
    text[14:20] = [p for p in tok.encode(" i am fine thank you very much").ids][:6]
    text[20] = lay.eot_id
    text[40:43] = heard[:3]
    text[44:50] = text[14:20]
    text[46] = heard[0]
    text[50] = lay.eot_id
    text[60:62] = heard[:2]
    text[64:70] = text[14:20]
    return text


class _Windows:
    """Stands in for the duplex WindowSampler: always the same window, audio ids random but fixed."""

    def __init__(self, lay, text) -> None:
        rng = np.random.default_rng(0)
        slots = rng.integers(lay.user_offsets[0], lay.user_offsets[0] + 100, (FRAMES, lay.slot_size))
        slots[:, lay.q_in] = text
        self.ids = np.concatenate([[lay.special("session_start")], slots.reshape(-1)]).astype(np.int64)
        self.roles = np.tile(np.asarray([p - lay.q_in if p >= lay.q_in else -1 for p in range(lay.slot_size)]), FRAMES)

    def window(self, rng):
        return self.ids.copy(), np.ones(len(self.ids) - 1, np.float32), self.roles


def test_each_question_is_paired_with_the_agent_turn_that_answers_it(lay, tok):
    # the interrupted answer and the one the window cuts are left alone
    assert qa_spans(_track(lay, tok), lay) == [(2, 11, 14, 20)]


def test_the_words_are_swapped_while_the_timing_and_the_audio_stay(lay, tok, monkeypatch):
    splits = []

    def exchange(picker):
        splits.append(picker.split)
        return Exchange("capital", "What's the capital of France?", "paris.")

    monkeypatch.setattr(heard_chat, "make_exchange", exchange)
    cfg = TrainConfig(pad_weight=0.3, text_weight=1.0)
    windows = _Windows(lay, _track(lay, tok))
    ids, weights, roles = HeardChatSampler(windows, lay, tok, cfg, "val").window(np.random.default_rng(1))
    assert splits == ["val"]  # held-out slot values for a val window
    slot = lay.slot_size
    old, new = windows.ids.reshape(-1)[1:].reshape(FRAMES, slot), ids[1:].reshape(FRAMES, slot)
    audio = [p for p in range(slot) if p != lay.q_in]
    assert np.array_equal(old[:, audio], new[:, audio]) and np.array_equal(roles, windows.roles)
    text = new[:, lay.q_in]
    heard = [f for f in range(21) if lay.is_heard_id(int(text[f]))]
    # the question as the recogniser writes it, its last piece where the user's words ended
    assert tok.decode([int(text[f]) - lay.heard_offset for f in heard]).strip() == "what's the capital of france?"
    assert heard == list(range(1, 12))  # 11 pieces, 10 frames in the run: one more before it
    # the answer from the agent's first frame, then its end of turn; the rest of the old answer is PAD
    answer = tok.encode(" paris.").ids
    assert list(text[14:14 + len(answer)]) == answer and text[14 + len(answer)] == lay.eot_id
    assert all(t == lay.pad_id for t in text[15 + len(answer):21])
    # the rest of the window is as it was
    assert np.array_equal(text[21:], old[21:, lay.q_in])
    # loss: the new answer and its end of turn in full, PAD outside the swapped answer at the PAD weight
    text_w = weights[np.arange(FRAMES) * slot + lay.q_in]
    spoken = list(range(14, 15 + len(answer)))
    assert np.all(text_w[spoken] == 1.0)
    pad_outside = [f for f in range(FRAMES) if text[f] == lay.pad_id and not 14 <= f < 40]
    assert np.allclose(text_w[pad_outside], 0.3)
    others = [f for f in range(FRAMES) if f not in spoken and f not in pad_outside]
    assert not text_w[others].any()  # heard ids, the old turns' words, PAD inside the new answer
    assert weights.sum() == pytest.approx(text_w.sum())  # nothing on the audio


def test_a_window_without_a_question_and_its_answer_trains_nothing(lay, tok):
    text = np.full(FRAMES, lay.pad_id, np.int64)
    sampler = HeardChatSampler(_Windows(lay, text), lay, tok, TrainConfig(), "train")
    ids, weights, _ = sampler.window(np.random.default_rng(0))
    assert not weights.any() and len(ids) == 1 + FRAMES * lay.slot_size


def test_a_layout_without_heard_text_is_refused(tok):
    plain = DuplexLayout.for_codec(load_codec("codec2"), tok.get_vocab_size())
    with pytest.raises(ValueError, match="need a heard-text layout"):
        HeardChatSampler(None, plain, tok, TrainConfig(), "train")


def test_a_short_question_is_spread_over_the_users_turn_and_ends_where_it_ended(lay, tok, monkeypatch):
    monkeypatch.setattr(heard_chat, "make_exchange", lambda picker: Exchange("greeting", "good morning", "hi."))
    ids, _, _ = HeardChatSampler(_Windows(lay, _track(lay, tok)), lay, tok, TrainConfig(), "train").window(
        np.random.default_rng(0))
    text = ids[1 + lay.q_in::lay.slot_size]
    heard = [f for f in range(21) if lay.is_heard_id(int(text[f]))]
    assert len(heard) == len(tok.encode(" good").ids + tok.encode(" morning").ids)
    assert heard[0] == 2 and heard[-1] == 11
