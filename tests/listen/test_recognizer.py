"""The streaming recogniser of the user (listen/recognizer.py): streaming equals one-shot, greedy CTC words."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from listen.recognizer import (
    ALPHABET,
    RecognizerConfig,
    RecognizerState,
    StreamingRecognizer,
    build_model,
    greedy_words,
    load_recognizer,
    normalize_text,
    save_recognizer,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(RecognizerConfig(dim=64, rnn_layers=1)).eval()
    with torch.no_grad():  # a random model would mostly draw blanks; make its classes vary
        m.out.bias.zero_()
        m.out.weight.normal_(0.0, 10.0)
    return m


def test_streamed_recognition_equals_one_shot_for_any_chunking(model):
    rng = np.random.default_rng(0)
    step = model.cfg.step_samples
    t = np.arange(step * 37 + 100) / model.cfg.sample_rate
    # noise whose level and colour change every step, so the classes (and the words) change too
    pcm = (rng.standard_normal(len(t)) * np.repeat(rng.uniform(0.0, 0.5, 38), step)[: len(t)]
           + 0.3 * np.sin(2 * np.pi * (200 + 3000 * t) * t)).astype(np.float32)
    with torch.no_grad():
        whole, _ = model(torch.from_numpy(pcm[: step * 37])[None])
        parts, state = [], {}
        for k in range(0, step * 37, step * 3):  # the module's own state, 3 steps at a time
            lp, state = model(torch.from_numpy(pcm[k:min(k + step * 3, step * 37)])[None], state)
            parts.append(lp)
    assert torch.allclose(torch.cat(parts, dim=1), whole, atol=1e-4)
    classes = whole[0].argmax(-1).tolist()
    assert len(set(classes)) >= 3  # the check below compares real spelling, not runs of blanks
    st = RecognizerState()
    expected = greedy_words(classes, ALPHABET, st) + ([st.word] if st.word else [])
    for chunks in ([len(pcm)], [1, 639, 1280, 3000, 7, 100000], list(rng.integers(1, 2000, 60))):
        rec, words, at = StreamingRecognizer(model), [], 0
        for n in chunks:
            words += rec.push(pcm[at:at + int(n)])
            at += int(n)
        assert rec.state.steps == 37  # the last 100 samples wait for a whole step
        assert words + rec.flush() == expected


def test_greedy_decoding_finishes_a_word_at_the_space_after_it():
    c = {ch: ALPHABET.index(ch) + 1 for ch in ALPHABET}
    st = RecognizerState()
    # "hi" with a repeat merged, a blank splitting a real double letter, then a space: one word.
    assert greedy_words([0, c["h"], c["h"], 0, c["i"]], ALPHABET, st) == []
    assert st.word == "hi"
    assert greedy_words([c[" "], 0, c["s"], c["e"], 0, c["e"]], ALPHABET, st) == ["hi"]
    assert greedy_words([c["?"], c[" "], c[" "]], ALPHABET, st) == ["see?"]
    assert st.word == ""


def test_text_is_normalized_to_the_recognizers_alphabet():
    assert normalize_text("  Hello,  WORLD: it's 5 o'clock!") == "hello, world it's o'clock!"


def test_weights_round_trip_and_a_missing_directory_gets_a_clear_error(model, tmp_path):
    save_recognizer(model, tmp_path / "rec", {"step": 3})
    again = load_recognizer(tmp_path / "rec")
    pcm = torch.zeros(1, model.cfg.step_samples * 4)
    with torch.no_grad():
        assert torch.equal(again(pcm)[0], model(pcm)[0])
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_recognizer(tmp_path / "nowhere")


def test_a_finished_word_snaps_to_the_nearest_lexicon_word_only_when_it_is_close():
    from listen.recognizer import Lexicon

    lex = Lexicon(["something", "colour", "denmark", "is"])
    assert lex.snap("somethin") == "something" and lex.snap("colur") == "colour"
    assert lex.snap("is") == "is"  # known words stay
    assert lex.snap("xq") == "xq"  # nothing near: kept as spelled (a new word is not forced into the lexicon)
    assert Lexicon([]).snap("abc") == "abc"


def test_the_lexicon_travels_with_the_weights_and_the_stream_uses_it(model, tmp_path):
    save_recognizer(model, tmp_path / "rec", lexicon=["sky", "blue"])
    again = load_recognizer(tmp_path / "rec")
    assert again.lexicon == ["blue", "sky"]
    rec = StreamingRecognizer(again)
    rec.state.word = "skyy"
    assert rec.flush() == ["sky"]
    plain = StreamingRecognizer(again, snap=False)
    plain.state.word = "skyy"
    assert plain.flush() == ["skyy"]


def test_a_corrupt_recogniser_is_refused_in_one_sentence(model, tmp_path):
    save_recognizer(model, tmp_path / "rec")
    (tmp_path / "rec" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="could not be loaded"):
        load_recognizer(tmp_path / "rec")
    save_recognizer(model, tmp_path / "rec2")
    (tmp_path / "rec2" / "config.json").write_text('{"dim": 64, "colour": 1}')
    with pytest.raises(ValueError, match="could not be loaded"):
        load_recognizer(tmp_path / "rec2")
    (tmp_path / "rec2" / "config.json").write_text('{"dim": "abc"}')  # was a torch TypeError traceback
    with pytest.raises(ValueError, match="dim must be an integer >= 1"):
        load_recognizer(tmp_path / "rec2")


@pytest.mark.parametrize("field, value, words", [("dim", "abc", "dim must be an integer"), ("stack", 0, "stack must"),
                                                 ("fmax", 9000.0, "fmax must"), ("alphabet", "abc", "alphabet must")])
def test_a_recogniser_shape_that_cannot_be_built_is_refused_in_one_sentence(field, value, words):
    with pytest.raises(ValueError, match=words):
        RecognizerConfig(**{field: value})



class ScriptedModel:
    """A recogniser stand-in whose log-probabilities per 40 ms step are given: ``(steps, classes)``."""

    def __init__(self, logp: np.ndarray, lexicon: list[str], word_lm=None) -> None:
        self.cfg, self.logp, self.lexicon, self.word_lm = RecognizerConfig(), torch.from_numpy(logp), lexicon, word_lm

    def __call__(self, pcm, state):
        at = state.get("at", 0)
        n = pcm.shape[1] // self.cfg.step_samples
        return self.logp[at:at + n][None], {"at": at + n}


def test_with_a_word_lm_the_stream_decodes_through_the_beam_and_a_pause_ends_the_utterance(model, tmp_path):
    from listen.word_lm import WordNgramLM, save_word_lm
    from tests.listen.test_ctc_beam import emissions, silence, spell

    save_recognizer(model, tmp_path / "rec", lexicon=["sky", "blue", "is", "the"])
    with pytest.raises(ValueError, match="needs the recogniser's word language model"):
        StreamingRecognizer(load_recognizer(tmp_path / "rec"), decoder="beam")
    save_word_lm(WordNgramLM.from_sentences(["the sky is blue"]), tmp_path / "rec", {"lm_weight": 0.5})
    again = load_recognizer(tmp_path / "rec")
    assert again.word_lm[1] == {"lm_weight": 0.5}
    assert StreamingRecognizer(again).beam is not None  # auto: the beam, since lm.json is there
    assert StreamingRecognizer(again, decoder="greedy").beam is None
    with pytest.raises(ValueError, match="decoder must be one of"):
        StreamingRecognizer(again, decoder="fancy")
    # "the sky is blu" + a pause: greedy spells "blu" and waits for its space; the beam writes the word
    logp = np.concatenate([emissions(spell("the skyy is blu")), silence(4)])
    scripted = ScriptedModel(logp, again.lexicon, again.word_lm)
    pcm = np.zeros(scripted.cfg.step_samples * len(logp), np.float32)
    for decoder, expected, after_pause in (("beam", ["the", "sky", "is", "blue"], []), ("greedy", ["the", "sky", "is"], ["blue"])):
        rec, words = StreamingRecognizer(scripted, decoder=decoder), []
        for k in range(0, len(pcm), 1280):  # 80 ms pieces, as a session's writer feeds it
            words += rec.push(pcm[k:k + 1280])
        words += rec.end_utterance()
        assert words == expected, decoder
        assert rec.flush() == after_pause  # greedy: the word in progress, snapped
