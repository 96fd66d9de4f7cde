import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from listen.pcm import AudioInputError, to_float32_mono
from listen.wavio import iter_wav_blocks, read_wav, wav_info, write_wav


@pytest.mark.parametrize("channels", [1, 2, 6])
def test_write_then_read_round_trips_as_pcm16(tmp_path, channels):
    rng = np.random.default_rng(0)
    x = (rng.uniform(-0.9, 0.9, size=(800, channels))).astype(np.float32)
    path = tmp_path / "x.wav"
    write_wav(path, x if channels > 1 else x[:, 0], 16000)
    y, rate = read_wav(path)
    assert rate == 16000 and y.shape == (800, channels) and y.dtype == np.float32
    np.testing.assert_allclose(y, x, atol=1 / 32768)


def test_write_wav_clips_out_of_range_and_silences_nan(tmp_path):
    path = tmp_path / "x.wav"
    write_wav(path, np.array([1.5, -1.5, np.nan, 0.5], dtype=np.float32), 8000)
    assert sf.info(path).subtype == "PCM_16"
    y, _ = read_wav(path)
    np.testing.assert_allclose(y[:, 0], [32767 / 32768, -1.0, 0.0, 0.5])


@pytest.mark.parametrize(
    "data, rate",
    [(np.zeros((4, 2, 2), np.float32), 8000), (np.zeros(4, np.float32), 0), (np.zeros(4, np.int16), 8000)],
    ids=["3d", "rate0", "int16"],
)
def test_write_wav_rejects_bad_input(tmp_path, data, rate):
    with pytest.raises(AudioInputError):
        write_wav(tmp_path / "x.wav", data, rate)


def test_wav_info_reports_rate_channels_frames_duration(tmp_path):
    path = tmp_path / "x.wav"
    write_wav(path, np.zeros((22050, 2), np.float32), 44100)
    info = wav_info(path)
    assert (info.rate, info.channels, info.frames) == (44100, 2, 22050)
    assert info.duration == pytest.approx(0.5)
    rate, channels, frames, duration = info  # also unpacks as a tuple


def test_missing_file_raises_clear_error(tmp_path):
    with pytest.raises(AudioInputError, match="not found"):
        read_wav(tmp_path / "nope.wav")
    with pytest.raises(AudioInputError, match="not found"):
        iter_wav_blocks(tmp_path / "nope.wav")  # raises at the call, not at the first next()


def test_corrupt_wav_raises_clear_error(tmp_path):
    junk = tmp_path / "junk.wav"
    junk.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(AudioInputError, match="Not a readable audio file"):
        read_wav(junk)
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 20)
    with pytest.raises(AudioInputError, match="Not a readable audio file"):
        wav_info(text)
    truncated = tmp_path / "truncated.wav"
    write_wav(truncated, np.zeros(100, np.float32), 8000)
    truncated.write_bytes(truncated.read_bytes()[:20])
    with pytest.raises(AudioInputError):
        read_wav(truncated)


def test_empty_file_and_directory_raise_clear_errors(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioInputError, match="empty"):
        read_wav(empty)
    with pytest.raises(AudioInputError, match="not a file"):
        read_wav(tmp_path)
    with pytest.raises(AudioInputError, match=r"^No audio file was given \(the path is empty\)\.$"):
        read_wav("")  # not "Audio path is not a file: .."


def test_eight_bit_wav_reads_and_converts(tmp_path):
    path = tmp_path / "u8.wav"
    sf.write(path, np.array([0.0, 0.5, -0.5], np.float32), 8000, subtype="PCM_U8")
    y, rate = read_wav(path)
    np.testing.assert_allclose(to_float32_mono(y), [0.0, 0.5, -0.5], atol=1 / 128)


def test_iter_wav_blocks_streams_a_long_file_in_bounded_memory(tmp_path):
    rate, seconds = 8000, 300  # a 5-minute file (4.8 MB as PCM16) read in 1 s blocks
    path = tmp_path / "long.wav"
    with sf.SoundFile(path, "w", rate, 1, subtype="PCM_16") as f:
        for i in range(seconds):
            f.write(np.full(rate, (i % 100) / 200, dtype=np.float32))
    tracemalloc.start()
    try:
        total, last_level = 0, None
        for block in iter_wav_blocks(path, block_seconds=1.0):
            assert block.shape == (rate, 1) and block.dtype == np.float32
            last_level = block[0, 0]
            total += len(block)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == rate * seconds
    assert last_level == pytest.approx(((seconds - 1) % 100) / 200, abs=1e-4)
    assert peak < 1_000_000  # a few blocks' worth, not the 9.6 MB of the decoded file


def test_iter_wav_blocks_last_block_is_short_and_matches_read(tmp_path):
    path = tmp_path / "x.wav"
    x = np.random.default_rng(1).uniform(-0.5, 0.5, (2500, 2)).astype(np.float32)
    write_wav(path, x, 1000)
    blocks = list(iter_wav_blocks(path, block_seconds=1.0))
    assert [len(b) for b in blocks] == [1000, 1000, 500]
    np.testing.assert_array_equal(np.concatenate(blocks), read_wav(path)[0])
    with pytest.raises(AudioInputError):
        iter_wav_blocks(path, block_seconds=0)
