"""Mimi (transformers ``MimiModel``): 24 kHz, 80 ms frames, causal streaming encoder and decoder.

Streaming state, and what we had to add to transformers 5.24:

- Encoder: transformers streams it itself. ``MimiModel.encode(use_streaming=True)`` returns a
  ``MimiConv1dPaddingCache`` (the last ``kernel - stride`` inputs of every causal conv) and the
  encoder transformer's KV cache; we carry both. Streamed codes equal one-shot codes exactly.
- Decoder: transformers has no streaming decoder (its SEANet decoder always zero-pads every
  conv, and the transposed convs drop their right overlap). We run the decoder layer by layer
  with our own state: per causal conv the last ``padding_total`` inputs (instead of zero padding),
  per transposed conv the ``kernel - stride`` output overlap still waiting for the next frame's
  contribution (overlap-add, bias counted once), and the decoder transformer's KV cache. Streamed
  audio equals one-shot ``MimiModel.decode`` to float rounding (~1e-6; tests assert 1e-4).
- Bounded memory: both transformers' KV caches are ``DynamicCache(config=...)``, which for Mimi's
  ``sliding_window`` (250 steps = 10 s at 25 Hz) keeps only the last ``sliding_window - 1`` steps,
  exactly what the sliding-window attention of the one-shot model sees; conv state is fixed-size.

Codes are ``(frames, Q)``, column k = RVQ level k (k=0 semantic). The decoder accepts any
``1 <= q <= Q`` leading codebooks (dropping fine RVQ levels is valid).

Weights: ``weights_dir`` is a local directory with ``config.json`` and ``model.safetensors``
(a copy of kyutai/mimi), loaded with ``local_files_only=True``; or ``config`` (MimiConfig
overrides) builds random weights from ``seed``, for tests.

Real-time factor (encode + decode, one stream, 80 ms chunks, fp32, this shared 2-core CPU):
full-size random ``MimiConfig()`` (79 M params) ~1.7 (2 torch threads, lightly loaded box) to
~2.2 (1 thread, box loaded by other jobs): not real time on this CPU, use a GPU; the tests' tiny
config ~0.06. Per-frame calls are small: on a busy 2-core box torch's intra-op threads can cost
several x, so the tests pin one thread.
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

WEIGHTS_HINT = "pass weights_dir (CLI: --codec-weights DIR) containing config.json and model.safetensors of kyutai/mimi"


def _load_model(weights_dir: str | None, config: dict | None, seed: int, device: str):
    import torch
    from transformers import MimiConfig, MimiModel

    if weights_dir is not None:
        files = set(os.listdir(weights_dir)) if os.path.isdir(weights_dir) else set()
        if "config.json" not in files or not files & {"model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"}:
            raise ValueError(f"Mimi weights directory {weights_dir!r} lacks config.json or model weights; {WEIGHTS_HINT}.")
        model = MimiModel.from_pretrained(weights_dir, local_files_only=True)
    elif config is not None:
        cfg = dict(config)
        # Mimi's upsampler is depthwise (groups == hidden_size); keep that when a test shrinks it.
        cfg.setdefault("upsample_groups", cfg.get("hidden_size", 512))
        with torch.random.fork_rng(devices=[]):  # reproducible random weights, global RNG untouched
            torch.manual_seed(seed)
            model = MimiModel(MimiConfig(**cfg))
    else:
        raise ValueError(f"The mimi codec needs weights: {WEIGHTS_HINT} (or config=... for random test weights).")
    return model.to(device).eval()


class MimiCodec(Codec):
    """Mimi with ``Q`` RVQ codebooks.

    Args:
        num_quantizers: Q, codebooks per frame (num_semantic_quantizers..config.num_quantizers), default 8.
        weights_dir: local directory to load (nothing is downloaded).
        config: dict of ``MimiConfig`` overrides for random weights (used when no weights_dir).
        seed: seed of the random weights built from ``config``.
        device: torch device to run on (not part of the spec).
    """

    def __init__(
        self,
        num_quantizers: int = 8,
        weights_dir: str | None = None,
        config: dict | None = None,
        seed: int = 0,
        device: str = "cpu",
    ):
        self.model = _load_model(weights_dir, config, seed, device)
        cfg = self.model.config
        lo = int(cfg.num_semantic_quantizers)
        if not lo <= num_quantizers <= cfg.num_quantizers:
            raise ValueError(f"mimi num_quantizers must be in {lo}..{cfg.num_quantizers}, got {num_quantizers}.")
        if cfg.audio_channels != 1 or not cfg.use_causal_conv or cfg.trim_right_ratio != 1.0:
            raise ValueError("mimi streaming needs a mono, causal model with trim_right_ratio=1.0 (as kyutai/mimi).")
        self.device = device
        options: dict[str, Any] = {"num_quantizers": int(num_quantizers)}
        if weights_dir is None:
            options.update(config=dict(config or {}), seed=int(seed))
        self.spec = CodecSpec(
            name="mimi",
            sample_rate=int(cfg.sampling_rate),
            frame_samples=int(cfg.frame_size),
            codebook_sizes=(int(cfg.codebook_size),) * int(num_quantizers),
            options=options,
        )
        self._sizes = np.asarray(self.spec.codebook_sizes, dtype=np.int64)

    def encoder(self) -> "MimiEncoder":
        return MimiEncoder(self)

    def decoder(self) -> "MimiDecoder":
        return MimiDecoder(self)


@dataclass
class MimiEncoderState:
    """Carried between encode calls: conv padding cache and encoder-transformer KV cache."""

    padding_cache: Any = None  # transformers MimiConv1dPaddingCache
    kv: Any = None  # transformers DynamicCache (sliding window)
    frames: int = 0


class MimiEncoder(StreamingEncoder):
    """``(n * frame_samples,)`` float32 -> ``(n, Q)`` int64, identical under any chunking."""

    def __init__(self, codec: MimiCodec):
        self.spec, self._codec = codec.spec, codec
        self.reset()

    def reset(self) -> None:
        self.state = MimiEncoderState()

    def encode(self, pcm: np.ndarray) -> np.ndarray:
        import torch

        pcm = check_pcm(pcm, self.spec)
        q = self.spec.num_codebooks
        if len(pcm) == 0:
            return np.zeros((0, q), dtype=np.int64)
        x = torch.from_numpy(np.ascontiguousarray(pcm)).to(self._codec.device)[None, None]
        with torch.inference_mode():
            out = self._codec.model.encode(
                x,
                num_quantizers=q,
                encoder_cache=self.state.kv,
                padding_cache=self.state.padding_cache,
                use_streaming=True,
                return_dict=True,
            )
        self.state.kv, self.state.padding_cache = out.encoder_cache, out.padding_cache
        self.state.frames += len(pcm) // self.spec.frame_samples
        return out.audio_codes[0].T.cpu().numpy().astype(np.int64)


@dataclass
class MimiDecoderState:
    """Carried between decode calls (see the module docstring)."""

    kv: Any = None  # decoder-transformer DynamicCache (sliding window)
    conv_tails: dict[str, Any] = field(default_factory=dict)  # causal conv -> last padding_total inputs
    convtr_tails: dict[str, Any] = field(default_factory=dict)  # transposed conv -> pending overlap
    frames: int = 0


class MimiDecoder(StreamingDecoder):
    """``(n, q)`` int, ``1 <= q <= Q`` -> ``(n * frame_samples,)`` float32; causal (no look-ahead)."""

    def __init__(self, codec: MimiCodec):
        from transformers.models.mimi.modeling_mimi import MimiConv1d, MimiConvTranspose1d, MimiResnetBlock

        self.spec, self._codec = codec.spec, codec
        self._types = (MimiConv1d, MimiConvTranspose1d, MimiResnetBlock)
        dec = codec.model.decoder
        self._names = {id(m): n for n, m in dec.named_modules()}
        self.reset()

    def reset(self) -> None:
        self.state = MimiDecoderState()

    def decode(self, codes: np.ndarray) -> np.ndarray:
        import torch
        from transformers.cache_utils import DynamicCache

        codes = check_codes(codes, self._codec._sizes, "mimi", min_q=1)
        if len(codes) == 0:
            return np.zeros(0, dtype=np.float32)
        model, st = self._codec.model, self.state
        dec = model.decoder
        with torch.inference_mode():
            c = torch.from_numpy(np.ascontiguousarray(codes.T)).to(self._codec.device)[None]
            h = model.quantizer.decode(c)  # (1, hidden, n)
            if dec.upsample is not None:
                h = self._conv_tr(dec.upsample, h)
            if st.kv is None:
                st.kv = DynamicCache(config=dec.decoder_transformer.config)
            h = dec.decoder_transformer(h.transpose(1, 2), cache=st.kv, use_cache=True).last_hidden_state
            h = h.transpose(1, 2)
            for layer in dec.decoder_seanet.layers:
                h = self._layer(layer, h)
        st.frames += len(codes)
        return h[0, 0].float().cpu().numpy()

    def _layer(self, layer, h):
        conv, conv_tr, resnet = self._types
        if isinstance(layer, conv):
            return self._conv(layer, h)
        if isinstance(layer, conv_tr):
            return self._conv_tr(layer, h)
        if isinstance(layer, resnet):
            y = h
            for sub in layer.block:
                y = self._layer(sub, y)
            return self._layer(layer.shortcut, h) + y
        return layer(h)  # ELU, Identity: stateless

    def _conv(self, m, h):
        """Causal conv: prepend the previous inputs instead of the one-shot zero (or edge) padding."""
        import torch

        if int(m.conv.stride[0]) != 1:
            raise ValueError("mimi streaming decoder expects stride-1 convolutions in the SEANet decoder.")
        pad = int(m.padding_total)
        if pad:
            key = self._names[id(m)]
            prev = self.state.conv_tails.get(key)
            if prev is None:  # start of stream: what one-shot padding would have put there
                prev = h[..., :1].expand(-1, -1, pad) if m.pad_mode == "replicate" else h.new_zeros(h.shape[0], h.shape[1], pad)
            h = torch.cat([prev, h], dim=-1)
            self.state.conv_tails[key] = h[..., -pad:]
        return m.conv(h)

    def _conv_tr(self, m, h):
        """Causal transposed conv: emit ``n * stride`` samples, hold the overlap for the next call."""
        y = m.conv(h)
        n_out = h.shape[-1] * int(m.conv.stride[0])
        key = self._names[id(m)]
        prev = self.state.convtr_tails.get(key)
        if prev is not None:
            if m.conv.bias is not None:  # the held tail already includes the bias once
                prev = prev - m.conv.bias[None, :, None]
            y = y.clone()
            y[..., : prev.shape[-1]] += prev
        self.state.convtr_tails[key] = y[..., n_out:]
        return y[..., :n_out]


@register_codec("mimi")
def _build(**options: Any) -> MimiCodec:
    return MimiCodec(**options)
