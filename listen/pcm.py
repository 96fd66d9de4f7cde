"""PCM conversions at the edge of the system: whatever arrives becomes mono float32 in [-1, 1].

Shapes: input ``(N,)`` or ``(N, C)`` (samples first, as sounddevice and soundfile give them);
output ``(N,)`` float32. Integer PCM is scaled by its full scale (int16 by 32768, int32 by 2**31,
8-bit WAV's unsigned bytes around 128).
"""
from __future__ import annotations

import numpy as np

# More channels than this almost surely means a (channels, samples) array passed the wrong way round;
# downmixing it would silently produce garbage, so we refuse with a hint instead.
MAX_CHANNELS = 64



class AudioInputError(ValueError):
    """Audio input that cannot be used (wrong type, shape, or an unreadable file)."""


def to_float32_mono_counted(data: np.ndarray) -> tuple[np.ndarray, int]:
    """Like :func:`to_float32_mono` but also returns how many NaN/Inf values were replaced by 0.

    Args:
        data: ``(N,)`` or ``(N, C)`` array of int8/int16/int32 (any byte order), uint8 (8-bit WAV)
            or float16/32/64.
    Returns:
        ``((N,) float32 in [-1, 1], nonfinite_count)``; the count is over all channels' samples.
    """
    if isinstance(data, (bytes, bytearray, memoryview, str)):
        raise AudioInputError(
            f"Expected a numpy array of samples, got {type(data).__name__}; "
            "use pcm16_bytes_to_float32 for raw PCM16 bytes."
        )
    x = np.asarray(data)
    if x.ndim == 0 or x.ndim > 2:
        raise AudioInputError(f"Audio must have shape (N,) or (N, channels), got shape {x.shape}.")
    if x.ndim == 2:
        if x.shape[1] > MAX_CHANNELS:
            raise AudioInputError(
                f"Audio of shape {x.shape} has {x.shape[1]} channels (at most {MAX_CHANNELS} allowed); "
                "arrays must be (samples, channels): transpose a (channels, samples) array."
            )
        if x.shape[1] == 0 and x.shape[0] > 0:
            raise AudioInputError(f"Audio of shape {x.shape} has no channels.")
    mono, nonfinite = _scale(x)
    if mono.ndim == 2:
        mono = mono.mean(axis=1, dtype=np.float32) if mono.shape[1] > 1 else mono[:, 0]
    if mono.dtype != np.float32 or not mono.flags.c_contiguous:
        mono = np.ascontiguousarray(mono, dtype=np.float32)
    return mono, nonfinite


def to_float32_mono(data: np.ndarray) -> np.ndarray:
    """Any supported PCM array ``(N,)`` / ``(N, C)`` -> ``(N,)`` float32 mono in [-1, 1].

    Channels are downmixed by their mean; NaN/Inf become 0 (silence) and floats are clipped.
    An unsupported dtype (complex, object, strings, bool, 64-bit ints) or shape raises AudioInputError.
    """
    return to_float32_mono_counted(data)[0]


def _scale(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Scale to float32 in [-1, 1], keeping the shape; returns (array, nonfinite count)."""
    dt = x.dtype
    # Checked by kind and size, not dtype equality, so non-native byte orders ('>i2') work too.
    if dt.kind == "i" and dt.itemsize in (1, 2, 4):
        return x.astype(np.float32) * np.float32(1.0 / 2.0 ** (8 * dt.itemsize - 1)), 0
    if dt.kind == "u" and dt.itemsize == 1:
        # 8-bit WAV is unsigned with silence at 128.
        return (x.astype(np.float32) - 128.0) * np.float32(1.0 / 128.0), 0
    if dt.kind == "f":
        y = x.astype(np.float32)  # always a copy, so the in-place fixes below never touch the caller's data
        bad = ~np.isfinite(y)
        nonfinite = int(np.count_nonzero(bad))
        if nonfinite:
            y[bad] = 0.0
        np.clip(y, -1.0, 1.0, out=y)
        return y, nonfinite
    raise AudioInputError(
        f"Unsupported audio sample type {dt}; use int16, int32, uint8 (8-bit WAV) or float32/float64."
    )


def pcm16_bytes_to_float32(b: bytes) -> np.ndarray:
    """Little-endian PCM16 mono bytes -> ``(len(b) // 2,)`` float32 in [-1, 1)."""
    if not isinstance(b, (bytes, bytearray, memoryview)):
        raise AudioInputError(f"Expected PCM16 bytes, got {type(b).__name__}.")
    if len(b) % 2:
        raise AudioInputError(f"PCM16 data must have an even number of bytes, got {len(b)}.")
    return np.frombuffer(b, dtype="<i2").astype(np.float32) * np.float32(1.0 / 32768.0)


def float32_to_pcm16(x: np.ndarray) -> np.ndarray:
    """Float samples (any shape) -> int16 of the same shape; NaN/Inf -> 0, clipped to full scale."""
    y = np.nan_to_num(np.asarray(x, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    # Scale by 32768 (not 32767) so int16 -> float32 -> int16 round-trips exactly.
    return np.clip(np.rint(y * 32768.0), -32768, 32767).astype(np.int16)


def float32_to_pcm16_bytes(x: np.ndarray) -> bytes:
    """``(N,)`` float32 in [-1, 1] -> little-endian PCM16 bytes (2 N bytes)."""
    return float32_to_pcm16(x).astype("<i2", copy=False).tobytes()
