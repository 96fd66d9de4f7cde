"""Codec 2 (pycodec2, 8 kHz): the classical, training-free, fully offline codec.

Each codec2 frame's bits are cut into a few tokens along its bit fields, so every id is one
meaningful quantity with a small vocabulary (voicing + pitch, energy, a pair of LSP indices, a VQ
index) instead of an arbitrary byte. A layout frame of ``frame_ms`` holds ``frame_ms / codec2 frame``
codec2 frames, so ``Q = codec2 frames per layout frame * tokens per codec2 frame``.

Token widths per mode (bits, in codec2's packing order; see ``codec2_encode_*`` in drowe67/codec2
``src/codec2.c``), and Q at the default 80 ms layout frame:

======  ==========  ============================================  ========================  ==
mode    c2 frame    fields -> tokens                              widths                    Q
======  ==========  ============================================  ========================  ==
3200    20 ms, 64b  v,v,Wo7 | E5 | 10 LSP deltas x5b in pairs     9 5 10 10 10 10 10        28
2400    20 ms, 48b  v,v,WoE8 | 10 LSPs (4444444332) in pairs |    10 8 8 8 7 7              24
                    last pair + 2 spare bits
1600    40 ms, 64b  v,v,Wo7 | E5 | v,v,Wo7 | E5 | LSP pairs       9 5 9 5 8 8 8 7 5         18
1400    40 ms, 56b  v,v,WoE8 | v,v,WoE8 | LSP pairs               10 10 8 8 8 7 5           14
1300    40 ms, 52b  v,v,v,v,Wo7 | E5 | LSP pairs                  11 5 8 8 8 7 5            14
1200    40 ms, 48b  v,v,WoE8 | v,v,WoE8 | VQ9 | VQ9 | VQ9+spare   10 10 9 9 10              10
700C    40 ms, 28b  VQ9 | VQ9 | energy4 + Wo/voicing6             9 9 10                    6
======  ==========  ============================================  ========================  ==

All modes but 700C Gray-code their fields in the bitstream; tokens hold the natural (de-Grayed)
index of each field, so neighbouring ids are neighbouring pitches/energies. The mapping is a
bijection on the bits: tokens -> bytes -> codec2 decode is bit-exact with codec2's own stream.

Measured here (2-core CPU, Whisper tiny.en WER on espeak-ng/flite sentences, DESIGN.md section 5):
clean 9 %; 3200 bit/s 11-20 %; 1300 bit/s 30-41 %; 700C ~60 %. Only 3200 is intelligible; 700C is
the default because it needs the fewest ids per frame (Q=6 at 80 ms).

Real-time factor (encode + decode, one stream, 80 ms chunks, this shared 2-core CPU): 0.003-0.004
(700C and 3200).

Decoder determinism: codec2 draws random phases from one process-global RNG; each of our decoders
carries its own seed and swaps it in around its decode calls (see ``_Codec2Rand``), so a stream's
audio depends only on its codes: streamed decode is bit-exact with one-shot decode.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from streaming.codecs.base import (
    Codec,
    CodecSpec,
    StreamingDecoder,
    StreamingEncoder,
    check_codes,
    check_pcm,
    register_codec,
)

SAMPLE_RATE = 8000

# mode -> (codec2 frame ms, Gray-coded fields?, tokens as tuples of field widths in packing order).
# Fields are never split across tokens; adjacent fields of one quantity are merged (<= 11 bits).
_MODES: dict[str, tuple[int, bool, tuple[tuple[int, ...], ...]]] = {
    "3200": (20, True, ((1, 1, 7), (5,), (5, 5), (5, 5), (5, 5), (5, 5), (5, 5))),
    "2400": (20, True, ((1, 1, 8), (4, 4), (4, 4), (4, 4), (4, 3), (3, 2, 2))),
    "1600": (40, True, ((1, 1, 7), (5,), (1, 1, 7), (5,), (4, 4), (4, 4), (4, 4), (4, 3), (3, 2))),
    "1400": (40, True, ((1, 1, 8), (1, 1, 8), (4, 4), (4, 4), (4, 4), (4, 3), (3, 2))),
    "1300": (40, True, ((1, 1, 1, 1, 7), (5,), (4, 4), (4, 4), (4, 4), (4, 3), (3, 2))),
    "1200": (40, True, ((1, 1, 8), (1, 1, 8), (9,), (9,), (9, 1))),
    "700C": (40, False, ((9,), (9,), (4, 6))),
}
_PYCODEC2_MODE = {"3200": 3200, "2400": 2400, "1600": 1600, "1400": 1400, "1300": 1300, "1200": 1200, "700C": 700}


def canonical_mode(mode: int | str) -> str:
    """``700``, ``"700c"``, ``"700C"`` -> ``"700C"``; ``3200`` or ``"3200"`` -> ``"3200"``."""
    key = str(mode).strip().upper()
    if key == "700":
        key = "700C"
    if key not in _MODES:
        raise ValueError(f"Unknown codec2 mode {mode!r}; choose one of {', '.join(_MODES)}.")
    return key


def token_widths(mode: int | str) -> tuple[int, ...]:
    """Bit width of each token of one codec2 frame (sums to codec2's bits_per_frame)."""
    return tuple(sum(t) for t in _MODES[canonical_mode(mode)][2])


def _to_gray(n: int) -> int:
    return n ^ (n >> 1)


def _from_gray(g: int) -> int:
    n, g = g, g >> 1
    while g:
        n ^= g
        g >>= 1
    return n


class _FramePacker:
    """Converts one codec2 frame between its packed bytes (MSB first) and its tokens."""

    def __init__(self, mode: str, bits_per_frame: int, bytes_per_frame: int):
        _, self.gray, self.tokens = _MODES[mode]
        self.nbits, self.nbytes = bits_per_frame, bytes_per_frame
        total = sum(sum(t) for t in self.tokens)
        if total != bits_per_frame:  # guards the table against a different libcodec2 build
            raise ValueError(f"codec2 {mode} token table covers {total} bits, libcodec2 says {bits_per_frame}.")

    def to_tokens(self, frame: bytes) -> list[int]:
        word = int.from_bytes(frame, "big") >> (8 * self.nbytes - self.nbits)
        pos, out = self.nbits, []
        for fields in self.tokens:
            value = 0
            for w in fields:
                pos -= w
                f = (word >> pos) & ((1 << w) - 1)
                value = (value << w) | (_from_gray(f) if self.gray else f)
            out.append(value)
        return out

    def to_bytes(self, tokens: np.ndarray) -> bytes:
        word = 0
        for fields, value in zip(self.tokens, tokens.tolist()):
            shift = sum(fields)
            for w in fields:
                shift -= w
                f = (value >> shift) & ((1 << w) - 1)
                word = (word << w) | (_to_gray(f) if self.gray else f)
        return (word << (8 * self.nbytes - self.nbits)).to_bytes(self.nbytes, "big")


@dataclass
class Codec2State:
    """One direction's stream state: libcodec2's own C state (it carries across frames), plus, for
    the decoder, the phase-noise RNG seed (see :class:`_Codec2Rand`)."""

    c2: Any
    frames: int = 0  # codec2 frames processed so far
    rng: int = 1  # codec2's initial seed; the decoder swaps it in and out around every decode


def _new_state(mode: str) -> Codec2State:
    import pycodec2  # lazy: keeps `import streaming` numpy-only

    return Codec2State(c2=pycodec2.Codec2(_PYCODEC2_MODE[mode]))


class _Codec2Rand:
    """Per-stream control of libcodec2's phase RNG.

    codec2's decoder draws random phases from ``codec2_rand()``, whose state is one process-global
    ``static unsigned long next`` in sine.c (its own comment: "this should probably be in some states
    rather than a static"). Left alone, a decoder's output would depend on every other decoder in
    the process. We find ``next`` through the library's ELF symbol table, check read-only that it
    is the LCG ``codec2_rand`` advances, and swap each stream's seed in around its decode calls.
    If that fails (stripped or non-Linux build) decoding still works, only not reproducibly.
    """

    _instance: "_Codec2Rand | None" = None

    def __init__(self) -> None:
        import threading

        self.lock = threading.Lock()
        self.cell = None
        try:
            self.cell = self._locate()
        except Exception:  # any surprise: fall back to the shared RNG rather than touch memory
            self.cell = None

    @classmethod
    def get(cls) -> "_Codec2Rand":
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    @staticmethod
    def _locate():
        import ctypes
        import struct

        import pycodec2  # noqa: F401  (loads libcodec2 into the process)

        path = None
        with open("/proc/self/maps") as maps:
            for line in maps:
                parts = line.split()
                if len(parts) >= 6 and os.path.basename(parts[5]).startswith("libcodec2"):
                    path = parts[5]
                    break
        if path is None:
            return None
        with open(path, "rb") as f:
            data = f.read()
        if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:  # 64-bit little-endian only
            return None
        shoff = struct.unpack_from("<Q", data, 0x28)[0]
        shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
        sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
        syms: dict[str, list[tuple[int, int]]] = {}
        for sh in sections:
            if sh[1] != 2:  # SHT_SYMTAB (the full table, locals included)
                continue
            str_off = sections[sh[6]][4]
            for off in range(sh[4], sh[4] + sh[5], 24):
                name_i, _, _, _, value, size = struct.unpack_from("<IBBHQQ", data, off)
                name = data[str_off + name_i : data.index(b"\0", str_off + name_i)]
                if name in (b"next", b"codec2_rand"):
                    syms.setdefault(name.decode(), []).append((value, size))
        if "codec2_rand" not in syms or "next" not in syms:
            return None
        lib = ctypes.CDLL(path)
        base = ctypes.cast(lib.codec2_rand, ctypes.c_void_p).value - syms["codec2_rand"][0][0]
        for value, size in syms["next"]:
            if size != ctypes.sizeof(ctypes.c_ulong):
                continue
            cell = ctypes.c_ulong.from_address(base + value)
            old = cell.value
            r = lib.codec2_rand()
            new = (old * 1103515245 + 12345) & ((1 << 64) - 1)
            if cell.value == new and r == (new >> 16) & 0x7FFF:
                return cell
        return None


class Codec2Encoder(StreamingEncoder):
    """``(n * frame_samples,)`` float32 in [-1, 1] -> ``(n, Q)`` int64; bit-exact under any chunking."""

    def __init__(self, codec: "Codec2Codec"):
        self.spec, self._codec = codec.spec, codec
        self.reset()

    def reset(self) -> None:
        self.state = _new_state(self._codec.mode)

    def encode(self, pcm: np.ndarray) -> np.ndarray:
        pcm = self._codec.check_pcm(pcm)
        sub = self._codec.c2_samples
        # int16 like codec2 expects; clip first so out-of-range floats saturate instead of wrapping.
        ints = np.round(np.clip(pcm, -1.0, 1.0) * 32767.0).astype(np.int16)
        toks = []
        for i in range(0, len(ints), sub):
            # pycodec2.encode runs exactly one codec2 frame per call, so feed it frame by frame.
            toks.append(self._codec.packer.to_tokens(self.state.c2.encode(np.ascontiguousarray(ints[i : i + sub]))))
            self.state.frames += 1
        return np.asarray(toks, dtype=np.int64).reshape(-1, self.spec.num_codebooks)


class Codec2Decoder(StreamingDecoder):
    """``(n, Q)`` int -> ``(n * frame_samples,)`` float32; causal, bit-exact under any chunking."""

    def __init__(self, codec: "Codec2Codec"):
        self.spec, self._codec = codec.spec, codec
        self.reset()

    def reset(self) -> None:
        self.state = _new_state(self._codec.mode)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        codes = self._codec.check_codes(codes)
        per = len(self._codec.packer.tokens)
        frames = [self._codec.packer.to_bytes(row) for row in codes.reshape(-1, per)]
        rand, out = _Codec2Rand.get(), []
        with rand.lock:  # swap this stream's RNG seed in (see _Codec2Rand) for the whole call
            if rand.cell is not None:
                rand.cell.value = self.state.rng
            for frame in frames:
                out.append(self.state.c2.decode(frame))
            if rand.cell is not None:
                self.state.rng = rand.cell.value
        self.state.frames += len(frames)
        if not out:
            return np.zeros(0, dtype=np.float32)
        return (np.concatenate(out).astype(np.float32) / 32768.0).astype(np.float32)


class Codec2Codec(Codec):
    """Codec 2 at 8 kHz with tokens cut along its bit fields.

    Args:
        mode: 3200, 2400, 1600, 1400, 1300, 1200 or 700 / "700C" (default "700C").
        frame_ms: layout frame length, a whole multiple of the mode's codec2 frame (20 ms for
            3200/2400, 40 ms otherwise); default 80.
    """

    def __init__(self, mode: int | str = "700C", frame_ms: int = 80):
        import pycodec2  # lazy

        self.mode = canonical_mode(mode)
        c2_ms = _MODES[self.mode][0]
        if int(frame_ms) != frame_ms or frame_ms <= 0 or int(frame_ms) % c2_ms:
            raise ValueError(f"codec2 frame_ms must be a positive multiple of {c2_ms} ms for mode {self.mode}, got {frame_ms}.")
        probe = pycodec2.Codec2(_PYCODEC2_MODE[self.mode])
        self.c2_samples = probe.samples_per_frame()
        self.packer = _FramePacker(self.mode, probe.bits_per_frame(), probe.bytes_per_frame())
        self.c2_per_frame = int(frame_ms) // c2_ms
        sizes = tuple(1 << w for w in token_widths(self.mode)) * self.c2_per_frame
        self.spec = CodecSpec(
            name="codec2",
            sample_rate=SAMPLE_RATE,
            frame_samples=self.c2_samples * self.c2_per_frame,
            codebook_sizes=sizes,
            options={"mode": self.mode, "frame_ms": int(frame_ms)},
        )
        self._sizes = np.asarray(sizes, dtype=np.int64)

    def encoder(self) -> Codec2Encoder:
        return Codec2Encoder(self)

    def decoder(self) -> Codec2Decoder:
        return Codec2Decoder(self)

    def check_pcm(self, pcm: np.ndarray) -> np.ndarray:
        return check_pcm(pcm, self.spec)

    def check_codes(self, codes: np.ndarray) -> np.ndarray:
        return check_codes(codes, self._sizes, self.spec.name)


@register_codec("codec2")
def _build(**options: Any) -> Codec2Codec:
    return Codec2Codec(**options)
