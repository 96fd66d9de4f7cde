"""Real PortAudio through a private PipeWire server: ``sounddevice`` records the monitor of the
``micfeed`` null sink (the test plays an espeak-ng question into it with ``paplay``) and plays into
the ``vspk`` null sink (recorded from its monitor with ``parecord``). The device runs at its own
rate (44.1 kHz) and the daemon resamples at the edge. Then the sound server goes away and comes
back: the daemon reports the loss, retries with backoff and resumes."""
from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("aiomqtt")
sd = pytest.importorskip("sounddevice", exc_type=OSError) if shutil.which("pactl") else pytest.skip(
    "pulseaudio-utils/pipewire not installed", allow_module_level=True)

from agent.daemon.brain import LocalBrain  # noqa: E402
from agent.daemon.config import AudioConfig, BrainConfig, DaemonConfig, EchoConfig, MqttConfig  # noqa: E402
from agent.daemon.daemon import Daemon  # noqa: E402

pytestmark = pytest.mark.timeout(150)


def _reinit_portaudio() -> None:
    sd._terminate()
    sd._initialize()


def make_config(port: int) -> DaemonConfig:
    return DaemonConfig(device_id="pa1", audio=AudioConfig(backend="sounddevice", input_device="pipewire",
                                                           output_device="pipewire", block_ms=20,
                                                           retry_initial_s=0.3, retry_max_s=1.0, stall_timeout_s=1.0),
                        echo=EchoConfig(aec=True, warmup_seconds=0.5),
                        mqtt=MqttConfig(port=port, reconnect_initial_s=0.1, reconnect_max_s=0.5, metrics_interval_s=0.5))


class Recorder:
    """parecord from the speaker sink's monitor into a WAV."""

    def __init__(self, pw, path) -> None:
        self.path = path
        self.proc = subprocess.Popen(["parecord", "-d", "vspk.monitor", "--rate=16000", "--channels=1",
                                      "--format=s16le", "--file-format=wav", str(path)], env=pw.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> np.ndarray:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        try:
            data, _ = sf.read(str(self.path), dtype="float32")
        except Exception:
            return np.zeros(0, np.float32)
        return data


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


async def _play(pw, wav) -> None:
    await asyncio.to_thread(subprocess.run, ["paplay", "-d", "micfeed", str(wav)], env=pw.env, check=True, timeout=30)


async def test_question_into_the_virtual_mic_gets_audio_on_the_virtual_speaker_and_a_transcript(
        pipewire, mosquitto, watcher_factory, nano_model, question_wav, tmp_path):
    _reinit_portaudio()
    cfg = make_config(mosquitto.port)
    brain = LocalBrain(BrainConfig(model=str(nano_model), threads=1), cfg.session, input_rate=16000)
    daemon = Daemon(cfg, brain=brain)
    async with watcher_factory(mosquitto.port, "duplex/pa1/#") as w:
        task = asyncio.create_task(daemon.run())
        try:
            st = await w.wait_for("state", lambda m: m.get("audio", {}).get("state") == "running", timeout=40)
            assert st["audio"]["input"]["rate"] == 44100  # the device's own rate, resampled at the edge
            rec = Recorder(pipewire, tmp_path / "speaker.wav")
            await asyncio.sleep(0.5)
            n_tr = len(w.on("transcript"))
            speech_before = daemon.user_speech_frames
            t0 = time.monotonic()
            await _play(pipewire, question_wav)
            played_s = time.monotonic() - t0
            await asyncio.sleep(2.0)
            heard = rec.stop()
            after = w.on("transcript")[n_tr:]
            m = await w.wait_for("metrics", lambda m: m.get("frames", 0) > 0, start=len(w.on("metrics")) - 1)
            print(f"question {played_s:.2f} s; VAD speech frames {daemon.user_speech_frames - speech_before}; "
                  f"speaker recorded {len(heard) / 16000:.2f} s at RMS {_rms(heard):.4f}; {len(after)} transcript "
                  f"deltas; metrics {json.dumps(m)}")
            assert daemon.user_speech_frames - speech_before >= 5  # the brain heard the question through PortAudio
            assert len(heard) > 16000 and _rms(heard) > 0.005  # agent audio reached the virtual speaker
            assert len(after) >= 3 and all(t["role"] == "agent" for t in after)
            assert daemon.audio.input_overflows <= 5
        finally:
            daemon.stop()
            await asyncio.wait_for(task, 20)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)


async def test_sound_server_goes_away_and_comes_back(pipewire, mosquitto, watcher_factory, nano_model, tmp_path):
    """``duplex daemon`` as a real process (a PortAudio stream whose sound server died cannot be closed
    and keeps a native thread busy; a process keeps that out of the test runner)."""
    import sys

    argv = [sys.executable, "-m", "agent.cli", "daemon", "--input-device", "pipewire", "--output-device", "pipewire",
            "--model", str(nano_model), "--mqtt-port", str(mosquitto.port), "--device-id", "pa2",
            "--set", "audio.retry_initial_s=0.3", "--set", "audio.retry_max_s=1.0", "--set", "audio.stall_timeout_s=1.0",
            "--set", "brain.threads=1", "--set", "mqtt.metrics_interval_s=0.5"]
    proc = subprocess.Popen(argv, env=dict(pipewire.env, PYTHONUNBUFFERED="1"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        async with watcher_factory(mosquitto.port, "duplex/pa2/#") as w:
            await w.wait_for("state", lambda m: m.get("audio", {}).get("state") == "running", timeout=60)
            await asyncio.sleep(1.0)
            t0 = time.monotonic()
            await asyncio.to_thread(pipewire.stop_server)
            lost = await w.wait_for("state", lambda m: m.get("audio", {}).get("state") in ("lost", "retrying"),
                                    timeout=20)
            detect_s = time.monotonic() - t0
            assert lost["state"] == "degraded"
            await w.wait_for("error", lambda m: m.get("code") == "audio_device", timeout=10)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(pipewire.start_server)
            t1 = time.monotonic()
            n = len(w.on("state"))
            back = await w.wait_for("state", lambda m: m.get("audio", {}).get("state") == "running", start=n,
                                    timeout=30)
            recover_s = time.monotonic() - t1
            assert back["audio"]["reopens"] >= 1 and back["state"] == "online"
            await asyncio.sleep(0.5)
            rec = Recorder(pipewire, tmp_path / "after.wav")
            await asyncio.sleep(2.5)
            heard = rec.stop()
            m = await w.wait_for("metrics", lambda m: m.get("frames", 0) > 0, start=len(w.on("metrics")), timeout=5)
            print(f"loss reported {detect_s:.2f} s after the sound server died; running again {recover_s:.2f} s "
                  f"after it was back; recorded {len(heard) / 16000:.2f} s at RMS {_rms(heard):.4f}; metrics {m}",
                  flush=True)
            assert _rms(heard) > 0.005  # the agent is heard on the virtual speaker again
            proc.send_signal(signal.SIGTERM)
            rc = await asyncio.to_thread(proc.wait, 30)
            assert rc == 0
            st = await w.wait_for("state", lambda m: m.get("state") == "offline")
            assert st["reason"] == "shutdown"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
