"""The prosody front end: pitch and loudness relative to the speaker, streamed with explicit state."""
from __future__ import annotations

import numpy as np
import pytest

from listen.prosody import causal_prosody

RATE, WIN, HOP = 8000, 320, 80


def _voice(f0_start: float, f0_end: float, seconds: float = 1.6, level: float = 0.1) -> np.ndarray:
    """A harmonic tone gliding from ``f0_start`` to ``f0_end`` over its last 0.4 s (flat before)."""
    n = int(seconds * RATE)
    glide = np.clip((np.arange(n) / RATE - (seconds - 0.4)) / 0.4, 0.0, 1.0)
    f0 = f0_start * (f0_end / f0_start) ** glide
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    return (level * (np.sin(phase) + 0.5 * np.sin(2 * phase) + 0.25 * np.sin(3 * phase))).astype(np.float32)


def _features(x: np.ndarray, chunk: int | None = None) -> np.ndarray:
    import torch

    pcm = torch.from_numpy(x)[None]
    if chunk is None:
        return causal_prosody(pcm, None, RATE, WIN, HOP)[0][0].numpy()
    out, state = [], None
    for i in range(0, pcm.shape[1], chunk):
        f, state = causal_prosody(pcm[:, i:i + chunk], state, RATE, WIN, HOP)
        out.append(f[0].numpy())
    return np.concatenate(out)


@pytest.mark.parametrize("f0", [95.0, 210.0])
def test_a_rise_reads_above_the_speaker_and_a_fall_below_for_a_low_and_a_high_voice(f0):
    rise = _features(_voice(f0, f0 * 2 ** (4 / 12)))
    fall = _features(_voice(f0, f0 * 2 ** (-4 / 12)))
    assert rise[-3:, 2].min() == 1 and fall[-3:, 2].min() == 1  # voiced
    assert rise[-3:, 0].mean() * 12 > 2.0 and fall[-3:, 0].mean() * 12 < -2.0
    assert abs(rise[100, 0]) * 12 < 1.0  # the flat part sits near the speaker's own mean by then


def test_the_features_do_not_depend_on_the_level():
    x = _voice(140.0, 120.0)
    loud, quiet = _features(x), _features(0.1 * x)
    np.testing.assert_allclose(loud[100:], quiet[100:], atol=0.02)  # once the speaker's mean outweighs the prior


def test_streamed_chunks_give_what_one_call_gives():
    x = np.concatenate([_voice(120.0, 150.0), np.zeros(1600, np.float32), _voice(120.0, 100.0)])
    np.testing.assert_allclose(_features(x, chunk=640), _features(x), atol=1e-4)


def test_noise_and_silence_are_not_voiced():
    rng = np.random.default_rng(0)
    x = np.concatenate([np.zeros(4000, np.float32), (0.05 * rng.standard_normal(8000)).astype(np.float32)])
    f = _features(x)
    assert f[:, 2].max() == 0 and np.all(f[:, 0] == 0)
