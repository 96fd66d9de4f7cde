"""SNAC (package ``snac``, hubertsiuzdak/snac_24khz architecture): 24 kHz, 3 codebook levels.

One layout frame is one coarse frame: ``hop * vq_strides[0]`` samples (512 * 4 = 2048 at 24 kHz,
~85 ms), holding ``sum(vq_strides[0] / s)`` ids (1 + 2 + 4 = 7), flattened in the pre-order of the
code tree, which for [4, 2, 1] is Orpheus' order ``c, m0, f0, f1, m1, f2, f3``. Every codebook has
``codebook_size`` entries (4096).

SNAC is not causal (symmetric convolutions), so both halves work on windows:

- Decoder: for the frames it emits it decodes ``context_frames`` before them and
  ``lookahead_frames`` after them (the spec's ``lookahead_frames``: audio comes that many frames
  late, ``flush`` returns the rest), emits the centre and optionally crossfades the first
  ``crossfade_samples`` with the previous window's prediction of them. SNAC's decoder adds
  Gaussian noise (NoiseBlock); we replace it by the same noise indexed by absolute sample
  position, so a window and the one-shot decode draw identical noise and output is reproducible.
  The decoder's receptive field is architectural: about +-9.9 latent frames (+-2.5 coarse
  frames) for the snac_24khz rates/kernels/dilations, so C = L = 3 is float-exact (~1e-6) for any
  weights; the defaults C=3, L=2 (170 ms of delay) cut only the receptive field's right tail.
  Seam error vs one-shot decode, measured on the tests' config (snac_24khz rates, small widths,
  random weights; sine sweep + noise bursts; peak 0.95): C=3, L=2, 1-frame chunks: max abs
  7.6e-4 of peak, relative RMS 5.6e-5 (C=2, L=2: 1.5e-3 / 1.1e-4; C=2, L=1: 4.5e-2 / 7e-3).
  Bound asserted by the tests for the defaults: max abs < 1 % of the one-shot peak and relative
  RMS < 1e-3. Crossfading only adds error vs one-shot (the previous window's overhang is its
  least-informed part), so it is off by default; it can hide clicks at short look-ahead.
- Encoder: left-context windows only (``encoder_context_frames`` before the frame, nothing after),
  so ``n`` frames in give ``n`` frames of codes out. Its state is the buffered context PCM and each
  frame is encoded on its own, so streamed codes equal this codec's one-shot codes (``encode_all``)
  exactly, under any chunking (tested). They do NOT equal SNAC's full-context encode
  (``encode_one_shot``), which sees future audio: measured 29 % of ids equal (coarse 25 %) with
  random weights, whose codebooks are full of near-ties; with 2 frames of future context they
  agree 100 %, so the gap is the missing future alone. For offline targets (training data) use
  ``encode_one_shot``.

Real-time factor (encode + decode, one stream, 1-frame chunks, fp32, this shared 2-core CPU):
full-size snac_24khz architecture (19.8 M params, random weights) ~1.5 (C=2, 2 torch threads, lightly
loaded box) to ~3.6 (1 thread, box loaded by other jobs); tests' config ~0.2. Windowing costs
~(C + 1 + L)x the decoder's one-shot compute: not real time on this CPU; use a GPU.

Weights: ``weights_dir`` holds ``config.json`` plus ``pytorch_model.bin`` or ``model.safetensors``
(a local copy of hubertsiuzdak/snac_24khz); or ``config`` (overrides of the snac_24khz
architecture above) builds random weights from ``seed``, for tests.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
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

SNAC_24KHZ: dict[str, Any] = dict(
    sampling_rate=24000, encoder_dim=48, encoder_rates=[2, 4, 8, 8], decoder_dim=1024,
    decoder_rates=[8, 8, 4, 2], attn_window_size=None, codebook_size=4096, codebook_dim=8,
    vq_strides=[4, 2, 1], noise=True, depthwise=True,
)
WEIGHTS_HINT = (
    "pass weights_dir (CLI: --codec-weights DIR) containing config.json and pytorch_model.bin "
    "(or model.safetensors) of hubertsiuzdak/snac_24khz"
)
_NOISE_PERIOD = 1 << 16  # samples of fixed noise per NoiseBlock, repeated (2.7 s at 24 kHz)


def _load_model(weights_dir: str | None, config: dict | None, seed: int, device: str):
    import json

    import torch
    from snac import SNAC

    if weights_dir is not None:
        cfg_path = os.path.join(weights_dir, "config.json")
        bin_path = os.path.join(weights_dir, "pytorch_model.bin")
        st_path = os.path.join(weights_dir, "model.safetensors")
        if not os.path.isfile(cfg_path) or not (os.path.isfile(bin_path) or os.path.isfile(st_path)):
            raise ValueError(f"SNAC weights directory {weights_dir!r} lacks config.json or weights; {WEIGHTS_HINT}.")
        with open(cfg_path) as f:
            model = SNAC(**json.load(f))
        if os.path.isfile(st_path):
            from safetensors.torch import load_file

            state = load_file(st_path)
        else:
            state = torch.load(bin_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    elif config is not None:
        with torch.random.fork_rng(devices=[]):  # reproducible random weights, global RNG untouched
            torch.manual_seed(seed)
            model = SNAC(**{**SNAC_24KHZ, **config})
    else:
        raise ValueError(f"The snac codec needs weights: {WEIGHTS_HINT} (or config=... for random test weights).")
    if model.attn_window_size is not None:
        # Local attention works on fixed absolute blocks; windows would have to align with them.
        raise ValueError("The snac codec streams only attention-free SNAC models (attn_window_size=None, as snac_24khz).")
    noise = _install_positional_noise(model, seed)
    return model.to(device).eval(), noise


def _install_positional_noise(model, seed: int) -> list:
    """Replace each decoder NoiseBlock's fresh randn by fixed noise indexed by absolute position."""
    import torch
    from snac.layers import DecoderBlock, NoiseBlock

    class PositionalNoise(torch.nn.Module):
        def __init__(self, block: NoiseBlock, factor: int, gen: torch.Generator):
            super().__init__()
            self.linear = block.linear  # same weights (and state-dict key) as the NoiseBlock
            self.factor = factor  # samples at this layer per latent frame
            self.offset = 0  # absolute latent frame of the window start, set before each forward
            self.register_buffer("table", torch.randn(_NOISE_PERIOD, generator=gen), persistent=False)

        def forward(self, x):
            pos = (self.offset * self.factor + torch.arange(x.shape[-1], device=x.device)) % _NOISE_PERIOD
            return x + self.table[pos].to(x.dtype)[None, None] * self.linear(x)

    gen = torch.Generator().manual_seed(seed + 1)
    factor, installed = 1, []
    for blk, rate in zip([m for m in model.decoder.model if isinstance(m, DecoderBlock)], model.decoder_rates):
        factor *= rate
        for i, sub in enumerate(blk.block):
            if isinstance(sub, NoiseBlock):
                blk.block[i] = PositionalNoise(sub, factor, gen)
                installed.append(blk.block[i])
    return installed


def _tree_order(strides: list[int]) -> list[tuple[int, int]]:
    """(level, index within frame) per flattened slot: pre-order of the code tree (Orpheus order)."""
    for a, b in zip(strides, strides[1:]):
        if a % b:
            raise ValueError(f"snac vq_strides must each divide the previous one, got {strides}.")
    order: list[tuple[int, int]] = []

    def visit(level: int, idx: int) -> None:
        order.append((level, idx))
        if level + 1 < len(strides):
            r = strides[level] // strides[level + 1]
            for j in range(r):
                visit(level + 1, idx * r + j)

    visit(0, 0)
    return order


class SnacCodec(Codec):
    """SNAC with windowed streaming.

    Args:
        weights_dir: local directory to load (nothing is downloaded).
        config: dict of overrides of :data:`SNAC_24KHZ` for random weights (used when no weights_dir).
        seed: seed of the random weights and of the decoder's fixed noise.
        context_frames: decoder frames decoded before the emitted ones (default 3).
        lookahead_frames: decoder frames decoded after the emitted ones = output delay (default 2).
        crossfade_samples: samples at each seam blended with the previous window's prediction
            (default 0: with enough context/look-ahead it only adds error vs one-shot, see above).
        encoder_context_frames: past frames the encoder sees with each frame (default 2).
        device: torch device to run on (not part of the spec).
    """

    def __init__(
        self,
        weights_dir: str | None = None,
        config: dict | None = None,
        seed: int = 0,
        context_frames: int = 3,
        lookahead_frames: int = 2,
        crossfade_samples: int = 0,
        encoder_context_frames: int = 2,
        device: str = "cpu",
    ):
        self.model, self._noise = _load_model(weights_dir, config, seed, device)
        m = self.model
        self.strides = list(m.vq_strides)
        self.order = _tree_order(self.strides)
        self.latent_per_frame = self.strides[0]
        frame = int(m.hop_length) * self.latent_per_frame
        if min(context_frames, lookahead_frames, encoder_context_frames, crossfade_samples) < 0:
            raise ValueError("snac context/lookahead frames and crossfade samples must be >= 0.")
        if crossfade_samples > lookahead_frames * frame:
            raise ValueError(f"snac crossfade_samples must be <= lookahead_frames * {frame} (the previous window's overhang).")
        self.context, self.lookahead = int(context_frames), int(lookahead_frames)
        self.crossfade, self.enc_context = int(crossfade_samples), int(encoder_context_frames)
        self.device = device
        options: dict[str, Any] = dict(
            context_frames=self.context, lookahead_frames=self.lookahead,
            crossfade_samples=self.crossfade, encoder_context_frames=self.enc_context, seed=int(seed),
        )
        if weights_dir is None:
            options["config"] = dict(config or {})
        self.spec = CodecSpec(
            name="snac",
            sample_rate=int(m.sampling_rate),
            frame_samples=frame,
            codebook_sizes=(int(m.codebook_size),) * len(self.order),
            lookahead_frames=self.lookahead,
            options=options,
        )
        self._sizes = np.asarray(self.spec.codebook_sizes, dtype=np.int64)

    def encoder(self) -> "SnacEncoder":
        return SnacEncoder(self)

    def decoder(self) -> "SnacDecoder":
        return SnacDecoder(self)

    # -- flattening between SNAC's per-level code lists and (frames, Q) ---------------------------
    def flatten(self, levels: list[np.ndarray]) -> np.ndarray:
        """Per-level ``(n * s0/s_k,)`` arrays -> ``(n, Q)`` in tree pre-order."""
        n = len(levels[0])
        per = [lv.reshape(n, -1) for lv in levels]
        return np.stack([per[k][:, i] for k, i in self.order], axis=1).astype(np.int64)

    def unflatten(self, codes: np.ndarray) -> list[np.ndarray]:
        """``(n, Q)`` -> per-level ``(n * s0/s_k,)`` arrays."""
        n = len(codes)
        levels = [np.zeros((n, self.strides[0] // s), dtype=np.int64) for s in self.strides]
        for slot, (k, i) in enumerate(self.order):
            levels[k][:, i] = codes[:, slot]
        return [lv.reshape(-1) for lv in levels]

    # -- model calls ------------------------------------------------------------------------------
    def decode_window(self, codes: np.ndarray, start_frame: int) -> np.ndarray:
        """Decode ``(n, Q)`` frames as one window starting at absolute frame ``start_frame``."""
        import torch

        for mod in self._noise:
            mod.offset = start_frame * self.latent_per_frame
        lv = [torch.from_numpy(x)[None].to(self.device) for x in self.unflatten(codes)]
        with torch.inference_mode():
            return self.model.decode(lv)[0, 0].float().cpu().numpy()

    def encode_window(self, pcm: np.ndarray) -> np.ndarray:
        """Encode whole frames of PCM as one window (zero-padded at both ends) -> ``(n, Q)``."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(pcm, dtype=np.float32)).to(self.device)[None, None]
        with torch.inference_mode():
            _, codes = self.model.quantizer(self.model.encoder(x))
        return self.flatten([c[0].cpu().numpy() for c in codes])

    def decode_one_shot(self, codes: np.ndarray) -> np.ndarray:
        """Reference: all frames decoded in one window (what the streamed decoder approximates)."""
        codes = check_codes(codes, self._sizes, "snac")
        return self.decode_window(codes, 0) if len(codes) else np.zeros(0, dtype=np.float32)

    def encode_one_shot(self, pcm: np.ndarray) -> np.ndarray:
        """Reference: SNAC's full-context (non-causal) encode of the whole signal."""
        pcm = check_pcm(pcm, self.spec)
        return self.encode_window(pcm) if len(pcm) else np.zeros((0, self.spec.num_codebooks), np.int64)


@dataclass
class SnacEncoderState:
    """Past PCM the next frame's window starts with (at most encoder_context_frames frames)."""

    context: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    frames: int = 0


class SnacEncoder(StreamingEncoder):
    """``(n * frame_samples,)`` float32 -> ``(n, Q)`` int64; each frame encoded with its left context."""

    def __init__(self, codec: SnacCodec):
        self.spec, self._codec = codec.spec, codec
        self.reset()

    def reset(self) -> None:
        self.state = SnacEncoderState()

    def encode(self, pcm: np.ndarray) -> np.ndarray:
        pcm = check_pcm(pcm, self.spec)
        f, keep = self.spec.frame_samples, self._codec.enc_context * self.spec.frame_samples
        out = [np.zeros((0, self.spec.num_codebooks), dtype=np.int64)]
        for i in range(0, len(pcm), f):
            # One frame per model call: the window never depends on how the caller chunked the PCM.
            window = np.concatenate([self.state.context, pcm[i : i + f]])
            out.append(self._codec.encode_window(window)[-1:])
            self.state.context = window[len(window) - keep :] if keep else window[:0]
            self.state.frames += 1
        return np.concatenate(out)


@dataclass
class SnacDecoderState:
    """Buffered codes (context + not yet emitted) and the previous window's overhang."""

    codes: np.ndarray  # (k, Q): frames start .. start + k - 1
    start: int = 0  # absolute frame index of codes[0]
    emitted: int = 0  # frames whose audio has been returned
    overhang: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))  # crossfade source


class SnacDecoder(StreamingDecoder):
    """``(n, Q)`` int -> float32 PCM, ``lookahead_frames`` frames late; ``flush`` returns the rest."""

    def __init__(self, codec: SnacCodec):
        self.spec, self._codec = codec.spec, codec
        self.reset()

    def reset(self) -> None:
        self.state = SnacDecoderState(codes=np.zeros((0, self.spec.num_codebooks), dtype=np.int64))

    def decode(self, codes: np.ndarray) -> np.ndarray:
        codes = check_codes(codes, self._codec._sizes, "snac")
        st = self.state
        st.codes = np.concatenate([st.codes, codes])
        ready = st.start + len(st.codes) - self._codec.lookahead
        return self._emit(ready) if ready > st.emitted else np.zeros(0, dtype=np.float32)

    def flush(self) -> np.ndarray:
        """Emit the held-back frames, decoded against the stream's end (as one-shot decode does)."""
        end = self.state.start + len(self.state.codes)
        return self._emit(end) if end > self.state.emitted else np.zeros(0, dtype=np.float32)

    def _emit(self, upto: int) -> np.ndarray:
        st, codec, f = self.state, self._codec, self.spec.frame_samples
        w0 = max(st.start, st.emitted - codec.context)
        audio = codec.decode_window(st.codes[w0 - st.start :], w0)
        out = audio[(st.emitted - w0) * f : (upto - w0) * f].copy()
        n = min(len(st.overhang), len(out), codec.crossfade)
        if n:  # blend the seam with what the previous window predicted for these samples
            ramp = ((np.arange(n) + 0.5) / n).astype(np.float32)
            out[:n] = st.overhang[:n] * (1.0 - ramp) + out[:n] * ramp
        st.overhang = audio[(upto - w0) * f : (upto - w0) * f + codec.crossfade].copy()
        st.emitted = upto
        drop = max(0, upto - codec.context - st.start)  # keep only the next window's context
        st.codes, st.start = st.codes[drop:], st.start + drop
        return out


@register_codec("snac")
def _build(**options: Any) -> SnacCodec:
    return SnacCodec(**options)
