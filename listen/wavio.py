"""Reading and writing audio files (WAV and anything else libsndfile reads) with clear errors.

Shapes: files are read as ``(frames, channels)`` float32; ``write_wav`` takes ``(N,)`` or ``(N, C)``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import soundfile as sf

from listen.pcm import MAX_CHANNELS, AudioInputError, float32_to_pcm16


class WavInfo(NamedTuple):
    """What an audio file holds, without reading its samples."""

    rate: int
    channels: int
    frames: int
    duration: float  # seconds


def _check_path(path: str | os.PathLike) -> Path:
    if not str(path).strip():  # Path("") is ".", the current folder: name what was given instead
        raise AudioInputError("No audio file was given (the path is empty).")
    p = Path(path)
    if not p.exists():
        raise AudioInputError(f"Audio file not found: {p}.")
    if not p.is_file():
        raise AudioInputError(f"Audio path is not a file: {p}.")
    if p.stat().st_size == 0:
        raise AudioInputError(f"Audio file is empty (0 bytes): {p}.")
    return p


def _open(path: str | os.PathLike) -> sf.SoundFile:
    p = _check_path(path)
    try:
        f = sf.SoundFile(p)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioInputError(f"Not a readable audio file: {p} ({_reason(e)}).") from e
    if f.samplerate <= 0 or f.channels <= 0:
        f.close()
        raise AudioInputError(f"Audio file {p} has an invalid header (rate {f.samplerate}, {f.channels} channels).")
    return f


def _reason(e: Exception) -> str:
    msg = str(e).strip().rstrip(".")
    # libsndfile messages repeat the path; keep just its explanation.
    return msg.split(": ", 1)[-1] if ": " in msg else (msg or type(e).__name__)


def wav_info(path: str | os.PathLike) -> WavInfo:
    """Rate, channels, frames and duration of an audio file (reads only the header)."""
    with _open(path) as f:
        frames = int(f.frames)
        return WavInfo(int(f.samplerate), int(f.channels), frames, frames / f.samplerate)


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read a whole audio file -> ``((frames, channels) float32, rate)``.

    Samples are returned as stored (a float file may hold NaN or values beyond ±1; the listener's
    conversion cleans them). For long files use :func:`iter_wav_blocks`.
    """
    with _open(path) as f:
        try:
            data = f.read(dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise AudioInputError(f"Audio file {path} is corrupt ({_reason(e)}).") from e
        return data, int(f.samplerate)


def iter_wav_blocks(path: str | os.PathLike, block_seconds: float = 1.0) -> Iterator[np.ndarray]:
    """Stream a file in ``(n, channels)`` float32 blocks of ``block_seconds`` (the last may be shorter).

    Opens the file at once, so a missing or corrupt file raises here, not at the first ``next()``.
    Memory stays bounded by one block whatever the file's length.
    """
    if not (block_seconds > 0 and np.isfinite(block_seconds)):
        raise AudioInputError(f"block_seconds must be a positive number, got {block_seconds!r}.")
    f = _open(path)
    block = max(1, int(round(block_seconds * f.samplerate)))
    return _blocks(f, block, path)


def _blocks(f: sf.SoundFile, block: int, path: str | os.PathLike) -> Iterator[np.ndarray]:
    with f:
        while True:
            try:
                data = f.read(block, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as e:
                raise AudioInputError(f"Audio file {path} is corrupt ({_reason(e)}).") from e
            if len(data) == 0:
                return
            yield data
            if len(data) < block:
                return


def write_wav(path: str | os.PathLike, data: np.ndarray, rate: int) -> None:
    """Write ``(N,)`` or ``(N, C)`` float samples in [-1, 1] as a PCM16 WAV (clipped; NaN -> 0)."""
    x = np.asarray(data)
    if x.ndim not in (1, 2) or (x.ndim == 2 and not 1 <= x.shape[1] <= MAX_CHANNELS):
        raise AudioInputError(f"write_wav needs (N,) or (N, channels) samples, got shape {x.shape}.")
    if x.dtype.kind != "f":
        raise AudioInputError(f"write_wav needs float samples in [-1, 1], got dtype {x.dtype}.")
    if not (isinstance(rate, (int, np.integer)) and rate > 0):
        raise AudioInputError(f"Sample rate must be a positive integer, got {rate!r}.")
    # Convert ourselves: libsndfile's float -> int conversion does not clip and would wrap around.
    sf.write(os.fspath(path), float32_to_pcm16(x), int(rate), subtype="PCM_16", format="WAV")
