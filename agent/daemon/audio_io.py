"""Microphone and speaker through PortAudio (sounddevice), at whatever rate the devices offer.

- Device choice: ``None`` (system default), an index, or a case-insensitive name substring
  (:func:`find_device`); the error lists what exists.
- Edge resampling: the microphone is resampled once (stateful soxr) from the device rate to the
  process rate; the speaker callback pulls process-rate samples from the daemon (``pull(n)``) and
  resamples them to the device rate. The echo canceller's reference is what ``pull`` returned, i.e.
  exactly what the speaker is given.
- Small blocks (``block_ms``) and PortAudio's "low" latency.
- A device that disappears (an open that fails, a stream that errors or whose callbacks stop for
  ``stall_timeout_s``) is closed, PortAudio is re-initialised (to see hot-plugged devices), and the
  open is retried with exponential backoff; every change is reported through ``on_state``.
- Counters: input overflows, output underflows (PortAudio's flags), mic blocks dropped because the
  daemon was behind, reopen count.

``sounddevice`` is imported only when a stream is opened (``import agent.daemon.audio_io`` works
without PortAudio).
"""
from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from typing import Any, Callable

import numpy as np

from agent.daemon.config import AudioConfig
from agent.daemon.threads import in_daemon_thread
from listen.resample import StreamingResampler

log = logging.getLogger(__name__)


class AudioDeviceError(RuntimeError):
    pass


def _sd():
    try:
        import sounddevice as sd
    except OSError as e:  # PortAudio missing
        raise AudioDeviceError(f"PortAudio is not installed ({e}); on Debian/Ubuntu: apt-get install libportaudio2.") from e
    except ImportError as e:
        raise AudioDeviceError("sounddevice is not installed: pip install 'duplex-agent[daemon]'.") from e
    return sd


def list_devices() -> list[dict]:
    sd = _sd()
    return [dict(d, index=i) for i, d in enumerate(sd.query_devices())]


def find_device(spec: str | int | None, kind: str) -> int | None:
    """Resolve a device by index or name substring for ``kind`` = "input" or "output"; None = default."""
    sd = _sd()
    key = "max_input_channels" if kind == "input" else "max_output_channels"
    devices = sd.query_devices()
    if spec is None or spec == "" or spec == "default":
        idx = sd.default.device[0 if kind == "input" else 1]
        if idx is None or idx < 0:
            names = [d["name"] for d in devices if d[key] > 0]
            raise AudioDeviceError(f"There is no default {kind} device; pick one of: {', '.join(names) or 'none'}.")
        return int(idx)
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit()):
        idx = int(spec)
        if not (0 <= idx < len(devices)) or devices[idx][key] < 1:
            raise AudioDeviceError(f"Device {idx} is not an {kind} device.")
        return idx
    matches = [i for i, d in enumerate(devices) if d[key] > 0 and str(spec).lower() in d["name"].lower()]
    exact = [i for i in matches if devices[i]["name"].lower() == str(spec).lower()]
    if exact:
        return exact[0]
    if not matches:
        names = [d["name"] for d in devices if d[key] > 0]
        raise AudioDeviceError(f"No {kind} device matches {spec!r}; {kind} devices: {', '.join(names) or 'none'}.")
    return matches[0]


def pick_rate(device: int, kind: str, wanted: int | None) -> int:
    """``wanted`` if the device takes it, else the device's default rate."""
    sd = _sd()
    check = sd.check_input_settings if kind == "input" else sd.check_output_settings
    if wanted:
        try:
            check(device=device, samplerate=wanted, channels=1, dtype="float32")
            return int(wanted)
        except Exception as e:
            raise AudioDeviceError(f"The {kind} device does not take {wanted} Hz ({e}); leave audio.{kind}_rate "
                                   f"empty to use its default rate.") from e
    return int(sd.query_devices(device)["default_samplerate"])


class SoundDeviceAudio:
    """Opens and keeps open one input and one output stream.

    Args:
        config: devices, rates, block size, retry settings.
        process_rate: the rate of ``pull`` and of the audio handed to ``on_mic``.
        pull: ``pull(n) -> (n,) float32`` at the process rate, called from the output callback thread.
        on_mic: called in the event loop with ``(pcm float32 at process_rate)``.
        on_state: called with the I/O state dict on every change.
    """

    def __init__(self, config: AudioConfig, process_rate: int, pull: Callable[[int], np.ndarray],
                 on_mic: Callable[[np.ndarray], Any], on_state: Callable[[dict], Any] = lambda s: None) -> None:
        self.config = config
        self.process_rate = process_rate
        self.pull = pull
        self.on_mic = on_mic
        self.on_state = on_state
        self.state = "closed"
        self.input_overflows = 0
        self.output_underflows = 0
        self.mic_blocks_dropped = 0
        self.reopens = 0
        self.failures = 0
        self.last_error: str | None = None
        self.input_info: dict = {}
        self.output_info: dict = {}
        self.latency_ms = 0.0
        self._streams: list = []
        self._abandoned: list = []
        self._last_in = self._last_out = 0.0
        self._stream_error = threading.Event()
        self._queue: asyncio.Queue | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._out_fifo = np.zeros(0, np.float32)
        self._out_resampler: StreamingResampler | None = None

    def describe(self) -> dict:
        return {"state": self.state, "input": self.input_info, "output": self.output_info,
                "latency_ms": round(self.latency_ms, 1), "input_overflows": self.input_overflows,
                "output_underflows": self.output_underflows, "mic_blocks_dropped": self.mic_blocks_dropped,
                "reopens": self.reopens, "last_error": self.last_error}

    def _set_state(self, state: str, error: str | None = None) -> None:
        changed = state != self.state or error != self.last_error
        self.state = state
        if error is not None:
            self.last_error = error
        if changed:
            (log.warning if state in ("lost", "retrying") else log.info)("audio %s%s", state, f": {error}" if error else "")
            self.on_state(self.describe())

    # ---- callbacks (PortAudio threads) ----------------------------------------------------------------
    def _in_cb(self, indata, frames, time_info, status) -> None:
        self._last_in = time.monotonic()
        if status and status.input_overflow:
            self.input_overflows += 1
        x = indata[:, 0].copy() if indata.shape[1] == 1 else indata.mean(axis=1).astype(np.float32)
        try:
            self._loop.call_soon_threadsafe(self._put, x)
        except RuntimeError:  # loop closed
            pass

    def _put(self, x: np.ndarray) -> None:
        try:
            self._queue.put_nowait(x)
        except asyncio.QueueFull:
            self.mic_blocks_dropped += 1

    def _out_cb(self, outdata, frames, time_info, status) -> None:
        self._last_out = time.monotonic()
        if status and status.output_underflow:
            self.output_underflows += 1
        try:
            if self._out_resampler is None:
                y = self.pull(frames)
            else:
                fifo = self._out_fifo
                while len(fifo) < frames:
                    need = max(self.process_rate // 100, int(math.ceil((frames - len(fifo)) * self.process_rate
                                                                       / self.output_info["rate"])))
                    fifo = np.concatenate([fifo, self._out_resampler.process(self.pull(need))])
                y, self._out_fifo = fifo[:frames], fifo[frames:]
            outdata[:, 0] = y
            if outdata.shape[1] > 1:
                outdata[:, 1:] = y[:, None]
        except Exception:  # never raise into PortAudio
            outdata.fill(0)
            log.exception("speaker callback failed")

    def _finished(self) -> None:
        if not self._stop.is_set():
            self._stream_error.set()

    # ---- open / close (blocking; run in a thread) ------------------------------------------------------
    def _open(self) -> None:
        sd = _sd()
        c = self.config
        in_dev = find_device(c.input_device, "input")
        out_dev = find_device(c.output_device, "output")
        in_rate = pick_rate(in_dev, "input", c.input_rate)
        out_rate = pick_rate(out_dev, "output", c.output_rate)
        self._in_resampler = StreamingResampler(in_rate, self.process_rate, quality="LQ")
        self._out_resampler = None if out_rate == self.process_rate else StreamingResampler(self.process_rate, out_rate, quality="LQ")
        self._out_fifo = np.zeros(0, np.float32)
        latency: Any = c.latency
        ins = sd.InputStream(device=in_dev, samplerate=in_rate, channels=1, dtype="float32",
                             blocksize=int(round(in_rate * c.block_ms / 1000)), latency=latency,
                             callback=self._in_cb, finished_callback=self._finished)
        try:
            outs = sd.OutputStream(device=out_dev, samplerate=out_rate, channels=1, dtype="float32",
                                   blocksize=int(round(out_rate * c.block_ms / 1000)), latency=latency,
                                   callback=self._out_cb, finished_callback=self._finished)
        except Exception:
            ins.close()
            raise
        self._stream_error.clear()
        self._last_in = self._last_out = time.monotonic()
        self._streams = [ins, outs]
        outs.start()
        ins.start()
        devs = sd.query_devices()
        self.input_info = {"device": devs[in_dev]["name"], "index": in_dev, "rate": in_rate}
        self.output_info = {"device": devs[out_dev]["name"], "index": out_dev, "rate": out_rate}
        self.latency_ms = (ins.latency + outs.latency) * 1000.0 + c.block_ms

    def _close(self) -> None:
        streams, self._streams = self._streams, []
        for s in streams:
            try:
                s.abort(ignore_errors=True)
                s.close(ignore_errors=True)
            except Exception:
                pass

    async def _blocking(self, fn: Callable[[], Any], timeout: float) -> bool:
        """Run a PortAudio call in its own daemon thread; False if it did not return in time.

        A call into a vanished sound server can block forever (ALSA's pipewire plugin does); such a
        thread is abandoned (it must not hold up the event loop or its shutdown, as the default
        executor would)."""
        fut = in_daemon_thread(fn, "duplex-portaudio")
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def _close_streams(self) -> bool:
        streams = list(self._streams)
        ok = await self._blocking(self._close, timeout=3.0)
        if not ok:
            self._abandoned.extend(streams)  # keep references: never closed from a finaliser
            self._streams = []
            # sounddevice's exit handler (Pa_Terminate) would block on them forever: let the process exit.
            import atexit

            sd = _sd()
            if hasattr(sd, "_exit_handler"):
                atexit.unregister(sd._exit_handler)
            log.warning("closing the audio streams hung; abandoned them")
        return ok

    @staticmethod
    def _reinit() -> None:
        """Re-scan devices (PortAudio only sees hot-plugged devices after re-initialising)."""
        sd = _sd()
        try:
            sd._terminate()
        except Exception:
            pass
        try:
            sd._initialize()
        except Exception:
            pass

    # ---- the manager ---------------------------------------------------------------------------------
    async def run(self) -> None:
        """Keep the streams open until ``stop``; feeds ``on_mic``."""
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue(maxsize=max(8, int(2000 / self.config.block_ms)))  # ~2 s
        consumer = asyncio.create_task(self._consume())
        delay = self.config.retry_initial_s
        clean = True  # the last close returned (PortAudio may be re-initialised)
        first = True
        try:
            while not self._stop.is_set():
                try:
                    if not first and clean:
                        await self._blocking(self._reinit, timeout=5.0)
                    first = False
                    if not await self._blocking(self._open, timeout=10.0):
                        raise AudioDeviceError("opening the audio device did not return within 10 s")
                except Exception as e:
                    self.failures += 1
                    self._set_state("retrying", f"{type(e).__name__}: {e}")
                    clean = await self._close_streams()
                    try:
                        await asyncio.wait_for(self._stop.wait(), timeout=delay)
                    except asyncio.TimeoutError:
                        pass
                    delay = min(self.config.retry_max_s, delay * 2)
                    continue
                if self.failures:
                    self.reopens += 1
                self._set_state("running", None)
                delay = self.config.retry_initial_s
                reason = await self._watch()
                if reason is None:
                    break
                self.failures += 1
                self._set_state("lost", reason)
                clean = await self._close_streams()
        finally:
            consumer.cancel()
            await self._close_streams()
            self._set_state("closed")

    async def _watch(self) -> str | None:
        """Wait while the streams run; the reason they failed, or None on stop."""
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=0.2)
                return None
            except asyncio.TimeoutError:
                pass
            now = time.monotonic()
            if self._stream_error.is_set():
                return "the stream stopped (device error)"
            stale = now - min(self._last_in, self._last_out)
            if stale > self.config.stall_timeout_s:
                return f"no audio callback for {stale:.1f} s (device gone?)"
        return None

    async def _consume(self) -> None:
        while True:
            x = await self._queue.get()
            y = self._in_resampler.process(x)
            if len(y):
                r = self.on_mic(y)
                if asyncio.iscoroutine(r):
                    await r

    def stop(self) -> None:
        self._stop.set()
