"""Fixtures for listen/: a fake codec and espeak-ng speech."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from tests.listen.fakes import FakeCodec


@pytest.fixture
def fake_codec() -> FakeCodec:
    return FakeCodec()


@pytest.fixture(scope="session")
def espeak_speech(tmp_path_factory) -> tuple[np.ndarray, int]:
    """About two seconds of espeak-ng speech: ((N,) float32, rate)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    subprocess.run(
        ["espeak-ng", "-w", str(path), "Hello there, this is a test of the voice activity detector."],
        check=True,
        capture_output=True,
        timeout=30,
    )
    x, rate = sf.read(path, dtype="float32")
    return (x if x.ndim == 1 else x.mean(axis=1)).astype(np.float32), rate
