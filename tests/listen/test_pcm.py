import numpy as np
import pytest

from listen.pcm import (
    AudioInputError,
    float32_to_pcm16_bytes,
    pcm16_bytes_to_float32,
    to_float32_mono,
    to_float32_mono_counted,
)


def test_int16_full_scale_maps_to_unit_range():
    y = to_float32_mono(np.array([-32768, 0, 16384, 32767], dtype=np.int16))
    assert y.dtype == np.float32 and y.shape == (4,)
    np.testing.assert_allclose(y, [-1.0, 0.0, 0.5, 32767 / 32768])


def test_int32_and_uint8_are_scaled_by_full_scale():
    np.testing.assert_allclose(to_float32_mono(np.array([-(2**31), 2**30], dtype=np.int32)), [-1.0, 0.5])
    np.testing.assert_allclose(to_float32_mono(np.array([0, 128, 192], dtype=np.uint8)), [-1.0, 0.0, 0.5])


def test_six_channel_int32_input_is_downmixed():
    ch = np.array([0, 1, 2, 3, 4, 5], dtype=np.int64) * 2**26
    x = np.tile(ch, (10, 1)).astype(np.int32)  # (10, 6): samples first
    y = to_float32_mono(x)
    assert y.shape == (10,) and y.dtype == np.float32
    np.testing.assert_allclose(y, np.full(10, ch.mean() / 2**31), rtol=1e-6)


def test_big_endian_and_int8_input_is_scaled():
    np.testing.assert_allclose(to_float32_mono(np.array([16384, -32768], dtype=">i2")), [0.5, -1.0])
    np.testing.assert_allclose(to_float32_mono(np.array([64, -128], dtype=np.int8)), [0.5, -1.0])


def test_single_channel_column_equals_mono():
    x = np.linspace(-0.5, 0.5, 100, dtype=np.float64)
    np.testing.assert_array_equal(to_float32_mono(x[:, None]), to_float32_mono(x))


def test_nan_and_inf_samples_are_replaced_by_silence():
    x = np.array([[0.5, np.nan], [np.inf, -np.inf], [0.25, 0.25]], dtype=np.float32)
    y, bad = to_float32_mono_counted(x)
    assert bad == 3
    np.testing.assert_allclose(y, [0.25, 0.0, 0.25])
    assert np.isnan(x[0, 1])  # the caller's array is untouched


def test_float_input_is_clipped_to_unit_range():
    y = to_float32_mono(np.array([-3.0, -1.0, 0.2, 1.5], dtype=np.float64))
    np.testing.assert_allclose(y, [-1.0, -1.0, 0.2, 1.0], rtol=1e-6)


@pytest.mark.parametrize("shape", [(0,), (0, 2), (0, 6)])
def test_empty_input_returns_empty_array(shape):
    y = to_float32_mono(np.zeros(shape, dtype=np.int16))
    assert y.shape == (0,) and y.dtype == np.float32


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros(4, dtype=np.complex64),
        np.array([0.1, "a", None], dtype=object),
        np.array(["a", "b"]),
        np.zeros(4, dtype=bool),
        np.zeros(4, dtype=np.int64),
    ],
    ids=["complex", "object", "str", "bool", "int64"],
)
def test_unsupported_dtype_raises_audio_input_error(bad):
    with pytest.raises(AudioInputError, match="Unsupported audio sample type"):
        to_float32_mono(bad)


@pytest.mark.parametrize("shape", [(2, 3, 4), ()])
def test_wrong_number_of_dimensions_raises(shape):
    with pytest.raises(AudioInputError, match="shape"):
        to_float32_mono(np.zeros(shape, dtype=np.float32))


def test_channels_first_array_raises_with_transpose_hint():
    with pytest.raises(AudioInputError, match="transpose"):
        to_float32_mono(np.zeros((2, 48000), dtype=np.float32))


def test_bytes_passed_as_array_raise_with_hint():
    with pytest.raises(AudioInputError, match="pcm16_bytes_to_float32"):
        to_float32_mono(b"\x00\x01")


def test_audio_input_error_is_a_value_error():
    assert issubclass(AudioInputError, ValueError)


def test_pcm16_bytes_round_trip_is_exact():
    ints = np.array([-32768, -1, 0, 1, 12345, 32767], dtype="<i2")
    x = pcm16_bytes_to_float32(ints.tobytes())
    assert x.dtype == np.float32
    assert float32_to_pcm16_bytes(x) == ints.tobytes()
    assert pcm16_bytes_to_float32(b"").shape == (0,)


def test_odd_byte_count_raises():
    with pytest.raises(AudioInputError, match="even number of bytes"):
        pcm16_bytes_to_float32(b"\x00\x01\x02")


def test_float32_to_pcm16_clips_and_silences_nonfinite():
    b = float32_to_pcm16_bytes(np.array([2.0, -2.0, np.nan, np.inf], dtype=np.float32))
    np.testing.assert_array_equal(np.frombuffer(b, "<i2"), [32767, -32768, 0, 0])
