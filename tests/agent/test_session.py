"""The session loop with a scripted model: one output per tick, barge-in within a frame, echo guard."""
from __future__ import annotations

import math

import numpy as np
import pytest

from agent.config import SessionConfig
from agent.policy import PolicyConfig
from agent.session import Session
from listen.wavio import read_wav
from streaming.clock import FrameClock, VirtualClock
from streaming.codecs import load_codec
from tests.agent.fakes import TalkingModel
from tests.conftest import espeak
from think.layout import DuplexLayout
from think.tokenizer import default_tokenizer


@pytest.fixture(scope="module")
def codec():
    return load_codec("codec2")


@pytest.fixture(scope="module")
def layout(codec):
    return DuplexLayout.for_codec(codec, default_tokenizer().get_vocab_size())


@pytest.fixture(scope="module")
def loud_codes(codec):
    t = np.arange(codec.spec.frame_samples * 6) / codec.spec.sample_rate
    buzz = 0.5 * np.sign(np.sin(2 * np.pi * 140 * t)).astype(np.float32)
    return codec.encode_all(buzz)[-1]


@pytest.fixture(scope="module")
def speech_after_silence(tmp_path_factory):
    """1.0 s of silence, then ~2 s of espeak speech, then 2 s of silence, at 22.05 kHz."""
    path = espeak("Wait, stop, I have a different question for you.", tmp_path_factory.mktemp("a") / "s.wav")
    speech, rate = read_wav(path)
    speech = speech[:, 0]
    pad = np.zeros(rate, np.float32)
    return np.concatenate([pad, speech, pad, pad]), rate


async def run_offline(session: Session, audio: np.ndarray, max_frames=None, **run_args):
    async def feed():
        for i in range(0, len(audio), 2205):
            await session.push_audio(audio[i:i + 2205])
        await session.end_input()

    import asyncio

    task = asyncio.create_task(feed())
    clock = FrameClock(session.frame_ms / 1000, realtime=False)
    outs = [o async for o in session.run(clock, max_frames=max_frames, **run_args)]
    await task
    return outs


async def _talking_session(codec, layout, loud_codes, policy, audio, rate):
    """A session whose model always talks (loud codes), run offline over ``audio``: (session, model, outs)."""
    model = TalkingModel(layout, loud_codes)
    session = Session(model, codec, default_tokenizer(), SessionConfig(policy=policy), input_rate=rate)
    return session, model, await run_offline(session, audio)


async def test_barge_in_stops_agent_within_a_frame(codec, layout, loud_codes, speech_after_silence):
    audio, rate = speech_after_silence
    policy = PolicyConfig(barge_in_min_speech_ms=240, release_after_ms=400)
    session, model, outs = await _talking_session(codec, layout, loud_codes, policy, audio, rate)

    speech = [o.user.speech for o in outs]
    onset = speech.index(True)
    need = math.ceil(240 / session.frame_ms)
    assert all(speech[onset:onset + need]), "fixture speech should be sustained at its onset"
    cut = next(i for i, o in enumerate(outs) if o.cut)
    # The agent was audible right up to the cut, and is silent in the cut frame itself.
    assert np.sqrt(np.mean(outs[cut - 1].agent_audio ** 2)) > 0.01
    assert cut == onset + need - 1
    assert np.all(outs[cut].agent_audio == 0.0)
    # The model saw the cut: its slot was forced in that same frame and while the user kept talking.
    assert model.calls[cut]["forced"] is True
    assert (cut - onset + 1) * session.frame_ms <= policy.barge_in_min_speech_ms + session.frame_ms
    # Once the user has been quiet for release_after_ms, the agent may speak again.
    last_speech = max(i for i, s in enumerate(speech) if s)
    release = last_speech + math.ceil(400 / session.frame_ms) + 1
    assert not outs[release].forced and np.sqrt(np.mean(outs[release].agent_audio ** 2)) > 0.01
    assert session.latency.summary()["barge_ins"] >= 1


def _level(frame) -> float:
    return float(np.sqrt(np.mean(frame.agent_audio.astype(np.float64) ** 2)))


async def test_a_backchannel_pauses_the_agent_and_it_goes_on_where_it_was(codec, layout, loud_codes, tmp_path):
    """With ``pause_before_cut_ms`` a short "yeah" over the agent silences it at once, as a barge-in would, but
    the model is never forced silent and its held-back audio plays after; a long utterance still cuts it."""
    yeah, rate = read_wav(espeak("yeah", tmp_path / "yeah.wav"))
    pad = np.zeros(rate, np.float32)
    audio = np.concatenate([pad, yeah[:, 0], pad, pad])
    policy = PolicyConfig(barge_in_min_speech_ms=160, pause_before_cut_ms=800)
    session, model, outs = await _talking_session(codec, layout, loud_codes, policy, audio, rate)
    speech = [o.user.speech for o in outs]
    onset = speech.index(True)
    assert sum(speech) < 9, "the fixture is a short word"
    paused = [i for i, o in enumerate(outs) if _level(o) < 0.01 and i > 2]
    assert paused and paused[0] == onset + 1  # silent from the second speech frame, as a cut would be
    assert not any(o.cut or o.forced for o in outs) and not any(c["forced"] for c in model.calls)
    assert _level(outs[paused[-1] + 1]) > 0.01 and _level(outs[-1]) > 0.01  # it goes on
    assert session.policy.backchannels == 1

    # its commas are up to 320 ms of silence to the VAD: longer than a resume, so the pause must outlast them
    import dataclasses

    long_session = Session(TalkingModel(layout, loud_codes), codec, default_tokenizer(),
                           SessionConfig(policy=dataclasses.replace(policy, resume_after_ms=400)), input_rate=rate)
    wait, wrate = read_wav(espeak("Wait, stop, I have a different question for you.", tmp_path / "wait.wav"))
    outs = await run_offline(long_session, np.concatenate([pad, wait[:, 0], pad]))
    onset = [o.user.speech for o in outs].index(True)
    cut = next(i for i, o in enumerate(outs) if o.cut)
    assert all(_level(o) < 0.01 for o in outs[onset + 1:cut + 1]) and outs[cut + 1].forced


async def test_a_model_that_misses_the_turn_end_is_made_to_answer_after_answer_after_ms(codec, layout, loud_codes,
                                                                                        speech_after_silence):
    audio, rate = speech_after_silence
    model = TalkingModel(layout, loud_codes, talk_from=10**6)  # it never takes the turn by itself
    session = Session(model, codec, default_tokenizer(), SessionConfig(policy=PolicyConfig(answer_after_ms=640)),
                      input_rate=rate)
    outs = await run_offline(session, audio, tail_frames=20)
    speech = [o.user.speech for o in outs]
    last_speech = max(i for i, s in enumerate(speech) if s)
    asked = [i for i, o in enumerate(outs) if o.mark.speak_now]
    assert asked == [last_speech + 8]  # 8 quiet frames = 640 ms; it answers at once, so one frame only
    assert [c["speak_now"] for c in model.calls].count(True) == 1
    audible = [i for i, o in enumerate(outs) if o.mark.agent_rms >= 0.01]
    assert audible and audible[0] >= asked[0] and not any(i < asked[0] for i in audible)
    assert session.latency.summary()["answer_prompt_frames"] == 1


async def test_a_pause_the_turn_detector_calls_unfinished_keeps_the_agent_from_starting(codec, layout, loud_codes,
                                                                                         speech_after_silence, tmp_path):
    import torch

    from listen.recognizer import RecognizerConfig
    from listen.turn_detector import build_detector, save_detector

    torch.manual_seed(0)
    save_detector(build_detector(RecognizerConfig.from_dict({"sample_rate": 8000, "hop": 80, "win": 200, "n_fft": 256,
                                                             "n_mels": 16, "dim": 16})), tmp_path / "det",
                  {"threshold": 0.9999})  # a detector that hears every silence as a mid-turn pause
    audio, rate = speech_after_silence
    policy = PolicyConfig(answer_after_ms=640)
    probe = Session(TalkingModel(layout, loud_codes, talk_from=10**6), codec, default_tokenizer(),
                    SessionConfig(policy=policy, turn_detector="off"), input_rate=rate)
    last_speech = max(i for i, o in enumerate(await run_offline(probe, audio)) if o.user.speech)
    starts = last_speech + 2  # a model that takes the turn 160 ms after the user stops

    async def first_audible(turn_detector):
        session = Session(TalkingModel(layout, loud_codes, talk_from=starts), codec, default_tokenizer(),
                          SessionConfig(policy=policy, turn_detector=turn_detector), input_rate=rate)
        outs = await run_offline(session, audio, tail_frames=20)
        return outs, next(i for i, o in enumerate(outs) if i > last_speech and o.mark.agent_rms >= 0.01)

    outs, start = await first_audible("off")
    assert start == starts and not any(o.mark.wait for o in outs)
    outs, start = await first_audible(str(tmp_path / "det"))
    waited = [i for i, o in enumerate(outs) if o.mark.wait]
    assert [i for i in waited if i > last_speech] == list(range(last_speech + 1, last_speech + 8))  # until the prompt
    assert all(not outs[i].user.speech for i in waited)  # before that, only the gaps at the sentence's commas
    assert all(outs[i].forced for i in waited) and outs[last_speech + 8].mark.speak_now
    assert start == last_speech + 8  # 640 ms: the answer prompt's bound, then it must answer


async def test_echo_guard_feeds_the_model_silence_while_the_agent_talks(codec, layout, loud_codes,
                                                                         speech_after_silence):
    audio, rate = speech_after_silence
    cfg = SessionConfig(policy=PolicyConfig(echo_guard=True, barge_in=True))
    model = TalkingModel(layout, loud_codes)
    session = Session(model, codec, default_tokenizer(), cfg, input_rate=rate)
    outs = await run_offline(session, audio)
    silence = layout.user_silence_codes()
    speech_frames = [i for i, o in enumerate(outs) if o.user.speech and i > 0]
    assert speech_frames, "fixture must contain speech"
    for i in speech_frames:
        assert np.array_equal(model.calls[i]["user"][: layout.q_in], silence)
    assert not any(o.cut for o in outs)


async def test_offline_session_yields_one_output_per_input_frame(codec, layout, loud_codes, speech_after_silence):
    audio, rate = speech_after_silence
    session = Session(TalkingModel(layout, loud_codes), codec, default_tokenizer(), input_rate=rate)
    outs = await run_offline(session, audio)
    expected = math.ceil(len(audio) / rate * 1000 / session.frame_ms)
    assert abs(len(outs) - expected) <= 1
    assert [o.index for o in outs] == list(range(len(outs)))
    assert all(len(o.agent_audio) == codec.spec.frame_samples for o in outs)
    assert len(session.latency.frames) == len(outs) and all(m.total_ms > 0 for m in session.latency.frames)


async def test_realtime_session_uses_silence_when_the_microphone_is_late(codec, layout, loud_codes):
    vc = VirtualClock()
    model = TalkingModel(layout, loud_codes, talk_from=100)
    session = Session(model, codec, default_tokenizer(), input_rate=16000, realtime=True)
    clock = FrameClock(0.08, realtime=True, time_fn=vc.time, sleep_fn=vc.sleep)
    outs = [o async for o in session.run(clock, max_frames=5)]
    assert len(outs) == 5 and all(o.user_underrun for o in outs)
    assert session.user_underruns == 5
    full_silence = codec.silence_codes()
    assert all(np.array_equal(c["user"], full_silence) for c in model.calls)


async def test_realtime_session_takes_queued_frames_in_order_on_a_virtual_clock(codec, layout, loud_codes):
    vc = VirtualClock()
    session = Session(TalkingModel(layout, loud_codes), codec, default_tokenizer(), input_rate=8000, realtime=True)
    tone = (0.3 * np.sin(2 * np.pi * 200 * np.arange(8000) / 8000)).astype(np.float32)
    await session.push_audio(tone)  # 1 s = 12 whole frames queued ahead of the clock
    clock = FrameClock(0.08, realtime=True, time_fn=vc.time, sleep_fn=vc.sleep)
    outs = [o async for o in session.run(clock, max_frames=12)]
    assert [o.user.index for o in outs] == list(range(12))
    assert not any(o.user_underrun for o in outs)
    assert clock.frames_late == 0


async def _tail_run(codec, layout, loud_codes, talk_from, talk_until):
    model = TalkingModel(layout, loud_codes, talk_from=talk_from, talk_until=talk_until)
    session = Session(model, codec, default_tokenizer(), SessionConfig(), input_rate=8000)
    silence = np.zeros(8000, np.float32)  # 1 s = 12.5 frames -> 13 input frames
    outs = await run_offline(session, silence, tail_frames=60, tail_quiet_frames=5)
    assert [o.index for o in outs] == list(range(len(outs)))
    audible = [i for i, o in enumerate(outs) if o.mark.agent_rms >= session.config.policy.agent_talking_rms]
    return outs, audible


async def test_tail_runs_on_while_the_agent_talks_and_ends_once_it_has_been_quiet(codec, layout, loud_codes):
    outs, audible = await _tail_run(codec, layout, loud_codes, talk_from=10, talk_until=30)
    assert audible[-1] >= 29  # it talked well past the input's 13 frames...
    assert len(outs) == audible[-1] + 1 + 5  # ...and the run ended after 5 quiet frames


async def test_tail_ends_when_the_agent_stays_quiet_after_the_input(codec, layout, loud_codes):
    outs, audible = await _tail_run(codec, layout, loud_codes, talk_from=40, talk_until=45)
    assert len(outs) == 13 + 5 and not audible


async def test_tail_cap_ends_an_agent_that_never_stops(codec, layout, loud_codes):
    outs, audible = await _tail_run(codec, layout, loud_codes, talk_from=0, talk_until=None)
    assert len(outs) == 13 + 60 and audible[-1] == len(outs) - 1


async def test_push_after_close_says_closed_and_end_input_after_close_is_a_no_op(codec, layout, loud_codes):
    session = Session(TalkingModel(layout, loud_codes), codec, default_tokenizer(), input_rate=8000)
    await session.close()
    with pytest.raises(RuntimeError, match="session is closed"):
        await session.push_audio(np.zeros(800, np.float32))
    await session.end_input()  # a surface tearing down in any order must not fail here


class _LateCodec:
    """codec2 whose decoder returns each frame's audio two frames late (like snac's look-ahead)."""

    def __init__(self, codec, lookahead=2):
        import dataclasses

        self._codec = codec
        self.spec = dataclasses.replace(codec.spec, lookahead_frames=lookahead)

    def encoder(self):
        return self._codec.encoder()

    def silence_codes(self):
        return self._codec.silence_codes()

    def decoder(self):
        inner, keep = self._codec.decoder(), self.spec.lookahead_frames * self.spec.frame_samples

        class Late:
            held = np.zeros(0, np.float32)

            def decode(self, codes):
                pcm = np.concatenate([self.held, inner.decode(codes)])
                out, self.held = pcm[: len(pcm) - keep], pcm[len(pcm) - keep:]
                return out

            def flush(self):
                out, self.held = self.held, np.zeros(0, np.float32)
                return out

            def reset(self):
                inner.reset()
                self.held = np.zeros(0, np.float32)

        return Late()


async def test_lookahead_codec_still_gives_one_frame_of_agent_audio_per_frame(codec, layout, loud_codes):
    late = _LateCodec(codec)
    session = Session(TalkingModel(layout, loud_codes), late, default_tokenizer(), input_rate=8000)
    outs = await run_offline(session, np.zeros(8000, np.float32))
    fs = codec.spec.frame_samples
    assert all(len(o.agent_audio) == fs for o in outs)
    # The agent's track is the codec's, delayed by the look-ahead: silence first, then the same audio.
    direct = codec.decode_all(np.stack([loud_codes] * len(outs)))
    track = np.concatenate([o.agent_audio for o in outs])
    assert not track[: 2 * fs].any()
    np.testing.assert_allclose(track[2 * fs:], direct[: len(track) - 2 * fs], atol=1e-6)
    assert outs[2].mark.agent_rms > session.policy.config.agent_talking_rms


@pytest.mark.parametrize("run_args", [{}, {"tail_frames": 5, "tail_quiet_frames": 0}])
async def test_lookahead_codec_plays_the_last_input_frames_audio_before_the_session_ends(codec, layout, loud_codes,
                                                                                       run_args):
    late = _LateCodec(codec)
    session = Session(TalkingModel(layout, loud_codes), late, default_tokenizer(), input_rate=8000)
    outs = await run_offline(session, np.zeros(8000, np.float32), **run_args)
    fs, input_frames = codec.spec.frame_samples, 8000 // codec.spec.frame_samples
    assert len(outs) >= input_frames + 2
    direct = codec.decode_all(np.stack([loud_codes] * len(outs)))
    track = np.concatenate([o.agent_audio for o in outs])
    # every input frame's agent audio is in the track, not left in the decoder
    np.testing.assert_allclose(track[2 * fs:(input_frames + 2) * fs], direct[: input_frames * fs], atol=1e-6)
