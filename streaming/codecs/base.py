"""What every codec provides: a spec, a streaming encoder and a streaming decoder.

A codec is one concept with two halves. ``listen/`` uses the encoder, ``speak/`` the decoder, and
``think/`` only the spec (to lay out token ids). Each codec lives in one module of this package and
registers itself under a name with :func:`register_codec`.

Shapes: PCM is ``(samples,)`` float32 mono at ``spec.sample_rate``; codes are ``(frames, Q)`` int64,
column ``k`` holding codebook ``k`` (coarse to fine), each value in ``[0, spec.codebook_sizes[k])``.
"""
from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np


@dataclass(frozen=True)
class CodecSpec:
    """The facts about a codec that the token layout and the session clock need.

    Attributes:
        name: registry name, e.g. ``"codec2"``.
        sample_rate: PCM rate the codec consumes and produces (Hz).
        frame_samples: PCM samples per layout frame (one clock tick), e.g. 640 = 80 ms at 8 kHz.
        codebook_sizes: vocabulary size of each of the Q codebooks in one frame, coarse to fine.
        lookahead_frames: frames the decoder must see after a frame before that frame's audio is
            final (0 for causal codecs).
        options: codec-specific settings needed to rebuild the same codec (e.g. codec2's mode).
    """

    name: str
    sample_rate: int
    frame_samples: int
    codebook_sizes: tuple[int, ...]
    lookahead_frames: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def num_codebooks(self) -> int:
        """Q: ids per frame."""
        return len(self.codebook_sizes)

    @property
    def frame_ms(self) -> float:
        """Frame length in milliseconds."""
        return 1000.0 * self.frame_samples / self.sample_rate

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.frame_samples

    @property
    def bits_per_second(self) -> float:
        """Information rate if every id were uniformly used."""
        return self.frames_per_second * float(sum(np.log2(self.codebook_sizes)))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["codebook_sizes"] = list(self.codebook_sizes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CodecSpec":
        d = dict(d)
        d["codebook_sizes"] = tuple(int(x) for x in d["codebook_sizes"])
        return cls(**d)


class StreamingEncoder(abc.ABC):
    """PCM in, codes out, one frame at a time, with explicit state.

    ``encode`` takes any whole number of frames, and feeding a signal in pieces gives exactly the
    codes of feeding it at once. ``reset`` starts a new stream (a new session).
    """

    spec: CodecSpec

    @abc.abstractmethod
    def encode(self, pcm: np.ndarray) -> np.ndarray:
        """``(n * frame_samples,)`` float32 -> ``(n, Q)`` int64."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget all history (start of a new stream)."""


class StreamingDecoder(abc.ABC):
    """Codes in, PCM out, one frame at a time, with explicit state and no seams.

    For causal codecs ``decode(codes)`` returns ``n * frame_samples`` samples at once. A codec with
    look-ahead returns audio ``lookahead_frames`` frames late (the first calls return fewer samples)
    and ``flush`` returns the tail. Concatenating every output plus ``flush()`` has the length of the
    whole input.
    """

    spec: CodecSpec

    @abc.abstractmethod
    def decode(self, codes: np.ndarray) -> np.ndarray:
        """``(n, Q)`` int -> ``(m,)`` float32 PCM (``m = n * frame_samples`` for causal codecs)."""

    def flush(self) -> np.ndarray:
        """Audio still held back for look-ahead (empty for causal codecs)."""
        return np.zeros(0, dtype=np.float32)

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget all history (start of a new stream)."""


class Codec(abc.ABC):
    """A codec: its spec plus factories for independent streaming halves."""

    spec: CodecSpec

    @abc.abstractmethod
    def encoder(self) -> StreamingEncoder:
        """A new encoder with fresh state (one per session)."""

    @abc.abstractmethod
    def decoder(self) -> StreamingDecoder:
        """A new decoder with fresh state (one per session)."""

    def encode_all(self, pcm: np.ndarray) -> np.ndarray:
        """One-shot encode; pads the tail with zeros to a whole frame. ``(T,)`` -> ``(frames, Q)``."""
        pcm = np.asarray(pcm, dtype=np.float32)
        n = -(-len(pcm) // self.spec.frame_samples)
        padded = np.zeros(n * self.spec.frame_samples, dtype=np.float32)
        padded[: len(pcm)] = pcm
        return self.encoder().encode(padded)

    def decode_all(self, codes: np.ndarray) -> np.ndarray:
        """One-shot decode. ``(frames, Q)`` -> ``(frames * frame_samples,)``."""
        dec = self.decoder()
        out = dec.decode(np.asarray(codes))
        return np.concatenate([out, dec.flush()]).astype(np.float32)

    def silence_codes(self) -> np.ndarray:
        """The codes of one frame of digital silence, ``(Q,)`` (used for forced agent silence)."""
        enc = self.encoder()
        codes = enc.encode(np.zeros(self.spec.frame_samples * 4, dtype=np.float32))
        return codes[-1].copy()


def check_pcm(pcm: np.ndarray, spec: CodecSpec) -> np.ndarray:
    """Validate encoder input: 1-D and a whole number of frames; returns float32."""
    pcm = np.asarray(pcm)
    if pcm.ndim != 1:
        raise ValueError(f"{spec.name} encode expects mono PCM of shape (samples,), got shape {pcm.shape}.")
    if len(pcm) % spec.frame_samples:
        raise ValueError(
            f"{spec.name} encode needs a whole number of {spec.frame_samples}-sample frames, got {len(pcm)} samples."
        )
    return pcm.astype(np.float32, copy=False)


def check_codes(codes: np.ndarray, sizes: np.ndarray, name: str, min_q: int | None = None) -> np.ndarray:
    """Validate decoder input ``(n, q)`` against per-codebook sizes; ``min_q`` allows q < Q (RVQ)."""
    codes = np.asarray(codes)
    q_max = len(sizes)
    q_min = q_max if min_q is None else min_q
    if codes.ndim != 2 or not q_min <= codes.shape[1] <= q_max:
        want = f"{q_max}" if q_min == q_max else f"{q_min}..{q_max}"
        raise ValueError(f"{name} decode expects codes of shape (frames, {want}), got shape {codes.shape}.")
    if codes.size and not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"{name} decode expects integer codes, got dtype {codes.dtype}.")
    codes = codes.astype(np.int64, copy=False)
    bad = (codes < 0) | (codes >= sizes[: codes.shape[1]])
    if bad.any():
        f, k = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} code {int(codes[f, k])} at frame {f}, codebook {k} is outside [0, {int(sizes[k])})."
        )
    return codes


CodecFactory = Callable[..., Codec]
_REGISTRY: dict[str, CodecFactory] = {}


def register_codec(name: str) -> Callable[[CodecFactory], CodecFactory]:
    """Decorator: make ``load_codec(name, **options)`` build this codec."""

    def wrap(factory: CodecFactory) -> CodecFactory:
        _REGISTRY[name] = factory
        return factory

    return wrap


def available_codecs() -> list[str]:
    _import_builtin_codecs()
    return sorted(_REGISTRY)


def load_codec(name: str, **options: Any) -> Codec:
    """Build a registered codec by name; options are the spec's ``options`` (e.g. ``mode="700C"``)
    plus, for neural codecs, ``weights_dir`` (a local directory; nothing is downloaded)."""
    _import_builtin_codecs()
    if name not in _REGISTRY:
        raise ValueError(f"Unknown codec {name!r}; available codecs: {', '.join(sorted(_REGISTRY))}.")
    return _REGISTRY[name](**options)


def _import_builtin_codecs() -> None:
    # Importing the modules registers them; heavy backends are imported lazily inside each codec.
    from streaming.codecs import codec2, fsq, mimi, snac  # noqa: F401
