"""The daemon's brain: the model in this process (:class:`LocalBrain`, a :class:`agent.session.Session`
on a real-time clock) or a ``duplex serve`` Realtime WebSocket (:class:`RemoteBrain`, the same
protocol the web page speaks, docs/realtime-events.md), reconnecting with backoff.

Both take microphone PCM at ``input_rate`` (``push_audio``) and call ``on_output(BrainOutput)`` for
every piece of agent output; both report their connection state through ``on_state`` and problems
through ``on_error``. Controls: ``set_sampling``, ``set_adapter``, ``cancel`` (stop speaking),
``restart``.
"""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from agent.config import SessionConfig
from agent.daemon.config import BrainConfig
from agent.daemon.threads import in_daemon_thread

log = logging.getLogger(__name__)


@dataclass
class BrainOutput:
    """Agent output: ``audio`` ``(n,)`` float32 at the brain's ``output_rate`` (may be empty),
    ``text_delta``, ``cut`` (barge-in: flush playback now), ``end_of_turn``, ``user_speech`` (the VAD
    heard the user this frame; None = unknown), ``mark`` (latency figures of the frame) and ``heard_delta``
    (a heard-text model's transcript of the user, see ``think/layout.py``)."""

    audio: np.ndarray
    text_delta: str = ""
    cut: bool = False
    end_of_turn: bool = False
    frame: int | None = None
    user_speech: bool | None = None
    mark: dict = field(default_factory=dict)
    heard_delta: str = ""


def validate_sampling(current: Any, changes: dict) -> Any:
    """A new SamplingConfig from ``current`` + ``changes``; ValueError naming the bad key."""
    from think.sampling import SamplingConfig

    if not isinstance(changes, dict):
        raise ValueError("sampling must be an object.")
    known = {f.name for f in dataclasses.fields(SamplingConfig)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise ValueError(f"unknown sampling key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
    try:  # SamplingConfig checks each value's type and range
        return SamplingConfig(**{**dataclasses.asdict(current), **changes})
    except ValueError as e:
        raise ValueError(f"sampling.{e}") from None


class _Backoff:
    def __init__(self, initial: float, maximum: float) -> None:
        self.initial, self.maximum, self.next = initial, maximum, initial

    def reset(self) -> None:
        self.next = self.initial

    def take(self) -> float:
        d = self.next
        self.next = min(self.maximum, self.next * 2)
        return d


class LocalBrain:
    """The model in this process.

    Args:
        config: brain settings (model directory, engine, threads, adapter).
        session_config: the conversation settings (policy, sampling, VAD).
        input_rate: the rate ``push_audio`` takes.
        realtime: run the session clock in real time (False: frames are processed as audio arrives,
            for lock-step simulations).
        backend / codec: a ready backend (tests inject scripted ones); None = load ``config.model``.
    """

    mode = "local"

    def __init__(self, config: BrainConfig, session_config: SessionConfig, input_rate: int = 16000,
                 realtime: bool = True, backend: Any = None, codec: Any = None) -> None:
        self.config = config
        self.session_config = session_config
        self.input_rate = input_rate
        self.realtime = realtime
        self.backend = backend
        self.codec = codec
        self.session = None
        self.adapter = config.adapter
        self.sampling = dataclasses.replace(session_config.sampling)
        self.connected = False
        self.frames_in = 0
        self.frames_out = 0
        self.restarts = 0
        self._restart = asyncio.Event()
        self._stop = False
        self._load_lock: asyncio.Lock | None = None
        self.on_output: Callable[[BrainOutput], Any] = lambda o: None
        self.on_state: Callable[[dict], Any] = lambda s: None
        self.on_error: Callable[[str, str], Any] = lambda c, m: None

    @property
    def output_rate(self) -> int:
        return self.codec.spec.sample_rate

    @property
    def frame_ms(self) -> float:
        return self.codec.spec.frame_ms

    def describe(self) -> dict:
        return {"mode": self.mode, "connected": self.connected, "adapter": self.adapter,
                "sampling": dataclasses.asdict(self.sampling), "restarts": self.restarts}

    async def load(self) -> None:
        """Load the model once (idempotent; concurrent callers wait for the same load)."""
        if self._load_lock is None:
            self._load_lock = asyncio.Lock()
        async with self._load_lock:
            await self._load()

    async def _load(self) -> None:
        if self.backend is None:
            from agent.models import codec_for_layout, resolve_model
            from think.transformers_backend import TransformersBackend

            def _load():
                path = resolve_model(self.config.model)
                backend = TransformersBackend.from_dir(path, context=self.session_config.context,
                                                       threads=self.config.threads, engine=self.config.engine,
                                                       adapters_dir=self.config.adapters_dir)
                return backend, codec_for_layout(backend.layout, self.config.codec_weights)

            # a daemon thread: a stop during a long load does not wait for it (asyncio.to_thread's executor would)
            self.backend, self.codec = await in_daemon_thread(_load, "duplex-load")
        elif self.codec is None:
            self.codec = self.backend.codec

    def _open(self):
        from agent.session import Session

        kwargs = {"adapter": self.adapter} if self.adapter else {}
        model = self.backend.open_session(self.sampling, self.session_config.system_prompt, **kwargs)
        return Session(model, self.codec, self.backend.tokenizer, self.session_config,
                       input_rate=self.input_rate, realtime=self.realtime)

    async def push_audio(self, pcm: np.ndarray) -> int:
        s = self.session
        if s is None or s.input_ended:
            return 0
        from streaming.queues import QueueClosed

        try:
            n = await s.push_audio(pcm)
        except QueueClosed:  # the session is being restarted; this audio goes nowhere
            return 0
        self.frames_in += n
        return n

    async def run(self) -> None:
        """Run sessions until ``stop``; a ``restart`` (or a model failure) opens a fresh one."""
        from streaming.clock import FrameClock

        await self.load()
        backoff = _Backoff(self.config.reconnect_initial_s, self.config.reconnect_max_s)
        while not self._stop:
            self._restart.clear()
            try:
                self.session = self._open()
            except Exception as e:  # a bad adapter, a broken checkpoint
                self.on_error("brain_failed", f"Cannot open a session: {e}")
                if self.adapter is not None and self.adapter != self.config.adapter:
                    self.adapter = self.config.adapter  # fall back to the configured adapter
                await asyncio.sleep(backoff.take())
                continue
            self.connected = True
            self.on_state(self.describe())
            session = self.session
            clock = FrameClock(self.frame_ms / 1000.0, realtime=self.realtime)
            try:
                async for out in session.run(clock, wait_for_audio=self.realtime):
                    self.frames_out += 1
                    m = out.mark
                    mark = {"frame": out.index, "step_ms": m.total_ms, "listen_ms": m.listen_ms,
                            "think_ms": m.think_ms, "speak_ms": m.speak_ms, "late_by_ms": m.late_by_ms,
                            "underrun": out.user_underrun}
                    r = self.on_output(BrainOutput(out.agent_audio, out.text_delta, out.cut, out.end_of_turn,
                                                   out.index, out.user.speech, mark, out.heard_delta))
                    if asyncio.iscoroutine(r):
                        await r
                    if self._stop or self._restart.is_set():
                        break  # the current frame is finished; stop here
                backoff.reset()
            except Exception as e:
                log.exception("local brain failed")
                self.on_error("brain_failed", f"The model failed: {e}; restarting the conversation.")
                await asyncio.sleep(backoff.take())
            finally:
                self.connected = False
                self.session = None
                await session.close()
            if not self._stop:
                self.restarts += 1
        self.on_state(self.describe())

    def restart(self) -> None:
        self._restart.set()
        s = self.session
        if s is not None and not s.input_ended:
            s.user_frames.close()  # wakes a session still waiting for its first frame

    def stop(self) -> None:
        self._stop = True
        self.restart()

    def set_sampling(self, changes: dict) -> None:
        self.sampling = validate_sampling(self.sampling, changes)
        s = self.session
        if s is not None and hasattr(s.model, "sampling"):
            s.model.sampling = self.sampling

    def set_adapter(self, name: str | None) -> None:
        """Switch adapter: the conversation restarts with it (adapters are merged per session)."""
        if name is not None:  # checked before the conversation is given up (AdapterError is a ValueError)
            from think.adapters import resolve_adapter

            resolve_adapter(getattr(self.backend, "adapters_dir", None) or self.config.adapters_dir, name)
        self.adapter = name
        self.restart()

    def cancel(self) -> None:
        """Stop speaking: the session cuts the agent at the next frame and holds it silent for 1 s."""
        s = self.session
        if s is None:
            return
        if hasattr(s, "hold_agent"):
            s.hold_agent(1.0)  # cut at the next frame, slots forced silent for 1 s
        else:
            s.policy.holding = True


class RemoteBrain:
    """A client of ``duplex serve`` (``/v1/realtime``), reconnecting with backoff.

    Audio goes up as ``input_audio_buffer.append`` (PCM16 at ``input_rate``), comes back as
    ``response.output_audio.delta`` at ``output_rate``; ``x_duplex.barge_in`` flushes playback;
    ``x_duplex.latency`` feeds the metrics. Audio pushed while disconnected is dropped (counted).
    """

    mode = "remote"

    def __init__(self, config: BrainConfig, session_config: SessionConfig, input_rate: int = 16000) -> None:
        self.config = config
        self.session_config = session_config
        self.input_rate = input_rate
        self.output_rate = input_rate
        self.adapter = config.adapter
        self.sampling = dataclasses.replace(session_config.sampling)
        self.connected = False
        self.connects = 0
        self.dropped_audio_chunks = 0
        self.bad_events = 0  # malformed server events skipped
        self.restarts = 0
        self.frames_out = 0
        self._ws = None
        self._stop = False
        self._reconnect = asyncio.Event()
        self._speech = False
        self.on_output: Callable[[BrainOutput], Any] = lambda o: None
        self.on_state: Callable[[dict], Any] = lambda s: None
        self.on_error: Callable[[str, str], Any] = lambda c, m: None

    def describe(self) -> dict:
        return {"mode": self.mode, "connected": self.connected, "url": self.config.url, "adapter": self.adapter,
                "sampling": dataclasses.asdict(self.sampling), "connects": self.connects,
                "dropped_audio_chunks": self.dropped_audio_chunks}

    def _url(self) -> str:
        url = self.config.url
        if self.config.remote_model:
            url += ("&" if "?" in url else "?") + f"model={self.config.remote_model}"
        return url

    def _session_update(self) -> dict:
        fmt = {"type": "audio/pcm", "rate": self.input_rate}
        x: dict = {"sampling": dataclasses.asdict(self.sampling), "events": {"frame": True, "latency": True}}
        if self.adapter is not None:
            x["adapter"] = self.adapter
        session: dict = {"type": "realtime", "audio": {"input": {"format": fmt}, "output": {"format": dict(fmt)}},
                         "x_duplex": x}
        if self.session_config.system_prompt:
            session["instructions"] = self.session_config.system_prompt
        return {"type": "session.update", "session": session}

    async def push_audio(self, pcm: np.ndarray) -> int:
        ws = self._ws
        if ws is None or not self.connected:
            self.dropped_audio_chunks += 1
            return 0
        data = (np.clip(np.asarray(pcm, np.float32), -1, 1) * 32767).astype("<i2").tobytes()
        if not data:
            return 0
        try:
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(data).decode()}))
        except Exception:
            self.dropped_audio_chunks += 1
        return 0

    async def _send(self, event: dict) -> None:
        ws = self._ws
        if ws is not None and self.connected:
            try:
                await ws.send(json.dumps(event))
            except Exception:
                pass

    async def run(self) -> None:
        from websockets.asyncio.client import connect

        backoff = _Backoff(self.config.reconnect_initial_s, self.config.reconnect_max_s)
        headers = {"Authorization": f"Bearer {self.config.token}"} if self.config.token else None
        while not self._stop:
            self._reconnect.clear()
            try:
                async with connect(self._url(), additional_headers=headers, max_size=8 << 20,
                                   open_timeout=10, ping_interval=10, ping_timeout=10) as ws:
                    self._ws = ws
                    await ws.send(json.dumps(self._session_update()))
                    self.connected = True
                    self.connects += 1
                    backoff.reset()
                    log.info("connected to %s", self.config.url)
                    self.on_state(self.describe())
                    reader = asyncio.create_task(self._read(ws))
                    waiter = asyncio.create_task(self._reconnect.wait())
                    done, _ = await asyncio.wait({reader, waiter}, return_when=asyncio.FIRST_COMPLETED)
                    for t in (reader, waiter):
                        t.cancel()
                    if reader in done and reader.exception() is not None:
                        raise reader.exception()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("remote brain %s: %s", self.config.url, e)
                if self.connected or self.connects == 0:
                    self.on_error("brain_disconnected", f"The brain server {self.config.url} is unreachable "
                                  f"({type(e).__name__}: {e}); retrying.")
            finally:
                was = self.connected
                self.connected = False
                self._ws = None
                if was:
                    self.on_state(self.describe())
            if not self._stop:
                await asyncio.sleep(backoff.take())
        self.on_state(self.describe())

    async def _read(self, ws) -> None:
        async for raw in ws:
            try:
                ev = json.loads(raw)
            except (TypeError, ValueError):
                continue
            try:
                await self._handle(ev)
            except (TypeError, ValueError, AttributeError) as e:
                # One malformed event (bad base64, an odd byte count, a non-object field) used to end the
                # connection, and with it the conversation: skip it.
                self.bad_events += 1
                log.warning("remote brain: skipped a malformed %s event (%s: %s)",
                            str(ev.get("type"))[:64] if isinstance(ev, dict) else "non-object",
                            type(e).__name__, str(e)[:200])

    async def _handle(self, ev: Any) -> None:
        t = ev.get("type") if isinstance(ev, dict) else None
        if t == "response.output_audio.delta":
            pcm = np.frombuffer(base64.b64decode(ev.get("delta", "")), dtype="<i2").astype(np.float32) / 32768.0
            self.frames_out += 1
            await self._emit(BrainOutput(pcm))
        elif t == "response.output_audio_transcript.delta":
            await self._emit(BrainOutput(np.zeros(0, np.float32), text_delta=str(ev.get("delta", ""))))
        elif t == "x_duplex.barge_in":
            await self._emit(BrainOutput(np.zeros(0, np.float32), cut=True, frame=ev.get("frame")))
        elif t == "x_duplex.frame":
            self._speech = bool(ev.get("user_speech"))
            if ev.get("end_of_turn"):
                await self._emit(BrainOutput(np.zeros(0, np.float32), end_of_turn=True, frame=ev.get("frame")))
        elif t == "x_duplex.latency":
            marks = dict(ev.get("marks") or {})
            mark = {"frame": ev.get("frame"), "step_ms": ev.get("step_ms"), **{k: v for k, v in marks.items()
                                                                               if isinstance(v, (int, float))}}
            await self._emit(BrainOutput(np.zeros(0, np.float32), frame=ev.get("frame"),
                                         user_speech=self._speech, mark=mark))
        elif t == "error":
            err = ev.get("error") or {}
            if not isinstance(err, dict):
                err = {"message": err}
            code = str(err.get("code") or "error")[:64]
            self.on_error(f"brain_{code}", str(err.get("message", ""))[:500])

    async def _emit(self, out: BrainOutput) -> None:
        r = self.on_output(out)
        if asyncio.iscoroutine(r):
            await r

    def restart(self) -> None:
        self.restarts += 1
        self._reconnect.set()

    def stop(self) -> None:
        self._stop = True
        self._reconnect.set()

    def set_sampling(self, changes: dict) -> None:
        self.sampling = validate_sampling(self.sampling, changes)
        asyncio.get_running_loop().create_task(self._send(
            {"type": "session.update", "session": {"x_duplex": {"sampling": dataclasses.asdict(self.sampling)}}}))

    def set_adapter(self, name: str | None) -> None:
        """The server takes an adapter only before a conversation starts: reconnect with it."""
        self.adapter = name
        self.restart()

    def cancel(self) -> None:
        asyncio.get_running_loop().create_task(self._send({"type": "response.cancel"}))


def make_brain(config: BrainConfig, session_config: SessionConfig, input_rate: int, **kwargs):
    if config.mode == "remote":
        return RemoteBrain(config, session_config, input_rate)
    return LocalBrain(config, session_config, input_rate, **kwargs)
