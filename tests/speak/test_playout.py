import threading

import numpy as np
import pytest

from speak.playout import ArraySink, PlayoutBuffer


def _ramp(start: int, n: int) -> np.ndarray:
    return (np.arange(start, start + n) / 1e6).astype(np.float32)


def test_playout_pull_returns_pushed_samples_in_order():
    buf = PlayoutBuffer(1000, max_seconds=1.0)
    buf.push(_ramp(0, 300))
    buf.push(_ramp(300, 300))
    assert buf.buffered_seconds == pytest.approx(0.6)
    got = np.concatenate([buf.pull(n) for n in (1, 99, 250, 250)])
    np.testing.assert_array_equal(got, _ramp(0, 600))
    assert buf.underruns == 0 and buf.buffered_samples == 0


def test_playout_wraps_around_the_ring_many_times():
    buf, pushed, pulled = PlayoutBuffer(100, max_seconds=1.0), 0, []
    for n in [37, 91, 5, 64] * 20:
        buf.push(_ramp(pushed, n))
        pushed += n
        pulled.append(buf.pull(min(n, buf.buffered_samples)))
    pulled.append(buf.pull(buf.buffered_samples))
    np.testing.assert_array_equal(np.concatenate(pulled), _ramp(0, pushed))
    assert buf.overrun_samples == 0 and buf.underruns == 0


def test_playout_underrun_zero_fills_and_counts():
    buf = PlayoutBuffer(1000)
    buf.push(np.ones(30, np.float32))
    out = buf.pull(100)
    assert out.shape == (100,) and (out[:30] == 1).all() and not out[30:].any()
    assert buf.pull(10).tolist() == [0.0] * 10
    assert buf.underruns == 2 and buf.underrun_samples == 80


def test_playout_overrun_drops_oldest_samples():
    buf = PlayoutBuffer(100, max_seconds=1.0)
    buf.push(_ramp(0, 80))
    buf.push(_ramp(80, 50))
    assert buf.overrun_samples == 30 and buf.buffered_samples == 100
    np.testing.assert_array_equal(buf.pull(100), _ramp(30, 100))


def test_playout_push_larger_than_capacity_keeps_the_newest():
    buf = PlayoutBuffer(100, max_seconds=1.0)
    buf.push(_ramp(0, 20))
    buf.push(_ramp(20, 250))
    assert buf.overrun_samples == 170
    np.testing.assert_array_equal(buf.pull(100), _ramp(170, 100))


def test_playout_waits_for_prebuffer_before_first_playout():
    buf = PlayoutBuffer(1000, prebuffer_seconds=0.1)
    buf.push(np.ones(60, np.float32))
    assert not buf.playing and not buf.pull(20).any()
    assert buf.underruns == 0 and buf.buffered_samples == 60
    buf.push(np.ones(40, np.float32))
    assert buf.playing and (buf.pull(100) == 1).all()


def test_playout_flush_drops_buffered_audio_at_once():
    buf = PlayoutBuffer(1000, prebuffer_seconds=0.05)
    buf.push(np.ones(700, np.float32))
    assert buf.pull(10).sum() == 10
    assert buf.flush() == 690
    assert buf.buffered_samples == 0 and not buf.pull(50).any()
    assert not buf.playing  # the next utterance builds its prebuffer cushion again
    assert buf.flush() == 0


def test_playout_reset_zeroes_counters():
    buf = PlayoutBuffer(100, max_seconds=1.0)
    buf.push(np.ones(150, np.float32))
    buf.pull(200)
    buf.reset()
    assert (buf.buffered_samples, buf.underruns, buf.underrun_samples, buf.overrun_samples) == (0, 0, 0, 0)


@pytest.mark.parametrize(
    "kwargs", [{"sample_rate": 0}, {"max_seconds": 0}, {"prebuffer_seconds": -1}, {"prebuffer_seconds": 3.0}]
)
def test_playout_bad_settings_raise(kwargs):
    with pytest.raises(ValueError):
        PlayoutBuffer(**{"sample_rate": 8000, **kwargs})


def test_playout_rejects_multichannel_and_negative_pulls():
    buf = PlayoutBuffer(8000)
    with pytest.raises(ValueError, match="mono"):
        buf.push(np.zeros((10, 2), np.float32))
    with pytest.raises(ValueError):
        buf.pull(-1)
    assert buf.pull(0).shape == (0,)


def test_playout_is_safe_with_a_pulling_thread():
    """A callback thread pulls while the main thread pushes: no sample is duplicated or reordered,
    and pushed = played + still buffered + dropped."""
    buf = PlayoutBuffer(8000, max_seconds=0.05)
    total, played, done = 40_000, [], threading.Event()

    def consume():
        while not done.is_set() or buf.buffered_samples:
            played.append(buf.pull(64))

    t = threading.Thread(target=consume)
    t.start()
    for start in range(0, total, 80):
        buf.push(np.arange(start + 1, start + 81, dtype=np.float32))
    done.set()
    t.join(timeout=10)
    assert not t.is_alive()
    got = np.concatenate(played)
    got = got[got != 0]
    assert (np.diff(got) > 0).all()
    assert len(got) + buf.overrun_samples == total


def test_array_sink_collects_played_samples():
    sink, buf = ArraySink(1000), PlayoutBuffer(1000)
    x = _ramp(0, 250)
    buf.push(x)
    for _ in range(3):
        chunk = buf.pull(100)
        sink.write(chunk)
        chunk[:] = 9  # the sink copied it
    np.testing.assert_array_equal(sink.played()[:250], x)
    assert sink.played().shape == (300,) and sink.seconds == pytest.approx(0.3)
    sink.reset()
    assert sink.played().shape == (0,) and sink.samples == 0
