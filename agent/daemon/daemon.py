"""``duplex daemon``: composes audio I/O, echo cancellation, the brain and the MQTT bridge.

::

    mic (PortAudio, any rate) --resample--> echo canceller --(mute?)--> brain.push_audio
    brain outputs --resample--> PlayoutBuffer --pull (volume)--> speaker (PortAudio, any rate)
                                                  \\--> echo canceller reference (what is played)
    MQTT control --> queue --> Daemon.apply(command) --> ack / error
    state (retained), transcript, metrics, events --> MQTT

SIGTERM/SIGINT: the brain finishes the frame it is on, the audio streams close, the retained state
becomes ``offline`` (reason ``shutdown``), and the process exits 0.
"""
from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from typing import Any

import numpy as np

from agent.daemon.brain import BrainOutput, make_brain
from agent.daemon.config import DaemonConfig, to_jsonable
from agent.daemon.echo import EchoCanceller
from agent.daemon.mqtt import MqttBridge
from listen.resample import StreamingResampler
from speak.playout import PlayoutBuffer

log = logging.getLogger("agent.daemon")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, and any ``extra`` fields."""

    _skip = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        obj = {"ts": round(record.created, 3), "level": record.levelname, "logger": record.name,
               "msg": record.getMessage()}
        for k, v in record.__dict__.items():
            if k not in self._skip and not k.startswith("_"):
                obj[k] = v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj)


def setup_logging(fmt: str = "json", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, str(level).upper(), logging.INFO))


def _percentile(xs: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(xs, np.float64), q)), 3) if xs else 0.0


class Daemon:
    """One microphone, one speaker, one brain, one MQTT connection.

    Args:
        config: the resolved DaemonConfig.
        brain: a ready brain (tests inject scripted ones); None = from ``config.brain``.
        audio: "auto" = from ``config.audio.backend``; None = no audio I/O (feed ``mic()`` yourself).
    """

    def __init__(self, config: DaemonConfig, brain: Any = None, audio: Any = "auto") -> None:
        self.config = config
        self.rate = config.audio.process_rate
        self.playout = PlayoutBuffer(self.rate, max_seconds=config.audio.playout_max_seconds)
        self.echo = EchoCanceller(config.echo, self.rate)
        self.brain = brain or make_brain(config.brain, config.session, self.rate)
        self.brain.on_output = self._on_output
        self.brain.on_state = self._on_brain_state
        self.brain.on_error = self._on_brain_error
        self.mqtt = MqttBridge(config.mqtt, config.device_id, on_audio=self._on_mqtt_audio) if config.mqtt.enabled else None
        self.muted = False
        self.volume = 1.0
        self.speaking = False
        self.suppress = False  # stop_speaking: drop agent audio until it falls quiet
        self.cuts = 0
        self.frames = 0
        self.user_speech_frames = 0  # frames in which the brain's VAD heard the user
        self.played_samples = 0  # samples handed to the speaker
        self.transcript: list[str] = []
        self.started_at = time.time()
        self._out_resampler: StreamingResampler | None = None
        self._step_ms: list[float] = []
        self._late = 0
        self._underruns = 0
        self._mic_seconds = 0.0
        self._stop = asyncio.Event()
        self._remote_mic_resamplers: dict[int, StreamingResampler] = {}
        if audio == "auto":
            audio = None
            if config.audio.backend == "sounddevice":
                from agent.daemon.audio_io import SoundDeviceAudio

                audio = SoundDeviceAudio(config.audio, self.rate, self.speaker_pull, self.mic, self._on_audio_state)
        self.audio = audio

    # ---- audio path ---------------------------------------------------------------------------------
    async def mic(self, pcm: np.ndarray) -> None:
        """Microphone samples at the process rate (from PortAudio, MQTT or a test)."""
        self._mic_seconds += len(pcm) / self.rate
        clean = self.echo.process(pcm)
        if not len(clean):
            return
        if self.muted:
            clean = np.zeros_like(clean)
        await self.brain.push_audio(clean)

    def speaker_pull(self, n: int) -> np.ndarray:
        """``n`` samples for the speaker (called from the audio thread); also the echo reference."""
        x = self.playout.pull(n)
        self.played_samples += n
        if self.volume != 1.0:
            x = np.clip(x * self.volume, -1.0, 1.0).astype(np.float32)
        self.echo.add_reference(x)
        return x

    async def _on_mqtt_audio(self, pcm: np.ndarray, rate: int) -> None:
        if self.config.audio.backend != "mqtt":
            return
        r = self._remote_mic_resamplers.get(rate)
        if r is None:
            # One remote microphone, one rate: a client cycling through rates must not grow this without bound.
            self._remote_mic_resamplers.clear()
            r = self._remote_mic_resamplers[rate] = StreamingResampler(rate, self.rate, quality="LQ")
        y = r.process(pcm)
        if len(y):
            await self.mic(y)

    async def _mqtt_speaker(self) -> None:
        """audio.backend=mqtt: a paced 20 ms speaker that publishes PCM16 on ``audio/out``."""
        step = self.rate // 50
        t0 = time.monotonic()
        i = 0
        while not self._stop.is_set():
            i += 1
            await asyncio.sleep(max(0.0, t0 + i * 0.02 - time.monotonic()))
            x = self.speaker_pull(step)
            if self.mqtt is not None and self.config.mqtt.audio_out and np.any(x):
                # Clipped first: a sample over full scale wrapped around to the opposite sign (a loud click).
                self.mqtt.publish_stream("audio/out", (np.clip(x, -1.0, 1.0) * 32767).astype("<i2").tobytes())

    # ---- brain outputs ----------------------------------------------------------------------------------
    def _on_output(self, out: BrainOutput) -> None:
        if out.cut:
            dropped = self.playout.flush()
            self.cuts += 1
            self.suppress = False
            self._event({"type": "barge_in", "frame": out.frame, "dropped_ms": round(1000 * dropped / self.rate)})
        if out.user_speech:
            self.user_speech_frames += 1
        if len(out.audio):
            self.frames += 1
            rms = float(np.sqrt(np.mean(np.square(out.audio, dtype=np.float64))))
            talking = rms >= self.config.session.policy.agent_talking_rms
            if self.suppress and (not talking or out.user_speech):
                self.suppress = False
            audio = np.zeros_like(out.audio) if self.suppress else out.audio
            if self._out_resampler is None:
                self._out_resampler = StreamingResampler(self.brain.output_rate, self.rate, quality="LQ")
            self.playout.push(self._out_resampler.process(audio))
            if talking != self.speaking and not self.suppress:
                self.speaking = talking
                self._event({"type": "speaking" if talking else "quiet", "frame": out.frame})
        if out.text_delta:
            self.transcript.append(out.text_delta)
            if self.mqtt is not None and not self.suppress:
                self.mqtt.publish_stream("transcript", {"role": "agent", "delta": out.text_delta, "frame": out.frame,
                                                        "ts": round(time.time(), 3)})
        if out.heard_delta and self.mqtt is not None:  # what a heard-text model wrote down of the user
            self.mqtt.publish_stream("transcript", {"role": "user", "delta": out.heard_delta, "frame": out.frame,
                                                    "ts": round(time.time(), 3)})
        if out.end_of_turn and self.mqtt is not None:
            self.mqtt.publish_stream("transcript", {"role": "agent", "delta": "", "end_of_turn": True,
                                                    "frame": out.frame, "ts": round(time.time(), 3)})
        if out.mark:
            step = out.mark.get("step_ms")
            if isinstance(step, (int, float)):
                self._step_ms.append(float(step))
            if (out.mark.get("late_by_ms") or 0) > 0:
                self._late += 1
            if out.mark.get("underrun"):
                self._underruns += 1

    def _event(self, obj: dict) -> None:
        obj["ts"] = round(time.time(), 3)
        log.info("event %s", obj["type"], extra={"event": obj["type"]})
        if self.mqtt is not None:
            self.mqtt.publish_stream("events", obj)

    def _on_brain_state(self, s: dict) -> None:
        self.publish_state()

    def _on_brain_error(self, code: str, message: str) -> None:
        if self.mqtt is not None:
            self.mqtt.error(code, message)
        else:
            log.warning("%s: %s", code, message)

    def _on_audio_state(self, s: dict) -> None:
        if s.get("state") == "running":
            # Audio queued while the speaker was gone is stale: start from now, not seconds behind.
            self.playout.flush()
        if s.get("state") in ("lost", "retrying") and self.mqtt is not None:
            self.mqtt.error("audio_device", f"audio {s['state']}: {s.get('last_error')}")
        self.publish_state()

    # ---- state and metrics ----------------------------------------------------------------------------
    def state(self) -> dict:
        a = self.audio.describe() if hasattr(self.audio, "describe") else {"state": self.config.audio.backend}
        a.update({"playout_underruns": self.playout.underruns, "playout_overruns_samples": self.playout.overrun_samples})
        brain = self.brain.describe()
        online = "online" if brain.get("connected") else "degraded"
        if a.get("state") in ("lost", "retrying"):
            online = "degraded"
        return {"state": online, "muted": self.muted, "volume": self.volume, "brain": brain, "audio": a,
                "echo": self.echo.stats(), "uptime_s": round(time.time() - self.started_at, 1),
                "mqtt_connects": self.mqtt.connects if self.mqtt else 0,
                "mqtt_dropped_acks": self.mqtt.dropped_reliable_messages if self.mqtt else 0, "barge_ins": self.cuts}

    def publish_state(self) -> None:
        if self.mqtt is not None:
            self.mqtt.set_state(**self.state())

    def metrics(self) -> dict:
        steps, self._step_ms = self._step_ms, []
        m = {"frames": len(steps), "step_ms": {"p50": _percentile(steps, 50), "p95": _percentile(steps, 95),
                                               "max": round(max(steps), 3) if steps else 0.0},
             "late_frames": self._late, "user_underruns": self._underruns, "barge_ins": self.cuts,
             "playout_buffer_ms": round(1000 * self.playout.buffered_seconds, 1),
             "playout_underruns": self.playout.underruns, "ts": round(time.time(), 3)}
        if hasattr(self.audio, "describe"):
            d = self.audio.describe()
            m.update({k: d[k] for k in ("input_overflows", "output_underflows", "mic_blocks_dropped", "latency_ms")})
        return m

    async def _metrics_loop(self) -> None:
        last_state = time.monotonic()
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=self.config.mqtt.metrics_interval_s)
            except asyncio.TimeoutError:
                pass
            if self.mqtt is not None:
                self.mqtt.publish_stream("metrics", self.metrics())
                si = self.config.mqtt.state_interval_s
                if si and time.monotonic() - last_state >= si:
                    last_state = time.monotonic()
                    self.publish_state()

    # ---- control ------------------------------------------------------------------------------------------
    async def apply(self, cmd: dict) -> dict:
        """Carry out one validated control command; returns extra ack fields."""
        name = cmd["command"]
        extra: dict = {}
        if name == "mute":
            self.muted = True
        elif name == "unmute":
            self.muted = False
        elif name == "volume":
            self.volume = float(cmd["volume"])
        elif name == "stop_speaking":
            dropped = self.playout.flush()
            self.suppress = True
            self.brain.cancel()
            extra["dropped_ms"] = round(1000 * dropped / self.rate)
        elif name == "sampling":
            self.brain.set_sampling(cmd["sampling"])
        elif name == "adapter":
            self.suppress = False
            self.brain.set_adapter(cmd["adapter"])
        elif name == "restart":
            self.playout.flush()
            self.suppress = False
            self.brain.restart()
        elif name == "state":
            extra["state"] = self.state()
        self.publish_state()
        return extra

    async def _control_loop(self) -> None:
        q = self.mqtt.control_queue
        while True:
            cmd = await q.get()
            try:
                extra = await self.apply(cmd)
                self.mqtt.ack(cmd, True, **extra)
                log.info("control %s", cmd["command"], extra={"command": cmd["command"]})
            except (ValueError, TypeError, KeyError) as e:
                self.mqtt.error("command_failed", f"{cmd.get('command')}: {e}", topic=self.mqtt.topic("control"),
                                request_id=cmd.get("request_id"))
                self.mqtt.ack(cmd, False, error=str(e))
            except Exception as e:
                log.exception("control %s failed", cmd.get("command"))
                self.mqtt.error("internal_error", f"{cmd.get('command')} failed: {type(e).__name__}",
                                topic=self.mqtt.topic("control"), request_id=cmd.get("request_id"))
                self.mqtt.ack(cmd, False, error=f"internal error ({type(e).__name__})")  # every command is acked

    # ---- lifetime ----------------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.stop)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
                pass
        log.info("starting", extra={"config": json.dumps(to_jsonable(self.config))})
        if self.config.audio.backend == "mqtt" and not self.config.mqtt.audio_in:
            log.warning("audio.backend is mqtt but mqtt.audio_in is off: the agent hears nothing "
                        "(--set mqtt.audio_in=true subscribes to audio/in)")
        tasks: dict[str, asyncio.Task] = {}
        if self.mqtt is not None:
            self.mqtt.set_state(state="starting", config={"device_id": self.config.device_id,
                                                          "brain": self.config.brain.mode,
                                                          "aec": self.config.echo.aec,
                                                          "half_duplex": self.config.echo.half_duplex})
            tasks["mqtt"] = asyncio.create_task(self.mqtt.run())
            tasks["control"] = asyncio.create_task(self._control_loop())
        tasks["brain"] = asyncio.create_task(self.brain.run())
        load_error: BaseException | None = None
        if hasattr(self.brain, "load"):
            load = asyncio.create_task(self.brain.load())
            # brain.run() loads too and fails with the same error: read both, so asyncio does not log a
            # "Task exception was never retrieved" traceback after our one-line error.
            load.add_done_callback(lambda t: t.cancelled() or t.exception())
            # SIGTERM while the model loads stops now (was: only once the load was done, past systemd's
            # TimeoutStopSec for a large model, so the daemon was killed without its offline state).
            stopped = asyncio.create_task(self._stop.wait())
            await asyncio.wait({load, tasks["brain"], stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not load.done():
                tasks["load"] = load
            for t in (load, tasks["brain"]):
                if load_error is None and t.done() and not t.cancelled() and t.exception() is not None:
                    load_error = t.exception()
            if load_error is not None:
                self._stop.set()
                log.error("cannot load the model: %s", load_error)
                self._on_brain_error("brain_failed", f"Cannot load the model: {load_error}")
        if self.audio is not None and not self._stop.is_set():
            tasks["audio"] = asyncio.create_task(self.audio.run())
        if self.config.audio.backend == "mqtt":
            tasks["speaker"] = asyncio.create_task(self._mqtt_speaker())
        tasks["metrics"] = asyncio.create_task(self._metrics_loop())
        self.publish_state()
        rc = 0
        try:
            stop_wait = asyncio.create_task(self._stop.wait())
            watch = [stop_wait, tasks["brain"]]
            done, _ = await asyncio.wait(watch, timeout=self.config.max_seconds, return_when=asyncio.FIRST_COMPLETED)
            if load_error is not None:
                rc = 2  # a setting to fix (a missing or broken model directory), like the other commands
            elif tasks["brain"] in done and tasks["brain"].exception() is not None:
                log.error("the brain stopped: %s", tasks["brain"].exception())
                rc = 1
            stop_wait.cancel()
        finally:
            await self._shutdown(tasks)
        return rc

    async def _shutdown(self, tasks: dict[str, asyncio.Task]) -> None:
        log.info("stopping")
        self._stop.set()
        self.brain.stop()  # finishes the frame it is on
        b = tasks.get("brain")
        load = tasks.get("load")
        if load is not None and not load.done():  # stopped while the model loads: nothing to finish
            load.cancel()
            if b is not None:
                b.cancel()
        elif b is not None:
            try:
                await asyncio.wait_for(asyncio.shield(b), timeout=5.0)
            except (asyncio.TimeoutError, Exception):
                b.cancel()
        if self.audio is not None:
            self.audio.stop()
            a = tasks.get("audio")
            if a is not None:
                try:
                    await asyncio.wait_for(a, timeout=5.0)
                except (asyncio.TimeoutError, Exception):
                    a.cancel()
        for name in ("metrics", "speaker", "control"):
            t = tasks.get(name)
            if t is not None:
                t.cancel()
        if self.mqtt is not None:
            self.mqtt.set_state(**{**self.state(), "state": "offline", "reason": "shutdown"})
            self.mqtt.stop()
            m = tasks.get("mqtt")
            try:
                await asyncio.wait_for(m, timeout=5.0)
            except (asyncio.TimeoutError, Exception):
                m.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        log.info("stopped")


def run_daemon(config: DaemonConfig) -> int:
    setup_logging(config.log_format, config.log_level)
    return asyncio.run(Daemon(config).run())
