"""The recogniser's word n-gram model (listen/word_lm.py): a proper distribution that prefers what users say."""
from __future__ import annotations

import json
import math

import pytest

from listen.word_lm import EOS, WordNgramLM, load_word_lm, save_word_lm

SENTENCES = ["what is the capital of france", "what is the capital of spain", "what colour is the sky",
             "hello there", "what is your name"]


def test_every_history_gives_a_distribution_that_sums_to_one():
    lm = WordNgramLM.from_sentences(SENTENCES, order=3)
    vocab = lm.words + [EOS]
    for history in [lm.start(), ("what", "is"), ("the", "capital"), ("never", "seen"), ("capital",)]:
        total = sum(lm.prob(history, w) for w in vocab)
        assert total == pytest.approx(1.0, abs=1e-9), history


def test_context_raises_the_words_users_say_next_and_unseen_words_stay_possible():
    lm = WordNgramLM.from_sentences(SENTENCES, order=3)
    assert lm.prob(("the", "capital"), "of") > 0.5
    assert lm.prob(("the", "capital"), "of") > 10 * lm.prob(("the", "capital"), "sky")
    assert lm.prob(lm.start(), "what") > lm.prob(lm.start(), "sky")
    assert 0.0 < lm.prob(("capital", "of"), "denmark") < lm.prob(("capital", "of"), "france")  # not in the counts
    assert lm.logprob(("capital", "of"), "france") == pytest.approx(math.log(lm.prob(("capital", "of"), "france")))


def test_a_model_round_trips_through_lm_json_with_its_decode_settings(tmp_path):
    lm = WordNgramLM.from_sentences(SENTENCES, order=2, discount=0.6)
    save_word_lm(lm, tmp_path, {"lm_weight": 0.7})
    again, decode = load_word_lm(tmp_path)
    assert decode == {"lm_weight": 0.7} and again.order == 2 and again.discount == 0.6
    assert again.counts == lm.counts
    assert again.prob(("what",), "is") == lm.prob(("what",), "is")
    assert load_word_lm(tmp_path / "none") is None


def test_a_broken_lm_file_or_bad_settings_get_one_sentence(tmp_path):
    (tmp_path / "lm.json").write_text("{not json")
    with pytest.raises(ValueError, match="could not be read"):
        load_word_lm(tmp_path)
    (tmp_path / "lm.json").write_text(json.dumps({"order": 3}))
    with pytest.raises(ValueError, match="Not a word language model"):
        load_word_lm(tmp_path)
    with pytest.raises(ValueError, match="order must be 1 to 5"):
        WordNgramLM.from_sentences(SENTENCES, order=7)
    with pytest.raises(ValueError, match="discount must be between 0 and 1"):
        WordNgramLM.from_sentences(SENTENCES, discount=1.0)
