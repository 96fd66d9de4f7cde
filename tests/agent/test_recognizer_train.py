"""The recogniser's training-time feature perturbation (``agent/recognizer_train.py``)."""
from __future__ import annotations

import numpy as np
import pytest

from agent.recognizer_train import RecognizerTrainConfig, perturb

N_MELS, STACK = 8, 4


def _turn(steps: int = 50) -> np.ndarray:
    """Features ``(steps, STACK*N_MELS)``: a ramp in time, a peak in mel band 3."""
    hops = np.zeros((steps * STACK, N_MELS), np.float32)
    hops[:, 3] = 5.0
    hops[:, 0] = np.arange(steps * STACK)
    return hops.reshape(steps, STACK * N_MELS).astype(np.float16)


def test_stretch_changes_the_tempo_within_its_bounds_and_keeps_whole_steps():
    rng = np.random.default_rng(0)
    lengths = {len(perturb(_turn(), N_MELS, 0.1, 0, rng)) for _ in range(40)}
    assert min(lengths) >= 44 and max(lengths) <= 56 and len(lengths) > 3
    out = perturb(_turn(), N_MELS, 0.1, 0, rng)
    hops = out.astype(np.float32).reshape(-1, N_MELS)
    assert out.dtype == np.float16 and np.all(np.diff(hops[:, 0]) > 0)  # time still runs forward, interpolated
    assert hops[0, 0] == 0 and hops[-1, 0] == pytest.approx(199, abs=0.5)  # first and last hop kept


def test_mel_shift_moves_the_bands_and_zero_settings_change_nothing():
    rng = np.random.default_rng(1)
    peaks = set()
    for _ in range(30):
        hops = perturb(_turn(), N_MELS, 0.0, 2, rng).astype(np.float32).reshape(-1, N_MELS)
        peaks.add(int(np.argmax(hops[0])))  # hop 0: the ramp band is 0 there
    assert peaks == {1, 2, 3, 4, 5}
    assert np.array_equal(perturb(_turn(), N_MELS, 0.0, 0, rng), _turn())


@pytest.mark.parametrize("field,value", [("stretch", 0.6), ("stretch", -0.1), ("mel_shift", -1), ("mel_shift", 1.5)])
def test_perturbation_settings_out_of_range_are_refused_in_one_sentence(field, value):
    with pytest.raises(ValueError, match=field):
        RecognizerTrainConfig(**{field: value})
