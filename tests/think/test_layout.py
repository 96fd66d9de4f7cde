"""The duplex token layout: id ranges, slots, masks, persistence."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from streaming.codecs.base import CodecSpec
from think.layout import LAYOUT_FILE, SPECIALS, DuplexLayout
from think.sampling import SlotMasks, sample

SPEC = CodecSpec(name="codec2", sample_rate=8000, frame_samples=640, codebook_sizes=(512, 512, 1024) * 2,
                 options={"mode": "700C"})


def make_layout(q_in=6, q_out=6, text=2048) -> DuplexLayout:
    return DuplexLayout(SPEC, text_vocab_size=text, q_in=q_in, q_out=q_out, text_lead=1,
                        silence_codes=(413, 474, 0, 413, 474, 0))


def test_layout_slot_round_trips_for_random_frames(rng):
    layout = make_layout()
    sizes = np.asarray(SPEC.codebook_sizes)
    for _ in range(200):
        user = rng.integers(0, sizes)
        agent = rng.integers(0, sizes)
        text = int(rng.choice([rng.integers(0, 2048), layout.pad_id, layout.eot_id]))
        ids = layout.slot(user, text, agent)
        assert ids.shape == (layout.slot_size,)
        u, t, a = layout.split_slot(ids)
        assert np.array_equal(u, user) and t == text and np.array_equal(a, agent)


def test_id_ranges_are_disjoint_and_cover_the_vocabulary():
    layout = make_layout(q_in=4, q_out=2)
    owner = np.full(layout.vocab_size, -1)
    ranges = [(0, layout.text_vocab_size)]
    ranges += [(layout.special(n), layout.special(n) + 1) for n in SPECIALS]
    ranges += [(o, o + SPEC.codebook_sizes[k]) for k, o in enumerate(layout.user_offsets)]
    ranges += [(o, o + SPEC.codebook_sizes[k]) for k, o in enumerate(layout.agent_offsets)]
    for i, (lo, hi) in enumerate(ranges):
        assert np.all(owner[lo:hi] == -1), f"range {i} overlaps another"
        owner[lo:hi] = i
    assert np.all(owner >= 0)
    assert layout.slot_size == 4 + 1 + 2


def test_layout_json_round_trip(tmp_path):
    layout = make_layout(q_in=3, q_out=2)
    layout.save(tmp_path)
    again = DuplexLayout.load(tmp_path)
    assert again == layout
    assert again.vocab_size == layout.vocab_size and again.agent_offsets == layout.agent_offsets


def test_inconsistent_layout_file_is_rejected(tmp_path):
    layout = make_layout()
    data = layout.to_dict()
    data["vocab_size"] += 1
    (tmp_path / LAYOUT_FILE).write_text(json.dumps(data))
    with pytest.raises(ValueError, match="inconsistent"):
        DuplexLayout.load(tmp_path)


def test_missing_layout_file_says_what_the_directory_should_be(tmp_path):
    with pytest.raises(FileNotFoundError, match="duplex model init"):
        DuplexLayout.load(tmp_path)


def test_one_frames_user_codes_must_be_a_row_of_integers():
    layout = make_layout()
    assert layout.frame_user_ids(np.zeros(6, np.int32)) == list(layout.user_offsets)
    with pytest.raises(ValueError, match="must be integers"):
        layout.frame_user_ids(np.array([0.9, 0, 0, 0, 0, 0]))  # not silently code 0
    with pytest.raises(ValueError, match="one frame of user codes"):
        layout.frame_user_ids(np.zeros((2, 6), np.int64))
    with pytest.raises(ValueError, match=r"codebook sizes \(512, "):
        layout.frame_user_ids(np.array([512, 0, 0, 0, 0, 0]))


def test_out_of_range_codes_and_text_ids_are_rejected():
    layout = make_layout()
    with pytest.raises(ValueError, match="out of range"):
        layout.user_ids(np.array([512, 0, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="codebooks"):
        layout.agent_audio_ids(np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="Text slot"):
        layout.slot(np.zeros(6, int), layout.special("session_start"), np.zeros(6, int))


def test_validate_rejects_a_user_id_in_an_agent_position():
    layout = make_layout()
    ids = layout.slot(np.zeros(6, int), layout.pad_id, np.zeros(6, int))
    bad = ids.copy()
    bad[layout.q_in + 1] = ids[0]  # a user id where agent codebook 0 belongs
    with pytest.raises(ValueError, match="agent"):
        layout.validate(bad)


def test_mask_forbids_wrong_slot_ids():
    layout = make_layout()
    masks = SlotMasks(layout, vocab_rows=layout.vocab_size + 20)
    for j, ((lo, hi), mask) in enumerate(zip(masks.rows, masks.masks)):
        allowed = {lo + i for i in torch.nonzero(mask == 0).flatten().tolist()}
        expected = set(np.nonzero(layout.allowed_mask(layout.q_in + j))[0].tolist())
        assert allowed == expected
        # Even logits that strongly prefer a forbidden id never yield it.
        logits = torch.zeros(hi - lo)
        forbidden = [i for i in range(hi - lo) if mask[i] != 0]
        if forbidden:
            logits[forbidden] = 50.0
        gen = torch.Generator().manual_seed(0)
        for temperature in (0.0, 1.0, 5.0):
            for _ in range(20):
                token = lo + sample(logits, mask, temperature, 0, gen)
                assert token in expected
    # The text position allows text ids, PAD and end-of-turn, never the other specials.
    text_allowed = set(np.nonzero(layout.allowed_mask(layout.q_in))[0].tolist())
    assert layout.pad_id in text_allowed and layout.eot_id in text_allowed
    assert layout.special("session_start") not in text_allowed
