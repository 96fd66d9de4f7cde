"""The recogniser's streaming beam search (listen/ctc_beam.py): lexicon words only, context decides, and words
come out while the user is still talking."""
from __future__ import annotations

import numpy as np
import pytest

from listen.ctc_beam import BeamConfig, SearchGraph, StreamingBeamDecoder
from listen.recognizer import ALPHABET
from listen.word_lm import WordNgramLM

SENTENCES = ["what colour is the sky", "the sky is blue", "i spy with my little eye", "i spy a cat",
             "what is the capital of france", "hello there"]
CLASSES = 1 + len(ALPHABET)


def emissions(spelling: list[str | dict[str, float]], blanks: int = 1) -> np.ndarray:
    """Log-probabilities ``(steps, classes)``: each item one step (a character, or a dict of characters and
    their probabilities), ``blanks`` blank steps after each."""
    rows = []
    for item in spelling:
        probs = np.full(CLASSES, 0.02)
        for ch, p in (item.items() if isinstance(item, dict) else [(item, 0.8)]):
            probs[1 + ALPHABET.index(ch)] = p
        rows.append(probs)
        for _ in range(blanks):
            b = np.full(CLASSES, 0.01)
            b[0] = 0.9
            rows.append(b)
    out = np.log(np.asarray(rows) / np.sum(rows, axis=1, keepdims=True))
    return out.astype(np.float32)


def silence(steps: int) -> np.ndarray:
    """Blank-dominated steps ``(steps, classes)``, as the recogniser writes after speech."""
    b = np.full(CLASSES, 0.01)
    b[0] = 0.9
    return np.tile(np.log(b / b.sum()), (steps, 1)).astype(np.float32)


def spell(text: str, unsure: dict[int, dict[str, float]] | None = None) -> list:
    return [(unsure or {}).get(i, ch) for i, ch in enumerate(text)]


@pytest.fixture(scope="module")
def graph():
    lm = WordNgramLM.from_sentences(SENTENCES, order=3)
    return SearchGraph(lm, sorted({w for s in SENTENCES for w in s.split()}), ALPHABET)


def decode_all(graph, logp, config=None, chunk=0):
    dec = StreamingBeamDecoder(graph, config)
    words = []
    size = chunk or len(logp)
    for i in range(0, len(logp), size):
        words += dec.step(logp[i:i + size])
    return words + dec.end()


def test_the_words_around_a_sound_alike_decide_it(graph):
    k_or_p = {"k": 0.4, "p": 0.4}
    sky = emissions(spell("what colour is the sky ", {20: k_or_p}))
    spy = emissions(spell("i spy with my little eye ", {3: k_or_p}))
    assert decode_all(graph, sky) == ["what", "colour", "is", "the", "sky"]
    assert decode_all(graph, spy) == ["i", "spy", "with", "my", "little", "eye"]
    # with the language model weighed at nothing the acoustics alone cannot say (either is allowed)
    plain = decode_all(graph, sky, BeamConfig(lm_weight=0.0))
    assert plain[:4] == ["what", "colour", "is", "the"] and plain[4] in {"sky", "spy"}


def test_only_lexicon_words_are_written_even_for_a_misspelling(graph):
    logp = emissions(spell("what is the capitel of france "))
    assert decode_all(graph, logp) == ["what", "is", "the", "capital", "of", "france"]


def test_streamed_words_come_out_before_the_utterance_ends_and_match_the_whole_search(graph):
    logp = np.concatenate([emissions(spell("what is the capital of france ")), silence(10)])
    whole = decode_all(graph, logp)
    for chunk in (1, 2, 5):
        dec = StreamingBeamDecoder(graph)
        early = []
        for i in range(0, len(logp), chunk):
            early += dec.step(logp[i:i + chunk])
        assert early == whole and dec.end() == []  # all committed within the 10 silent steps
    # agreement of the whole beam alone holds the last words back until the utterance ends
    dec = StreamingBeamDecoder(graph, BeamConfig(commit_after=-1, commit_margin=1e9))
    early = dec.step(logp)
    assert early == whole[:len(early)] and len(early) < len(whole) and early + dec.end() == whole


def test_closing_the_utterance_finishes_a_last_word_that_never_got_its_space(graph):
    # the user stopped after "france": the recogniser spelled it but wrote no space after it
    quiet = np.full((6, CLASSES), -80.0, np.float32)
    quiet[:, 0] = 0.0  # certain blanks: no room left to slip a space in
    spoken = emissions(spell("what is the capital of france"))[:-1]  # no blank after the "e" ...
    spoken[-1] = -80.0
    spoken[-1, 1 + ALPHABET.index("e")] = 0.0  # ... and the "e" itself certain
    logp = np.concatenate([spoken, quiet])
    for chunk in (0, 2):
        assert decode_all(graph, logp, chunk=chunk) == ["what", "is", "the", "capital", "of", "france"]
    # a word already finished by its space is not written twice
    assert decode_all(graph, np.concatenate([emissions(spell("hello there ")), quiet])) == ["hello", "there"]


def test_a_new_utterance_starts_afresh_and_bad_input_is_refused(graph):
    dec = StreamingBeamDecoder(graph)
    dec.step(emissions(spell("hello ")))
    dec.reset()  # forget "hello"
    words = dec.step(emissions(spell("the sky is blue "))) + dec.end()
    assert words == ["the", "sky", "is", "blue"]
    assert dec.end() == [] and dec.step(np.zeros((0, CLASSES), np.float32)) == []
    with pytest.raises(ValueError, match=r"Expected log-probabilities \(steps, 34\)"):
        dec.step(np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="beam must be an integer >= 1"):
        BeamConfig(beam=0)
    with pytest.raises(ValueError, match="commit_after must be an integer >= -1"):
        BeamConfig(commit_after=-2)
    with pytest.raises(ValueError, match="Unknown beam search settings"):
        BeamConfig.from_dict({"lm_weight": 0.5, "colour": 1})
    with pytest.raises(ValueError, match="lexicon of at least one word"):
        SearchGraph(WordNgramLM.from_sentences(["a"]), ["UPPER"], ALPHABET)
