"""Echo: the agent's own voice, played by the speaker, comes back into the microphone through a
simulated room (30 ms delay + a decaying reverb tail, echo 6 dB below the played level). The full
daemon audio path runs in lock-step, 10 ms at a time: PlayoutBuffer -> speaker_pull (the AEC
reference) -> room -> mic -> echo canceller -> Session (a scripted model that talks continuously, the
real VAD, the real barge-in policy) -> playout.

- AEC on: the agent never cuts itself off (0 barge-ins in 8 s of continuous talking).
- AEC off (same everything else): it does (the policy's barge-in fires on its own echo), which is
  what shows the AEC test proves something.
- AEC on, and a real user talks over the agent at 6 s: the barge-in still happens (double talk).
- Half-duplex fallback: no self-interruption, but the user cannot interrupt either.
- A headset (the microphone never hears the speaker): the canceller steps aside (nothing to cancel; it
  would only mute the user's barge-in), and a room with an echo, loud or 26 dB down, never makes it.
"""
from __future__ import annotations

import asyncio

import numpy as np
import pytest
import soundfile as sf

from agent.config import SessionConfig
from agent.daemon.brain import LocalBrain
from agent.daemon.config import BrainConfig, DaemonConfig, EchoConfig, MqttConfig, AudioConfig
from agent.daemon.daemon import Daemon
from listen.resample import StreamingResampler
from tests.conftest import espeak
from think.backend import StepResult
from think.layout import DuplexLayout
from think.tokenizer import default_tokenizer

pytestmark = pytest.mark.timeout(120)
RATE = 16000
BLOCK = RATE // 100


class SpeakerModel:
    """Talks (cycles through the codec2 codes of a spoken sentence) unless the policy forces silence."""

    def __init__(self, layout: DuplexLayout, codes: np.ndarray, text_id: int = 300) -> None:
        self.layout = layout
        self.codes = codes
        self.text_id = text_id
        self.frame = 0
        self.forced = 0

    @property
    def context_tokens(self) -> int:
        return self.frame * self.layout.slot_size

    async def step(self, user_codes, force_silence=False, text_id=None, heard_id=None, speak_now=False):
        lay = self.layout
        if force_silence:
            self.forced += 1
            r = StepResult(self.frame, lay.pad_id, lay.agent_silence_codes(), forced=True)
        else:
            c = self.codes[self.frame % len(self.codes)][: lay.q_out]
            r = StepResult(self.frame, self.text_id, np.asarray(c, np.int64))
        self.frame += 1
        return r

    async def close(self):
        pass


class SpeakerBackend:
    def __init__(self, speech_8k: np.ndarray) -> None:
        from streaming.codecs import load_codec

        self.codec = load_codec("codec2")
        self.tokenizer = default_tokenizer()
        self.layout = DuplexLayout.for_codec(self.codec, self.tokenizer.get_vocab_size())
        self.codes = self.codec.encode_all(speech_8k)
        self.sessions: list[SpeakerModel] = []

    def open_session(self, sampling=None, system_prompt="", adapter=None):
        s = SpeakerModel(self.layout, self.codes)
        self.sessions.append(s)
        return s


class Room:
    """Speaker -> microphone: 30 ms direct path at -6 dB plus an exponentially decaying reverb tail."""

    def __init__(self, rate: int = RATE, delay_ms: float = 30.0, gain: float = 0.5, rt60_s: float = 0.25, seed: int = 0):
        rng = np.random.default_rng(seed)
        n = int(rate * (delay_ms / 1000 + rt60_s))
        d = int(rate * delay_ms / 1000)
        ir = np.zeros(n)
        ir[d] = gain
        t = np.arange(n - d - 1) / rate
        ir[d + 1:] = gain * 0.3 * rng.standard_normal(n - d - 1) * np.exp(-6.9 * t / rt60_s) / np.sqrt(rate * 0.01)
        self.ir = ir
        self.hist = np.zeros(n - 1)

    def process(self, x: np.ndarray) -> np.ndarray:
        buf = np.concatenate([self.hist, x])
        y = np.convolve(buf, self.ir, mode="valid")
        self.hist = buf[len(buf) - len(self.hist):]
        return y.astype(np.float32)


def to_rate(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    r = StreamingResampler(src, dst)
    return np.concatenate([r.process(x.astype(np.float32)), r.flush()])


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    d = tmp_path_factory.mktemp("echo")
    agent, rate = sf.read(str(espeak("I am the agent. I keep talking about the weather and the trains, all day long.",
                                     d / "agent.wav", voice="en-us", speed=170)), dtype="float32")
    user, rate_u = sf.read(str(espeak("Stop! Wait a moment, please listen to me now.", d / "user.wav",
                                      voice="en-gb", speed=150)), dtype="float32")
    return to_rate(agent, rate, 8000) * 0.9, to_rate(user, rate_u, RATE) * 0.6


async def simulate(speech, aec: bool, half_duplex: bool = False, seconds: float = 8.0, user_at: float | None = None,
                   room_gain: float = 0.5, transparent: bool = True):
    """Run the daemon's audio path in lock-step through the room; returns (daemon, backend)."""
    agent_8k, user_16k = speech
    backend = SpeakerBackend(agent_8k)
    cfg = DaemonConfig(audio=AudioConfig(backend="none"), mqtt=MqttConfig(enabled=False),
                       echo=EchoConfig(aec=aec, half_duplex=half_duplex, stream_delay_ms=30.0, warmup_seconds=3.0,
                                       transparent_without_echo=transparent),
                       session=SessionConfig())
    brain = LocalBrain(BrainConfig(), cfg.session, input_rate=RATE, realtime=False, backend=backend, codec=backend.codec)
    daemon = Daemon(cfg, brain=brain, audio=None)
    task = asyncio.create_task(brain.run())
    while brain.session is None:
        await asyncio.sleep(0)
    room = Room(gain=room_gain)
    rng = np.random.default_rng(1)
    user_start = int(user_at * RATE) if user_at is not None else None
    for i in range(int(seconds * 100)):
        played = daemon.speaker_pull(BLOCK)
        mic = room.process(played) + 0.0005 * rng.standard_normal(BLOCK).astype(np.float32)
        if user_start is not None:
            k = i * BLOCK - user_start
            if 0 <= k < len(user_16k):
                seg = user_16k[k:k + BLOCK]
                mic[:len(seg)] += seg
        await daemon.mic(mic)
        while brain.frames_out < brain.frames_in:  # lock-step: the model hears each frame before we go on
            await asyncio.sleep(0)
    brain.stop()
    await asyncio.wait_for(task, 10)
    return daemon, backend


async def test_aec_on_the_agent_does_not_interrupt_itself(speech):
    daemon, backend = await simulate(speech, aec=True, seconds=10.0)
    model = backend.sessions[0]
    assert model.frame >= 115  # ~10 s of frames ran
    assert daemon.cuts == 0, f"the agent cut itself off {daemon.cuts} times with AEC on"
    assert model.forced == 0
    stats = daemon.echo.stats()
    assert stats["reference_audible_s"] > 7  # it really was talking the whole time
    # The warm-up gate covered only the first ~3.5 s; the canceller alone kept the echo out after that.
    assert stats["gated_frames"] < 450 < stats["processed_frames"] - 450
    assert stats["transparent_frames"] == 0 and stats["echo_score"] > 0.5  # it never stepped aside for this echo


async def test_a_quiet_echo_keeps_the_canceller_on(speech):
    daemon, backend = await simulate(speech, aec=True, seconds=10.0, room_gain=0.05)  # 26 dB down
    stats = daemon.echo.stats()
    assert stats["transparent_frames"] == 0, stats
    assert daemon.cuts == 0


async def test_with_a_headset_the_canceller_steps_aside_and_the_user_still_barges_in(speech):
    daemon, backend = await simulate(speech, aec=True, seconds=9.0, user_at=6.0, room_gain=0.0)
    stats = daemon.echo.stats()
    # after the warm-up's 3 s and 1.5 s of measured speaker audio, well before the user speaks at 6 s
    assert stats["transparent_frames"] > 300, stats
    assert stats["echo_score"] < 0.2
    assert daemon.cuts >= 1


async def test_aec_off_the_agent_interrupts_itself(speech):
    daemon, backend = await simulate(speech, aec=False)
    assert daemon.cuts >= 1, "without AEC the echo should have triggered the barge-in (the test would prove nothing)"


async def test_aec_on_a_real_user_still_barges_in(speech):
    daemon, backend = await simulate(speech, aec=True, seconds=9.0, user_at=5.0)
    assert daemon.cuts >= 1


async def test_half_duplex_fallback_never_self_interrupts_and_ignores_the_user(speech):
    daemon, backend = await simulate(speech, aec=False, half_duplex=True, seconds=9.0, user_at=5.0)
    assert daemon.cuts == 0
