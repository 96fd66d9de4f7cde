"""A session: one conversation running listen -> think -> speak on the frame clock.

Audio arrives whenever the source has it (``push_audio``); the clock ticks once per codec frame; on
every tick the session takes one user frame (or silence, if the microphone is late), asks the policy,
lets the model produce the agent's slot, decodes it, and yields a :class:`FrameOutput`. Surfaces
(``duplex chat``, the Realtime server, the daemon) consume those outputs; the session knows no wire
format.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import AsyncIterator

import numpy as np

from agent.config import SessionConfig
from agent.heard import HeardWriter, load_heard_recognizer
from agent.latency import FrameMark, LatencyRecorder
from agent.policy import Decision, TurnPolicy
from listen.listener import Listener, UserFrame
from listen.turn_detector import load_session_detector
from speak.vocoder import Vocoder
from streaming.clock import FrameClock, Tick
from streaming.codecs.base import Codec
from streaming.frame import AudioFrame
from streaming.queues import BoundedQueue, DropPolicy, QueueClosed
from think.backend import BackendSession
from think.tokenizer import TextStream


@dataclass(frozen=True)
class FrameOutput:
    """What one frame produced.

    Attributes:
        index: frame number.
        user: the user's frame as the model heard it (before the echo guard).
        agent_audio: the agent's PCM for this frame at the codec rate, ``(frame_samples,)`` (silence when
            cut; a look-ahead codec's audio arrives ``lookahead_frames`` frames late, after silence).
        text_id: the text slot id; ``text_delta`` the printable text it added ('' for PAD).
        heard_delta: with a heard-text layout, the text the model wrote down of the *user* in this frame
            (its running transcript; never spoken, never part of the agent's text).
        end_of_turn: the model wrote end-of-turn in the text slot.
        cut: a barge-in cut the agent in this frame (flush queued agent audio now).
        forced: the agent's slot was forced silent by the policy.
        user_underrun: no user audio was ready in time (real time only); silence was used.
        mark: the frame's latency marks.
    """

    index: int
    user: UserFrame
    agent_audio: np.ndarray
    text_id: int
    text_delta: str
    end_of_turn: bool
    cut: bool
    forced: bool
    user_underrun: bool
    mark: FrameMark
    heard_delta: str = ""


class Session:
    """One conversation. Create it, ``push_audio`` from a source, and iterate ``run(clock)``."""

    def __init__(self, model: BackendSession, codec: Codec, tokenizer, config: SessionConfig | None = None,
                 input_rate: int = 16000, realtime: bool = False, keep_frame_marks: int | None = None) -> None:
        self.config = config or SessionConfig()
        self.model = model
        self.codec = codec
        self.layout = model.layout
        self.realtime = realtime
        self.listener = Listener(codec, input_rate, vad_aggressiveness=self.config.vad_aggressiveness,
                                 resample_quality=self.config.resample_quality)
        self.vocoder = Vocoder(codec)
        self.frame_ms = codec.spec.frame_ms
        self.policy = TurnPolicy(self.config.policy, self.frame_ms)
        # Offline runs report every frame; a live session (server, daemon) may run for days: keep the
        # recent marks only unless told otherwise.
        keep = keep_frame_marks if keep_frame_marks is not None else (0 if not realtime else 256)
        self.latency = LatencyRecorder(self.frame_ms, keep_frames=keep)
        self.text = TextStream(tokenizer)
        self.heard = TextStream(tokenizer)  # the user's transcript, from heard ids (heard-text layouts)
        # Real time: a bounded queue that drops the oldest frames if the model falls behind, so latency
        # stays bounded. Offline: the source waits instead (nothing is dropped).
        policy = DropPolicy.DROP_OLDEST if realtime else DropPolicy.BLOCK
        maxsize = self.config.max_queued_frames if realtime else 64
        self.user_frames: BoundedQueue[UserFrame] = BoundedQueue(maxsize, policy, name="user_frames")
        self.input_ended = False
        self.closed = False
        self.user_underruns = 0
        self._frame_samples = codec.spec.frame_samples
        # A look-ahead decoder (snac) returns its audio lookahead_frames late: start the agent's track
        # with that much silence, so every frame's agent_audio is exactly one frame long.
        self._agent_rest = np.zeros(codec.spec.lookahead_frames * self._frame_samples, np.float32)
        # Agent frames held back while a barge-in is not yet confirmed (policy.pause_before_cut_ms), oldest first
        self._held_audio: deque[np.ndarray] = deque()
        self._silence_codes = np.asarray(self.layout.user_silence_codes(), dtype=np.int64)
        self._full_silence_codes = np.asarray(codec.silence_codes(), dtype=np.int64)
        recognizer = load_heard_recognizer(self.config.heard, self.layout)
        self.heard_writer = None if recognizer is None else HeardWriter(
            recognizer, self.layout, tokenizer, codec.spec.sample_rate, self.config.heard.max_lag_frames,
            self.config.heard.during_agent_turn, self.config.heard.decoder)
        model.listener_heard = self.heard_writer is not None
        # loaded even with the wait off: a Realtime client may turn turn detection on mid-session
        self.turn_detector = load_session_detector(self.config.turn_detector, codec.spec.sample_rate)
        self._unfinished_below = 0.0
        if self.turn_detector is not None:
            self._unfinished_below = (self.config.policy.unfinished_below
                                      or float(self.turn_detector.model.meta.get("threshold", 0.5)))

    # ---- input side ----------------------------------------------------------------------------
    async def push_audio(self, pcm: np.ndarray) -> int:
        """Feed microphone PCM (any rate the session was made for, any channels/dtype). Returns the
        number of complete frames it produced."""
        if self.closed:
            raise RuntimeError("This session is closed.")
        if self.input_ended:
            raise RuntimeError("Input already ended for this session.")
        t0 = time.perf_counter()
        frames = self.listener.push(pcm)
        listen_ms = (time.perf_counter() - t0) * 1000.0 / max(1, len(frames))
        for f in frames:
            f.audio.meta["listen_ms"] = listen_ms
            await self.user_frames.put(f)
        return len(frames)

    async def end_input(self) -> None:
        """The source is done: flush the last partial frame and let ``run`` finish."""
        if self.input_ended or self.closed:
            return
        for f in self.listener.flush():
            await self.user_frames.put(f)
        self.input_ended = True
        self.user_frames.close()

    def _silent_user_frame(self, index: int) -> UserFrame:
        audio = AudioFrame(np.zeros(self._frame_samples, np.float32), self.codec.spec.sample_rate,
                           timestamp=index * self.frame_ms / 1000.0, index=index)
        return UserFrame(index=index, audio=audio, codes=self._full_silence_codes, speech=False, voiced_fraction=0.0)

    async def _next_user_frame(self, index: int) -> tuple[UserFrame | None, bool]:
        """This tick's user frame, (None, False) at the end of input; (silence, True) on a real-time underrun."""
        if self.realtime:
            try:
                return self.user_frames.get_nowait(), False
            except QueueClosed:
                return None, False
            except Exception:  # empty: the microphone is late; the clock does not wait for it
                if self.input_ended:
                    return None, False
                self.user_underruns += 1
                return self._silent_user_frame(index), True
        try:
            return await self.user_frames.get(), False
        except QueueClosed:
            return None, False

    # ---- the loop ------------------------------------------------------------------------------
    async def run(self, clock: FrameClock, max_frames: int | None = None, tail_frames: int = 0,
                  wait_for_audio: bool = False, tail_quiet_frames: int | None = None) -> AsyncIterator[FrameOutput]:
        """Yield one :class:`FrameOutput` per tick until the input ends (plus up to ``tail_frames`` of
        silence so the agent can finish) or ``max_frames`` ticks. With ``tail_quiet_frames`` the tail ends
        early once the agent has been quiet (no audible audio, no text) for that many frames of it. In
        real time with ``wait_for_audio`` the clock starts when the first user frame arrives. A look-ahead
        codec's tail is at least its ``lookahead_frames``: the agent audio of the last input frame comes out
        that many frames later, and would otherwise stay in the decoder."""
        min_tail = self.codec.spec.lookahead_frames
        tail_left, tail_done = max(tail_frames, min_tail), 0
        quiet = 0  # agent-quiet frames in a row, counted in the tail only
        first: UserFrame | None = None
        if self.realtime and wait_for_audio:
            # A live source starts a little after the session: start the clock on its first frame
            # (and keep one frame of margin) instead of filling the gap with underrun silence.
            try:
                first = await self.user_frames.get()
            except QueueClosed:
                return
        async for tick in clock.ticks(max_frames=max_frames):
            if first is not None:
                user, underrun, first = first, False, None
            else:
                user, underrun = await self._next_user_frame(tick.index)
            in_tail = user is None
            if in_tail:
                if tail_left <= 0 or (tail_quiet_frames is not None and quiet >= tail_quiet_frames
                                      and tail_done >= min_tail):
                    break
                tail_left, tail_done = tail_left - 1, tail_done + 1
                user = self._silent_user_frame(tick.index)
            out = await self.process_frame(user, tick, underrun)
            if in_tail:
                talking = not out.forced and (out.mark.agent_rms >= self.policy.config.agent_talking_rms or out.text_delta)
                quiet = 0 if talking else quiet + 1
            yield out
        clock.stop()

    async def process_frame(self, user: UserFrame, tick: Tick, underrun: bool = False) -> FrameOutput:
        """Run one frame through policy, model and decoder."""
        t0 = time.perf_counter()
        unfinished = False
        if self.turn_detector is not None:
            # it hears every frame (its state carries the utterance); the policy asks it only in the user's silence
            finished = await self.turn_detector.push_async(user.audio.samples)  # batched with other sessions
            unfinished = finished is not None and finished < self._unfinished_below
        decision = self.policy.before_step(user.speech, user_unfinished=unfinished)
        codes = self._silence_codes if decision.mute_user else user.codes
        given = None
        if self.heard_writer is not None:
            # The recogniser hears what the model hears (nothing while the echo guard mutes the user).
            muted = decision.mute_user
            self.heard_writer.hear(np.zeros_like(user.audio.samples) if muted else user.audio.samples, tick.index,
                                   speech=user.speech and not muted)
            given = None if decision.force_silence else self.heard_writer.next_id(tick.index)
        on_pad = self.config.heard.placement == "pad"  # the piece only where the model draws PAD, or first
        result = await self.model.step(codes, force_silence=decision.force_silence,
                                       text_id=None if on_pad else given, heard_id=given if on_pad else None,
                                       speak_now=decision.speak_now)
        if self.heard_writer is not None:
            self.heard_writer.observe(result.text_id, decision.force_silence)
        t1 = time.perf_counter()
        agent = self._one_frame(self.vocoder.decode(result.agent_codes[None, :]))
        if decision.force_silence:
            # The decoder still ran (its state stays continuous); the listener hears nothing.
            agent = np.zeros_like(agent)
        agent = self._play_or_hold(agent, decision)
        t2 = time.perf_counter()
        rms = _rms(agent)
        self.policy.after_step(rms, wrote_word=result.text_id < self.layout.text_vocab_size)
        delta, heard, eot = "", "", False
        if result.text_id == self.layout.eot_id:
            eot = True
        elif result.text_id < self.layout.text_vocab_size:
            delta = self.text.push(result.text_id)
        elif self.layout.is_heard_id(result.text_id):
            heard = self.heard.push(result.text_id - self.layout.heard_offset)
        listen_ms = float(user.audio.meta.get("listen_ms", 0.0))
        mark = FrameMark(
            frame=tick.index, listen_ms=round(listen_ms, 3), think_ms=round((t1 - t0) * 1000.0, 3),
            speak_ms=round((t2 - t1) * 1000.0, 3), total_ms=round(listen_ms + (t2 - t0) * 1000.0, 3),
            late_by_ms=round(tick.late_by * 1000.0, 3), forced=result.forced, rebased=result.rebased,
            text_id=result.text_id, agent_rms=round(rms, 5), user_speech=user.speech, speak_now=decision.speak_now,
            wait=decision.wait,
        )
        self.latency.add(mark)
        if decision.cut:
            self.latency.add_barge_in(tick.index)
        return FrameOutput(index=tick.index, user=user, agent_audio=agent.astype(np.float32), text_id=result.text_id,
                           text_delta=delta, end_of_turn=eot, cut=decision.cut, forced=decision.force_silence,
                           user_underrun=underrun, mark=mark, heard_delta=heard)

    def _play_or_hold(self, agent: np.ndarray, decision: Decision) -> np.ndarray:
        """The frame the listener gets. While a barge-in pauses the agent, its frames are held back and silence
        plays; after a backchannel the held frames play in order, and the delay this adds shrinks by one frame
        at each quiet frame at the head (the agent catches up in its next gap). A cut drops them."""
        if decision.cut or decision.force_silence:
            self._held_audio.clear()
            return agent
        if decision.pause_audio:
            self._held_audio.append(agent)
            return np.zeros_like(agent)
        if not self._held_audio:
            return agent
        self._held_audio.append(agent)
        out = self._held_audio.popleft()
        while self._held_audio and _rms(out) < self.policy.config.agent_talking_rms:
            out = self._held_audio.popleft()
        return out

    def _one_frame(self, decoded: np.ndarray) -> np.ndarray:
        """The next ``frame_samples`` of the agent's track (``decoded`` joins what is held back)."""
        fs = self._frame_samples
        buf = np.concatenate([self._agent_rest, decoded]) if len(self._agent_rest) else decoded
        out, self._agent_rest = buf[:fs], buf[fs:]
        if len(out) < fs:  # a decoder that fell short: silence rather than a shorter frame
            out = np.concatenate([out, np.zeros(fs - len(out), np.float32)])
        return out

    def hold_agent(self, seconds: float = 1.0) -> None:
        """Cut the agent at the next frame and keep it silent for ``seconds`` (e.g. a client's
        ``response.cancel``); its slots are forced to PAD + silence, so the model knows it stopped."""
        self.policy.request_hold(max(1, round(seconds * 1000.0 / self.frame_ms)))

    async def close(self) -> None:
        self.closed = True
        self.user_frames.close()
        await self.model.close()


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0
