"""Fixtures for agent/: a random "nano" checkpoint (built once per run), espeak-ng speech, and a
helper that runs the ``duplex`` CLI in-process and captures what it prints."""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from agent.cli import main
from agent.models import init_model


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """A test that forgot ``--model`` must not build a model in the user's real cache."""
    monkeypatch.setenv("DUPLEX_CACHE", str(tmp_path_factory.getbasetemp() / "duplex-cache"))


@pytest.fixture(scope="session")
def nano_model(tmp_path_factory) -> Path:
    """A random-weight "nano" checkpoint (codec2, 80 ms frames at 8 kHz). Read-only: copy it to edit."""
    return init_model(tmp_path_factory.mktemp("models") / "nano", preset="nano", codec="codec2", seed=0)


def espeak(path: Path, text: str) -> Path:
    """Synthesize ``text`` with espeak-ng into the WAV ``path`` (skips the test without espeak-ng)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True, timeout=60)
    return path


@pytest.fixture(scope="session")
def question_wav(tmp_path_factory) -> Path:
    """A spoken question, as espeak-ng writes it (22050 Hz mono PCM16, about 2.5 s)."""
    return espeak(tmp_path_factory.mktemp("speech") / "question.wav", "Hello there. What is the weather like today?")


@dataclass
class CliResult:
    rc: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("duplex: error:")]


@pytest.fixture
def run_cli(capsys):
    """``run_cli("chat", "--in", ...) -> CliResult``: ``agent.cli.main`` in-process, output captured."""

    def run(*argv: str | Path) -> CliResult:
        capsys.readouterr()  # drop anything printed before
        rc = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return CliResult(rc, captured.out, captured.err)

    return run


def read_stereo(path: Path) -> tuple[np.ndarray, int]:
    """The output WAV as ``((N, 2) float32, rate)``."""
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return data, rate


def best_correlation(a: np.ndarray, b: np.ndarray, max_lag: int = 40) -> tuple[float, int]:
    """Highest normalised correlation of ``a`` and ``b`` over lags ``-max_lag..max_lag`` -> (corr, lag)."""
    n = min(len(a), len(b)) - 2 * max_lag
    assert n > 0, "signals too short to correlate"
    ref = b[max_lag:max_lag + n].astype(np.float64)
    best = (-1.0, 0)
    for lag in range(-max_lag, max_lag + 1):
        seg = a[max_lag + lag:max_lag + lag + n].astype(np.float64)
        denom = np.linalg.norm(seg) * np.linalg.norm(ref)
        c = float(seg @ ref / denom) if denom > 0 else 0.0
        if c > best[0]:
            best = (c, lag)
    return best
