"""Shared fixtures: tiny random models built on the fly, espeak-ng speech synthesized on the fly."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from streaming.codecs.base import CodecSpec


def espeak(text: str, path: Path, voice: str = "en-us", speed: int = 160) -> Path:
    """Synthesize ``text`` to a WAV with espeak-ng (22.05 kHz mono)."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is required for the audio fixtures (apt-get install espeak-ng)")
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text], check=True)
    return path


@pytest.fixture(scope="session")
def nano_model_dir(tmp_path_factory) -> Path:
    """A random 'nano' checkpoint with the default codec2 layout, built once per test run."""
    from agent.models import init_model

    return init_model(tmp_path_factory.mktemp("nano") / "model", preset="nano", codec="codec2")


@pytest.fixture(scope="session")
def small_spec() -> CodecSpec:
    """A made-up two-codebook codec spec for layout/backend tests that need no real codec."""
    return CodecSpec(name="fake", sample_rate=8000, frame_samples=640, codebook_sizes=(64, 32))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
