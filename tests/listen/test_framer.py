import numpy as np
import pytest

from listen.framer import Framer
from listen.pcm import AudioInputError


def test_framer_emits_whole_frames_and_holds_remainder():
    f = Framer(4)
    out = f.push(np.arange(10, dtype=np.float32))
    assert out.shape == (2, 4) and out.dtype == np.float32
    np.testing.assert_array_equal(out.ravel(), np.arange(8))
    assert f.pending == 2
    out = f.push(np.arange(10, 12, dtype=np.float32))
    np.testing.assert_array_equal(out, [[8, 9, 10, 11]])
    assert f.pending == 0


def test_zero_length_push_returns_no_frames():
    f = Framer(160)
    assert f.push(np.zeros(0, np.float32)).shape == (0, 160)
    f.push(np.ones(5, np.float32))
    assert f.push(np.zeros(0, np.float32)).shape == (0, 160) and f.pending == 5


def test_flush_zero_pads_last_frame_and_empties():
    f = Framer(4)
    f.push(np.array([1, 2, 3, 4, 5], np.float32))
    np.testing.assert_array_equal(f.flush(), [[5, 0, 0, 0]])
    assert f.pending == 0
    assert f.flush().shape == (0, 4)


def test_random_push_sizes_reassemble_the_stream():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(10_007).astype(np.float32)
    f, frames, i = Framer(320), [], 0
    while i < len(x):
        n = int(rng.integers(0, 900))
        frames.append(f.push(x[i : i + n]))
        i += n
    frames.append(f.flush())
    y = np.concatenate(frames)
    assert y.shape == (32, 320)
    np.testing.assert_array_equal(y.ravel()[: len(x)], x)
    assert not y.ravel()[len(x) :].any()


def test_frames_do_not_alias_the_input():
    f, x = Framer(4), np.ones(6, np.float32)
    out = f.push(x)
    x[:] = 7
    assert (out == 1).all() and (f.flush()[0, :2] == 1).all()


def test_reset_drops_pending_samples():
    f = Framer(4)
    f.push(np.ones(3, np.float32))
    f.reset()
    assert f.pending == 0 and f.flush().shape == (0, 4)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_frame_length_raises(bad):
    with pytest.raises(AudioInputError, match="frame_samples"):
        Framer(bad)


def test_multichannel_push_raises():
    with pytest.raises(AudioInputError, match="mono"):
        Framer(4).push(np.zeros((4, 2), np.float32))
