"""Heard text: the text slot also carries the agent's transcript of the user, in its own id range."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from agent.cli import main
from agent.config import SessionConfig
from agent.session import Session
from agent.training.tokenize import load_split, text_track
from streaming.clock import FrameClock
from streaming.codecs import load_codec
from tests.agent.test_training import dialogues  # noqa: F401  (the hand-made dialogue fixture)
from think.backend import BackendSession, StepResult
from think.checkpoint import load_checkpoint
from think.layout import DuplexLayout
from think.sampling import SlotMasks
from think.tokenizer import default_tokenizer


@pytest.fixture(scope="module")
def codec():
    return load_codec("codec2")


@pytest.fixture(scope="module")
def layouts(codec):
    v = default_tokenizer().get_vocab_size()
    return DuplexLayout.for_codec(codec, v), DuplexLayout.for_codec(codec, v, heard_text=True)


def test_heard_range_is_appended_so_no_existing_id_moves(layouts):
    old, new = layouts
    assert new.user_offsets == old.user_offsets and new.agent_offsets == old.agent_offsets
    assert new.pad_id == old.pad_id and new.eot_id == old.eot_id
    assert new.heard_offset == old.vocab_size
    assert new.vocab_size == old.vocab_size + new.text_vocab_size
    assert new.heard_id(0) == new.heard_offset and new.is_heard_id(new.vocab_size - 1)
    assert not old.is_heard_id(old.vocab_size - 1) and not new.is_heard_id(new.pad_id)
    with pytest.raises(ValueError, match="no heard-text range"):
        old.heard_offset
    with pytest.raises(ValueError, match="not a text id"):
        new.heard_id(new.text_vocab_size)


def test_heard_layout_round_trips_and_an_old_layout_file_loads_without_it(layouts, tmp_path):
    old, new = layouts
    new.save(tmp_path)
    again = DuplexLayout.load(tmp_path)
    assert again == new and again.heard_text and again.version == 2
    d = old.to_dict()
    assert "heard_text" not in d
    assert not DuplexLayout.from_dict(d).heard_text


def test_text_position_samples_heard_ids_only_in_a_heard_layout(layouts):
    old, new = layouts
    masks = SlotMasks(new, vocab_rows=new.vocab_size + 3)
    lo, hi = masks.rows[0]
    text = masks.text_mask(0.0)
    assert hi == new.vocab_size and bool(torch.isfinite(text[new.heard_offset - lo:]).all())
    assert not bool(torch.isfinite(text[new.user_offsets[0] - lo: new.heard_offset - lo]).any())  # audio stays out
    assert SlotMasks(old, vocab_rows=old.vocab_size).rows[0][1] == old.eot_id + 1
    assert new.is_text_slot_id(new.heard_id(5)) and not old.is_text_slot_id(new.heard_id(5))


def _record(dialogues, name):  # noqa: F811
    return json.loads((dialogues / f"{name}.json").read_text())


def test_the_users_words_are_written_down_in_free_frames_before_the_answer(dialogues, layouts):  # noqa: F811
    _, lay = layouts
    tok = default_tokenizer()
    record = _record(dialogues, "d0")
    frames = int(np.ceil(record["duration"] / 0.08))
    text = text_track(record, lay, tok, frames)
    heard = [i for i, t in enumerate(text) if lay.is_heard_id(int(t))]
    agent = [i for i, t in enumerate(text) if t < lay.text_vocab_size]
    user = record["turns"][0]
    # Every word of the question, in order, decodes from the heard ids.
    words = tok.decode([int(text[i]) - lay.heard_offset for i in heard]).split()
    assert words == user["text"].split()
    # Written while the user speaks (never before the turn starts), the last piece on the turn's end frame,
    # and all of it before the agent's first word.
    assert heard[0] > int(user["start"] / 0.08)
    assert heard[-1] == int(user["end"] / 0.08)
    assert heard[-1] < agent[0]
    # The agent's words are where a plain layout puts them.
    old_text = text_track(record, layouts[0], tok, frames)
    assert np.array_equal(np.where(text < lay.text_vocab_size)[0], np.where(old_text < lay.text_vocab_size)[0])


def test_heard_words_never_split_an_agent_turn_and_stale_ones_are_dropped(layouts):
    _, lay = layouts
    tok = default_tokenizer()
    # The user talks over the whole agent turn (a backchannel-like overlap): nothing of it fits before the
    # agent's EOT within the allowed lag, so it is dropped, not squeezed between the agent's words.
    record = {"turns": [
        {"speaker": "agent", "start": 0.4, "end": 2.0, "text": "one two three four five",
         "words": [{"word": w, "start": 0.4 + 0.3 * i} for i, w in enumerate("one two three four five".split())]},
        {"speaker": "user", "start": 0.8, "end": 1.2, "text": "mm hmm", "words": []}]}
    text = text_track(record, lay, tok, 40)
    assert not any(lay.is_heard_id(int(t)) for t in text)
    spoken = [i for i, t in enumerate(text) if t < lay.text_vocab_size or t == lay.eot_id]
    assert spoken == sorted(spoken) and text[spoken[-1]] == lay.eot_id


def test_a_checkpoint_grown_into_the_heard_layout_keeps_what_it_learned(nano_model_dir, tmp_path, capsys):
    out = tmp_path / "heard"
    assert main(["model", "init", str(out), "--heard-text-from", str(nano_model_dir)]) == 0
    src, grown = load_checkpoint(nano_model_dir), load_checkpoint(out)
    assert grown.layout.heard_text and grown.layout.user_offsets == src.layout.user_offsets
    ids = torch.randint(0, src.layout.text_vocab_size, (1, 40))
    with torch.no_grad():
        a = src.model(ids).logits[0, :, : src.layout.vocab_size]
        b = grown.model(ids).logits[0, :, : src.layout.vocab_size]
        emb = grown.model.get_input_embeddings().weight
        heard = emb[grown.layout.heard_offset: grown.layout.heard_offset + grown.layout.text_vocab_size]
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.equal(heard, emb[: grown.layout.text_vocab_size])
    assert main(["model", "init", str(tmp_path / "again"), "--heard-text-from", str(out)]) != 0
    assert "already has a heard-text range" in capsys.readouterr().err


class _Scripted(BackendSession):
    """Emits a fixed script of text-slot ids, with silent agent audio."""

    def __init__(self, layout: DuplexLayout, script: list[int]) -> None:
        self.layout, self.script, self.frame = layout, script, 0

    @property
    def context_tokens(self) -> int:
        return self.frame * self.layout.slot_size

    async def step(self, user_codes, force_silence=False, text_id=None, heard_id=None, speak_now=False):
        t = self.script[self.frame] if self.frame < len(self.script) else self.layout.pad_id
        self.frame += 1
        return StepResult(self.frame - 1, t, self.layout.agent_silence_codes())

    async def close(self):
        pass


async def test_the_session_reports_heard_ids_as_the_users_transcript_not_the_agents(codec, layouts):
    _, lay = layouts
    tok = default_tokenizer()
    q, a = tok.encode(" what colour is the sky").ids, tok.encode(" the sky is blue").ids
    script = [lay.pad_id] * 3 + [lay.heard_id(i) for i in q] + [lay.pad_id] * 2 + a + [lay.eot_id]
    session = Session(_Scripted(lay, script), codec, tok, SessionConfig(), input_rate=8000)
    await session.push_audio(np.zeros(8000 * 3, np.float32))
    await session.end_input()
    outs = [o async for o in session.run(FrameClock(0.08, realtime=False))]
    assert "".join(o.heard_delta for o in outs).strip() == "what colour is the sky"
    assert "".join(o.text_delta for o in outs).strip() == "the sky is blue"
    assert session.text.text.strip() == "the sky is blue"
    assert not any(o.text_delta for o in outs[:3 + len(q)])


def test_heard_text_runs_end_to_end_through_tokenize_train_and_eval(dialogues, nano_model_dir, tmp_path):  # noqa: F811
    model, shards, run = tmp_path / "heard", tmp_path / "shards", tmp_path / "run"
    assert main(["model", "init", str(model), "--heard-text-from", str(nano_model_dir)]) == 0
    assert main(["data", "tokenize", "--data", str(dialogues), "--out", str(shards), "--model", str(model),
                 "--mic-paths", "soxr-hq", "-q"]) == 0
    lay = DuplexLayout.load(model)
    seqs = load_split(shards, "train")
    text = np.concatenate([s[1:].reshape(-1, lay.slot_size)[:, lay.q_in] for s in seqs])
    assert sum(lay.is_heard_id(int(t)) for t in text) >= 10
    assert main(["train", "--preset", "smoke", "--shards", str(shards), "--out", str(run), "--init", str(model),
                 "--steps", "2", "-q"]) == 0
    # the same shards also give heard_chat windows: new questions and answers in the dialogues' timing
    swapped = tmp_path / "swapped"
    assert main(["train", "--preset", "smoke", "--shards", str(shards), "--out", str(swapped), "--init", str(model),
                 "--steps", "2", "--set", 'mix={"duplex": 0.5, "heard_chat": 0.5}', "-q"]) == 0
    assert "val_heard_chat" in json.loads((swapped / "final_metrics.json").read_text())
    data = tmp_path / "data"
    data.mkdir()
    record = _record(dialogues, "d2")
    record["split"] = "test"
    (data / "d2.json").write_text(json.dumps(record))
    (data / "d2.wav").write_bytes((dialogues / "d2.wav").read_bytes())
    assert main(["eval", "--data", str(data), "--out", str(tmp_path / "eval"), "--model", str(run), "-q"]) == 0
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert result["summary"]["question_heard_wer"] is not None
    assert "heard_question" in result["dialogues"][0]["answers"][0]


class _HeardBackend:
    """Sessions that write a fixed sentence as heard ids from frame 12 on, then answer in text."""

    name = "heard"

    def __init__(self, codec, layout, script: list[int]) -> None:
        self.codec, self.layout, self.script = codec, layout, script
        self.tokenizer = default_tokenizer()

    def open_session(self, sampling=None, system_prompt="", adapter=None):
        return _Scripted(self.layout, self.script)


async def test_the_realtime_server_sends_the_heard_transcript_on_the_users_item(codec, layouts, tmp_path):
    from agent.server import BackgroundServer, ModelRegistry, RealtimeServer, ServerConfig, create_app
    from tests.agent.test_server import Client, speech_clip, stream_and_collect

    _, lay = layouts
    tok = default_tokenizer()
    q, a = tok.encode(" what colour is the sky").ids, tok.encode(" blue").ids
    script = [lay.pad_id] * 12 + [lay.heard_id(i) for i in q] + [lay.pad_id] * 30 + a + [lay.eot_id]
    registry = ModelRegistry()
    registry.add_backend("heard", _HeardBackend(codec, lay, script), codec)
    cfg = ServerConfig(port=0)
    with BackgroundServer(create_app(RealtimeServer(registry, cfg)), cfg) as srv:
        c = await Client.connect(srv.ws_url)
        await c.until("session.created")
        await stream_and_collect(c, speech_clip(tmp_path, "Tell me, what colour is the sky today?"), 24000)
        await c.close()
    item = c.of("input_audio_buffer.speech_started")[0]["item_id"]
    deltas = c.of("conversation.item.input_audio_transcription.delta")
    done = c.of("conversation.item.input_audio_transcription.completed")
    assert deltas and {d["item_id"] for d in deltas} == {item}
    assert len(done) == 1 and done[0]["item_id"] == item
    assert done[0]["transcript"] == "".join(d["delta"] for d in deltas).strip() == "what colour is the sky"
    # The heard words are the user's, never the agent's transcript.
    said = "".join(e["delta"] for e in c.of("response.output_audio_transcript.delta"))
    assert "colour" not in said
