"""Real parts for the daemon tests: a Mosquitto broker on a free loopback port (restartable on the
same port), an MQTT watcher that records everything under a prefix (and reconnects after a broker
restart), and a private PipeWire sound server with two null sinks (``vspk``: the speaker, whose
monitor we record; ``micfeed``: played into by the test, its monitor is the default microphone)."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


class Mosquitto:
    """``mosquitto -c conf`` on 127.0.0.1:port, in the foreground of a child process we own.

    Runs as the current user (``user <me>`` in the config: as root, mosquitto would otherwise switch
    to the ``mosquitto`` user and fail to write its files). Optional password file."""

    def __init__(self, workdir: Path, users: dict[str, str] | None = None) -> None:
        if shutil.which("mosquitto") is None:
            pytest.skip("mosquitto is not installed (apt-get install mosquitto mosquitto-clients)")
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        lines = [f"listener {self.port} 127.0.0.1", "persistence false", "log_dest stderr",
                 "log_type error", "log_type warning", "log_type notice",
                 f"user {os.environ.get('USER') or ('root' if os.geteuid() == 0 else 'nobody')}"]
        if os.geteuid() != 0:
            lines.pop()
        if users:
            pw = self.dir / "passwd"
            pw.write_text("")
            for u, p in users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(pw), u, p], check=True, capture_output=True)
            pw.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines.append("allow_anonymous true")
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None
        self.log = open(self.dir / "mosquitto.log", "ab")

    def start(self) -> "Mosquitto":
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=self.log, stderr=self.log)
        _wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self, down_seconds: float = 0.5) -> None:
        self.stop()
        time.sleep(down_seconds)
        self.start()

    def close(self) -> None:
        self.stop()
        self.log.close()


@pytest.fixture
def mosquitto(tmp_path):
    m = Mosquitto(tmp_path / "mosquitto").start()
    yield m
    m.close()


class MqttWatcher:
    """Records every message under ``topic`` (``prefix/#``); reconnects after broker restarts."""

    def __init__(self, port: int, topic: str, username: str | None = None, password: str | None = None) -> None:
        self.port, self.topic, self.username, self.password = port, topic, username, password
        self.messages: list[tuple[str, bytes, bool]] = []
        self.connects = 0
        self._client = None
        self._task: asyncio.Task | None = None
        self._ready = asyncio.Event()

    async def __aenter__(self) -> "MqttWatcher":
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), 10)
        return self

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        import aiomqtt

        while True:
            try:
                async with aiomqtt.Client("127.0.0.1", self.port, username=self.username, password=self.password,
                                          keepalive=5, timeout=5) as c:
                    await c.subscribe(self.topic, qos=1)
                    self._client = c
                    self.connects += 1
                    self._ready.set()
                    async for m in c.messages:
                        self.messages.append((str(m.topic), bytes(m.payload or b""), bool(m.retain)))
            except aiomqtt.MqttError:
                self._client = None
                await asyncio.sleep(0.2)

    async def publish(self, topic: str, payload, qos: int = 1, retries: int = 50, retain: bool = False) -> None:
        for _ in range(retries):
            c = self._client
            if c is not None:
                try:
                    await c.publish(topic, payload, qos=qos, retain=retain)
                    return
                except Exception:
                    pass
            await asyncio.sleep(0.1)
        raise RuntimeError(f"could not publish to {topic}")

    def on(self, suffix: str) -> list[dict]:
        out = []
        for t, p, _ in self.messages:
            if t.endswith("/" + suffix):
                try:
                    out.append(json.loads(p))
                except ValueError:
                    out.append({"_raw": p})
        return out

    async def wait_for(self, suffix: str, pred=lambda m: True, timeout: float = 10.0, start: int = 0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            found = [m for m in self.on(suffix)[start:] if pred(m)]
            if found:
                return found[-1]
            if time.monotonic() > deadline:
                raise AssertionError(f"no {suffix} message matching within {timeout} s; last: {self.on(suffix)[-3:]}")
            await asyncio.sleep(0.05)


@pytest.fixture
def watcher_factory():
    return MqttWatcher


# ---- PipeWire ------------------------------------------------------------------------------------------

class PipeWire:
    """pipewire + wireplumber + pipewire-pulse with a private XDG_RUNTIME_DIR and session bus, and two
    16 kHz mono null sinks: ``vspk`` (the daemon's speaker) and ``micfeed`` (its monitor is the
    default source, i.e. the daemon's microphone)."""

    def __init__(self) -> None:
        for tool in ("pipewire", "wireplumber", "pipewire-pulse", "pactl", "dbus-daemon"):
            if shutil.which(tool) is None:
                pytest.skip(f"{tool} is not installed (apt-get install pipewire pipewire-bin pipewire-alsa "
                            f"pipewire-pulse wireplumber dbus pulseaudio-utils)")
        self.runtime = Path(tempfile.mkdtemp(prefix="pw-"))
        self.runtime.chmod(0o700)
        self.env = dict(os.environ, XDG_RUNTIME_DIR=str(self.runtime),
                        DBUS_SESSION_BUS_ADDRESS=f"unix:path={self.runtime}/bus",
                        PIPEWIRE_RUNTIME_DIR=str(self.runtime), PULSE_RUNTIME_PATH=str(self.runtime / "pulse"))
        # Made here, 0700 like the server makes it: otherwise the first `pactl info` probe (a libpulse client)
        # can create it first and pipewire-pulse then refuses to start ("mkdir ... pulse failed: File exists").
        (self.runtime / "pulse").mkdir(mode=0o700)
        self.procs: dict[str, subprocess.Popen] = {}
        self.log = open(self.runtime / "pw.log", "ab")

    def _spawn(self, name: str, argv: list[str]) -> None:
        self.procs[name] = subprocess.Popen(argv, env=self.env, stdout=self.log, stderr=self.log,
                                            start_new_session=True)

    def pactl(self, *args: str, check: bool = True) -> str:
        r = subprocess.run(["pactl", *args], env=self.env, capture_output=True, text=True, timeout=10)
        if check and r.returncode != 0:
            raise RuntimeError(f"pactl {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def start(self) -> "PipeWire":
        self._spawn("dbus", ["dbus-daemon", "--session", f"--address=unix:path={self.runtime}/bus", "--nofork",
                             "--nopidfile"])
        time.sleep(0.3)
        self.start_server()
        return self

    def start_server(self) -> None:
        self._spawn("pipewire", ["pipewire"])
        time.sleep(0.8)
        self._spawn("wireplumber", ["wireplumber"])
        self._spawn("pipewire-pulse", ["pipewire-pulse"])
        deadline, respawned = time.monotonic() + 15, False
        while True:
            try:
                self.pactl("info")
                break
            except Exception:
                if self.procs["pipewire-pulse"].poll() is not None and not respawned:
                    respawned = True  # it lost a start-up race with pipewire: once more, now that pipewire is up
                    self._spawn("pipewire-pulse", ["pipewire-pulse"])
                if time.monotonic() > deadline:
                    raise RuntimeError("pipewire-pulse did not come up; see " + str(self.runtime / "pw.log")) from None
                time.sleep(0.2)
        time.sleep(1.0)  # wireplumber settles
        for sink in ("vspk", "micfeed"):
            self.pactl("load-module", "module-null-sink", f"sink_name={sink}", "media.class=Audio/Sink",
                       "rate=16000", "channels=1")
        self.pactl("set-default-sink", "vspk")
        self.pactl("set-default-source", "micfeed.monitor")

    def stop_server(self) -> None:
        for name in ("pipewire-pulse", "wireplumber", "pipewire"):
            self._kill(name)

    def _kill(self, name: str) -> None:
        p = self.procs.pop(name, None)
        if p is not None and p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)

    def close(self) -> None:
        self.stop_server()
        self._kill("dbus")
        self.log.close()
        shutil.rmtree(self.runtime, ignore_errors=True)

    def apply_env(self, monkeypatch) -> None:
        for k in ("XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS", "PIPEWIRE_RUNTIME_DIR", "PULSE_RUNTIME_PATH"):
            monkeypatch.setenv(k, self.env[k])


@pytest.fixture
def pipewire(monkeypatch):
    pw = PipeWire().start()
    pw.apply_env(monkeypatch)
    yield pw
    pw.close()
