"""The listener's recogniser writes a heard-text model's transcript (agent/heard.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from agent.cli import main
from agent.config import SessionConfig
from agent.heard import HeardConfig, HeardWriter, load_heard_recognizer
from agent.session import Session
from listen.recognizer import RecognizerConfig, build_model, save_recognizer
from streaming.clock import FrameClock
from streaming.codecs import load_codec
from think.layout import DuplexLayout
from think.tokenizer import default_tokenizer
from think.transformers_backend import TransformersBackend
from tests.agent.test_training import dialogues  # noqa: F401  (the hand-made dialogue fixture)


@pytest.fixture(scope="module")
def recognizer_dir(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("recognizer") / "rec"
    save_recognizer(build_model(RecognizerConfig(dim=32, rnn_layers=1)), d)
    return d


@pytest.fixture(scope="module")
def heard_model(nano_model_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("heard") / "model"
    assert main(["model", "init", str(d), "--heard-text-from", str(nano_model_dir)]) == 0
    return d


def _scripted(writer: HeardWriter, words_at: dict[int, list[str]]) -> None:
    """The writer's recogniser finishes ``words_at[k]`` on its k-th frame (a trained one is not needed here)."""
    calls = iter(range(10 ** 6))
    writer.recognizer.push = lambda pcm: words_at.get(next(calls), [])


def test_words_go_into_the_text_slot_only_while_the_agent_is_quiet_and_stale_pieces_are_dropped(heard_model,
                                                                                                recognizer_dir):
    lay, tok = DuplexLayout.load(heard_model), default_tokenizer()
    writer = HeardWriter(load_heard_recognizer(HeardConfig(recognizer=str(recognizer_dir)), lay), lay, tok, 8000,
                         max_lag_frames=2)
    _scripted(writer, {0: ["what", "colour"], 6: ["is", "it?"]})
    pieces = [lay.heard_id(i) for i in tok.encode(" what").ids + tok.encode(" colour").ids]
    assert len(pieces) <= 3  # all of them fit in frames 0..2, before their lag of 2 runs out
    got = []
    for f in range(4):
        writer.hear(np.zeros(640, np.float32), f)
        got.append(writer.next_id(f))
        writer.observe(got[-1] or lay.pad_id, False)
    assert got == pieces + [None] * (4 - len(pieces))
    # The agent starts speaking: nothing is written inside its turn, and what waits too long is dropped.
    writer.observe(tok.encode(" hi").ids[0], False)
    for f in range(4, 9):
        writer.hear(np.zeros(640, np.float32), f)
        assert writer.next_id(f) is None
        writer.observe(lay.pad_id, False)
    writer.observe(lay.eot_id, False)  # its turn ends; the words heard at frame 6 are stale at 9 (lag 2)
    assert writer.next_id(9) is None
    assert writer.dropped == len(tok.encode(" is").ids + tok.encode(" it?").ids)
    assert list(writer.words) == ["what", "colour", "is", "it?"]


async def test_a_session_writes_the_recognisers_words_into_the_text_slot_as_heard_ids(heard_model, recognizer_dir):
    codec, tok = load_codec("codec2"), default_tokenizer()
    backend = TransformersBackend.from_dir(heard_model)
    lay = backend.layout
    cfg = SessionConfig(heard=HeardConfig(source="recognizer", recognizer=str(recognizer_dir)))
    cfg.sampling.pad_bias = 12.0  # the random model keeps quiet, so nothing holds the words back
    session = Session(backend.open_session(cfg.sampling), codec, tok, cfg, input_rate=8000)
    assert session.model.listener_heard and session.heard_writer is not None
    words = ["what", "colour", "is", "the", "sky?"]
    # each word as it is finished (one piece per frame; a word's pieces may wait max_lag_frames at most)
    _scripted(session.heard_writer, {5: ["what"], 6: ["colour"], 8: ["is"], 9: ["the"], 10: ["sky?"]})
    await session.push_audio(np.zeros(8000 * 3, np.float32))
    await session.end_input()
    outs = [o async for o in session.run(FrameClock(0.08, realtime=False))]
    expected = [lay.heard_id(i) for w in words for i in tok.encode(" " + w).ids]
    assert [o.text_id for o in outs[5:5 + len(expected)]] == expected  # from the frame the words were finished
    assert not any(lay.is_heard_id(o.text_id) for o in outs[:5] + outs[5 + len(expected):])
    assert "".join(o.heard_delta for o in outs).strip() == "what colour is the sky?"
    assert not any(o.text_delta for o in outs)
    await session.close()


@pytest.mark.parametrize("listener_heard", [False, True])
def test_a_session_whose_listener_writes_the_transcript_never_draws_heard_ids(heard_model, listener_heard):
    from think.sampling import SamplingConfig

    backend = TransformersBackend.from_dir(heard_model)
    session = backend.open_session(SamplingConfig(text_temperature=3.0, text_top_k=0, seed=1))
    session.listener_heard = listener_heard
    rng = np.random.default_rng(0)
    sizes = np.asarray(backend.layout.codec.codebook_sizes[: backend.layout.q_in])
    drawn = [session.step_sync(rng.integers(0, sizes)).text_id for _ in range(40)]
    heard = sum(backend.layout.is_heard_id(t) for t in drawn)
    # A random model at a high temperature draws heard ids when it may (so the check can fail).
    assert (heard == 0) if listener_heard else (heard > 5)


def test_who_writes_the_transcript_is_resolved_with_clear_errors(nano_model_dir, heard_model, recognizer_dir):
    plain, heard = DuplexLayout.load(nano_model_dir), DuplexLayout.load(heard_model)
    assert load_heard_recognizer(HeardConfig(), plain) is None  # auto, a model without heard text
    assert load_heard_recognizer(HeardConfig(source="model", recognizer=str(recognizer_dir)), heard) is None
    assert load_heard_recognizer(HeardConfig(recognizer=str(recognizer_dir)), heard) is not None
    with pytest.raises(ValueError, match="needs a heard-text model"):
        load_heard_recognizer(HeardConfig(source="recognizer", recognizer=str(recognizer_dir)), plain)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_heard_recognizer(HeardConfig(source="recognizer", recognizer="/nonexistent/rec"), heard)
    with pytest.raises(ValueError, match="heard.source must be one of"):
        HeardConfig(source="asr")
    with pytest.raises(ValueError, match="heard.decoder must be one of"):
        HeardConfig(decoder="fancy")
    with pytest.raises(ValueError, match="heard.placement must be one of"):
        HeardConfig(placement="last")


def test_a_given_text_id_that_the_text_slot_cannot_hold_is_refused(heard_model):
    backend = TransformersBackend.from_dir(heard_model)
    session = backend.open_session()
    with pytest.raises(ValueError, match="not an id the text slot can hold"):
        session.step_sync(np.zeros(backend.layout.q_in, np.int64), text_id=backend.layout.agent_offsets[0])


@pytest.mark.parametrize("pad_bias", [12.0, -12.0])
def test_a_heard_id_takes_the_text_slot_only_where_the_model_draws_pad(heard_model, pad_bias):
    from think.sampling import SamplingConfig

    backend = TransformersBackend.from_dir(heard_model)
    lay = backend.layout
    session = backend.open_session(SamplingConfig(pad_bias=pad_bias, seed=3))
    session.listener_heard = True
    heard = lay.heard_id(7)
    got = [session.step_sync(np.zeros(lay.q_in, np.int64), heard_id=heard).text_id for _ in range(6)]
    if pad_bias > 0:  # the model keeps quiet: every frame it leaves free holds the listener's id
        assert got == [heard] * 6
    else:  # the model speaks every frame: its own text goes first, the heard id waits
        assert all(t < lay.text_vocab_size and t != lay.pad_id for t in got)
    with pytest.raises(ValueError, match="not a heard id"):
        session.step_sync(np.zeros(lay.q_in, np.int64), heard_id=lay.pad_id)


async def test_placed_on_pad_the_transcript_never_delays_the_agents_turn(heard_model, recognizer_dir):
    """With ``placement=pad`` the recogniser's words wait for the frames the agent leaves free (as in training):
    an agent that starts to speak while a word is still queued speaks at once, and the stale word is dropped."""
    codec, tok = load_codec("codec2"), default_tokenizer()
    backend = TransformersBackend.from_dir(heard_model)
    lay = backend.layout
    cfg = SessionConfig(heard=HeardConfig(source="recognizer", recognizer=str(recognizer_dir), placement="pad"))
    cfg.sampling.pad_bias = -12.0  # the random model speaks at every frame
    session = Session(backend.open_session(cfg.sampling), codec, tok, cfg, input_rate=8000)
    _scripted(session.heard_writer, {2: ["what", "colour"]})
    await session.push_audio(np.zeros(8000, np.float32))
    await session.end_input()
    outs = [o async for o in session.run(FrameClock(0.08, realtime=False))]
    assert all(o.text_id < lay.text_vocab_size and o.text_id != lay.pad_id for o in outs if not o.forced)
    assert not any(o.heard_delta for o in outs)
    assert session.heard_writer.dropped == len(tok.encode(" what").ids + tok.encode(" colour").ids)
    await session.close()


def test_a_second_of_silence_finishes_the_word_being_spelled_and_restarts_the_stream(heard_model, recognizer_dir):
    from agent.heard import RESET_AFTER_SILENT_FRAMES

    lay, tok = DuplexLayout.load(heard_model), default_tokenizer()
    writer = HeardWriter(load_heard_recognizer(HeardConfig(recognizer=str(recognizer_dir)), lay), lay, tok, 8000)
    _scripted(writer, {})
    writer.hear(np.zeros(640, np.float32), 0, speech=True)
    writer.recognizer.state.word = "sky"  # the recogniser never heard the space after it
    for f in range(1, RESET_AFTER_SILENT_FRAMES):
        assert writer.hear(np.zeros(640, np.float32), f, speech=False) == []
    assert writer.hear(np.zeros(640, np.float32), RESET_AFTER_SILENT_FRAMES, speech=False) == ["sky"]
    assert writer.recognizer.state.word == "" and writer.recognizer.state.model == {}
    assert writer.next_id(RESET_AFTER_SILENT_FRAMES) == lay.heard_id(tok.encode(" sky").ids[0])


def test_a_short_pause_closes_the_beam_searchs_utterance_so_its_last_word_is_not_late(heard_model, recognizer_dir,
                                                                                       tmp_path):
    import shutil

    from agent.heard import END_UTTERANCE_AFTER_SILENT_FRAMES
    from listen.word_lm import WordNgramLM, save_word_lm

    shutil.copytree(recognizer_dir, tmp_path / "rec")
    (tmp_path / "rec" / "lexicon.json").write_text('["the", "sky", "is", "blue"]')
    save_word_lm(WordNgramLM.from_sentences(["the sky is blue"]), tmp_path / "rec")
    lay, tok = DuplexLayout.load(heard_model), default_tokenizer()
    config = HeardConfig(recognizer=str(tmp_path / "rec"))
    writer = HeardWriter(load_heard_recognizer(config, lay), lay, tok, 8000, decoder=config.decoder)
    assert writer.recognizer.beam is not None
    _scripted(writer, {})
    writer.recognizer.beam.end = lambda: ["blue"]  # the search's last word, written when the utterance ends
    writer.hear(np.zeros(640, np.float32), 0, speech=True)
    for f in range(1, END_UTTERANCE_AFTER_SILENT_FRAMES):
        assert writer.hear(np.zeros(640, np.float32), f, speech=False) == []
    assert writer.hear(np.zeros(640, np.float32), END_UTTERANCE_AFTER_SILENT_FRAMES, speech=False) == ["blue"]
    assert writer.next_id(END_UTTERANCE_AFTER_SILENT_FRAMES) == lay.heard_id(tok.encode(" blue").ids[0])


def test_training_heard_text_can_be_what_the_recogniser_writes_live(heard_model, recognizer_dir, monkeypatch):
    from agent.heard import recognized_heard
    from listen.recognizer import StreamingRecognizer

    lay, tok = DuplexLayout.load(heard_model), default_tokenizer()
    calls = iter(range(10 ** 6))
    words_at = {1: ["what"], 11: ["is"], 20: ["it?"]}
    monkeypatch.setattr(StreamingRecognizer, "push", lambda self, pcm: words_at.get(next(calls), []))
    text = np.full(30, lay.pad_id, np.int64)
    text[[2, 3]] = [lay.heard_id(5), lay.heard_id(6)]  # the script's heard words: replaced
    text[10:15] = tok.encode(" the sky is blue today").ids[:5]
    text[15] = lay.eot_id
    out = recognized_heard(text, np.zeros(30 * 640, np.float32), 8000, 640, lay, tok,
                           load_heard_recognizer(HeardConfig(recognizer=str(recognizer_dir)), lay))
    heard = {f: int(t) for f, t in enumerate(out) if lay.is_heard_id(int(t))}
    it = [lay.heard_id(i) for i in tok.encode(" it?").ids]
    # "what" the frame it was finished; "is" (finished while the agent spoke) waited past its lag and was dropped
    assert heard == {1: lay.heard_id(tok.encode(" what").ids[0]), **{20 + k: h for k, h in enumerate(it)}}
    assert (out[10:16] == text[10:16]).all()  # the agent's own turn is untouched


def test_tokenize_takes_the_heard_text_from_a_recogniser_and_keeps_shard_sets_apart(dialogues, heard_model,  # noqa: F811
                                                                                    nano_model_dir, recognizer_dir,
                                                                                    run_cli, tmp_path):
    from agent.training.tokenize import read_index

    out = tmp_path / "shards"
    r = run_cli("data", "tokenize", "--data", dialogues, "--out", out, "--model", heard_model, "--mic-paths",
                "soxr-lq", "--heard-recognizer", recognizer_dir, "-q")
    assert r.rc == 0, r.err
    assert read_index(out)["heard"] == f"recognizer:{recognizer_dir.resolve()}"
    r = run_cli("data", "tokenize", "--data", dialogues, "--out", out, "--model", heard_model, "--mic-paths",
                "soxr-lq", "-q")
    assert r.rc == 2 and "heard text came from recognizer" in r.err
    r = run_cli("data", "tokenize", "--data", dialogues, "--out", tmp_path / "plain", "--model", nano_model_dir,
                "--heard-recognizer", recognizer_dir, "-q")
    assert r.rc == 2 and "needs a heard-text model" in r.err


def test_during_agent_turn_writes_a_late_last_word_inside_the_agents_turn(heard_model, recognizer_dir):
    lay, tok = DuplexLayout.load(heard_model), default_tokenizer()
    model = load_heard_recognizer(HeardConfig(recognizer=str(recognizer_dir)), lay)
    got = {}
    for during in (False, True):
        writer = HeardWriter(model, lay, tok, 8000, max_lag_frames=2, during_agent_turn=during)
        _scripted(writer, {1: ["denmark"]})
        writer.observe(tok.encode(" the").ids[0], False)  # the agent has begun its answer
        writer.hear(np.zeros(640, np.float32), 0)
        writer.hear(np.zeros(640, np.float32), 1)
        got[during] = writer.next_id(1)
    assert got[False] is None and got[True] == lay.heard_id(tok.encode(" denmark").ids[0])
