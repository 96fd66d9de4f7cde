"""fsq: the project's own learned, streaming, low-token-rate speech codec (16 kHz).

Architecture (all causal; every layer carries explicit streaming state)::

    PCM 16 kHz --causal log-mel (window ends at each 10 ms hop)--> (80, T) at 100 Hz
      -> causal conv + ConvNeXt blocks (LayerNorm over channels only)
      -> fold ``latent_hops`` hops into one latent (kernel = stride, never reaches past it)
      -> FSQ (finite scalar quantization, Mentzer et al. 2023): ``groups`` groups of
         ``len(levels)`` scalars, each rounded to one of ``levels[i]`` values; one group = one id
         in ``[0, prod(levels))``; no codebook, so no collapse
    ids --> unfold each latent to ``latent_hops`` hop vectors -> causal conv + ConvNeXt blocks
      -> Vocos-style ISTFT head (log-magnitude + phase per hop, ``n_fft = 3 * hop``)
      -> overlap-add; a hop's samples are final once every window covering them is out.

Timing: a layout frame is ``frame_hops`` hops (default 8 x 10 ms = 80 ms) and holds
``frame_hops / latent_hops`` latents of ``groups`` ids each, so ``Q = groups * frame_hops /
latent_hops`` (default 2 x 2 = 4 ids per 80 ms, 4096 values each: 48 bit per frame, 600 bit/s).
Column ``k = latent_in_frame * groups + group``. The encoder needs a whole frame; the decoder is
causal (``lookahead_frames = 0``) and its output is the input delayed by ``n_fft - hop`` samples
(20 ms by default; ``FSQCodec.delay_samples``, also in the spec's options): with that delay every
output sample's ISTFT windows are complete when its frame's codes arrive, so streamed decode is
one-shot decode (to float rounding, < 1e-5) with no seams.

Weights: ``weights_dir`` is a local directory with ``config.json`` (an :class:`FSQConfig`) and
``model.safetensors``; with neither ``weights_dir`` nor ``config`` the trained weights shipped in
``streaming/codecs/assets/fsq`` are used when present. ``config`` (a dict of FSQConfig fields) with
``seed`` builds random weights (tests, training). Nothing is ever downloaded. Trained weights are named in
the spec's options by ``weights_sha256`` (16 hex digits of the file's SHA-256), so a model's layout records
which weights it heard, and loading it over other weights is refused with a clear error.

Speed: measure with ``duplex codec eval`` (the card has the table). Per-frame calls are small;
on a busy 2-core box pin one torch thread (the tests do).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
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

ASSETS_DIR = Path(__file__).resolve().parent / "assets" / "fsq"
WEIGHTS_HINT = (
    "pass weights_dir (a local directory with config.json and model.safetensors written by "
    "`duplex codec train`), or config=... for random weights"
)


@dataclass
class FSQConfig:
    """Shape of an fsq codec (saved as ``config.json`` beside its weights)."""

    sample_rate: int = 16000
    hop: int = 160  # samples per hop (10 ms); the encoder's and decoder's time step
    frame_hops: int = 8  # hops per layout frame (80 ms)
    latent_hops: int = 4  # hops per latent (40 ms); frame_hops % latent_hops == 0
    enc_stride: int = 2  # mel hops stacked into one encoder step (20 ms); latent_hops % enc_stride == 0
    n_mels: int = 80
    mel_win: int = 400  # encoder analysis window (25 ms), ends at each hop's end
    mel_fft: int = 512
    n_fft: int = 480  # decoder ISTFT window; output delay = n_fft - hop
    levels: list[int] = field(default_factory=lambda: [8, 8, 8, 8])  # FSQ levels of one group (one id)
    groups: int = 2  # ids per latent
    enc_dim: int = 192
    enc_blocks: int = 3
    dec_dim: int = 192
    dec_blocks: int = 4
    kernel: int = 7  # depthwise kernel of the ConvNeXt blocks
    mlp_mult: int = 3

    def __post_init__(self) -> None:
        self.levels = [int(x) for x in self.levels]
        if self.frame_hops % self.latent_hops:
            raise ValueError(f"fsq frame_hops ({self.frame_hops}) must be a multiple of latent_hops ({self.latent_hops}).")
        if self.latent_hops % self.enc_stride:
            raise ValueError(f"fsq latent_hops ({self.latent_hops}) must be a multiple of enc_stride ({self.enc_stride}).")
        if self.n_fft < self.hop or self.mel_win < self.hop or self.mel_fft < self.mel_win:
            raise ValueError("fsq needs hop <= n_fft and hop <= mel_win <= mel_fft.")
        if not self.levels or min(self.levels) < 2 or self.groups < 1:
            raise ValueError(f"fsq levels must be >= 2 each and groups >= 1, got levels={self.levels} groups={self.groups}.")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FSQConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"Unknown fsq config keys {unknown}; known: {sorted(known)}.")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def frame_samples(self) -> int:
        return self.hop * self.frame_hops

    @property
    def latents_per_frame(self) -> int:
        return self.frame_hops // self.latent_hops

    @property
    def ids_per_frame(self) -> int:
        return self.latents_per_frame * self.groups

    @property
    def codebook_size(self) -> int:
        return int(np.prod(self.levels))

    @property
    def delay_samples(self) -> int:
        return self.n_fft - self.hop


# ----------------------------------------------------------------------------------------------
# The torch model. Every streaming layer maps (x, state) -> (y, new_state); state None = silence
# before the stream, so one-shot is streaming from a zero state and the two agree by construction.


def _torch():
    import torch

    return torch


def mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """Slaney-style triangular mel filters, ``(n_mels, n_fft // 2 + 1)`` (no librosa needed)."""
    fmax = fmax or sr / 2

    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10 ** (np.asarray(m) / 2595.0) - 1.0)

    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    pts = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fb = np.zeros((n_mels, len(freqs)))
    for i in range(n_mels):
        lo, c, hi = pts[i], pts[i + 1], pts[i + 2]
        fb[i] = np.maximum(0, np.minimum((freqs - lo) / (c - lo), (hi - freqs) / (hi - c)))
        fb[i] *= 2.0 / (hi - lo)
    return fb.astype(np.float32)


def causal_log_mel(pcm, state, window, filterbank, hop: int, n_fft: int, eps: float):
    """Log mel power of PCM ``(B, n*hop)`` -> ``(B, n, n_mels)``, each window (``len(window)`` samples) ending
    at its hop's end; ``state`` ``(B, len(window) - hop)`` is the samples before ``pcm`` (None: silence).
    Returns the frames and the next state, so chunked calls equal one call."""
    torch = _torch()
    ctx = len(window) - hop
    if state is None:
        state = pcm.new_zeros(pcm.shape[0], ctx)
    x = torch.cat([state, pcm], dim=-1)
    frames = x.unfold(-1, len(window), hop) * window  # (B, n, win)
    mel = torch.matmul(torch.fft.rfft(frames, n=n_fft).abs() ** 2, filterbank.T)
    return torch.log(mel + eps), x[:, -ctx:]


def build_model(cfg: FSQConfig):
    """The torch module (built lazily so ``import streaming`` stays numpy-only)."""
    torch = _torch()
    nn = torch.nn
    F = torch.nn.functional

    class CausalConv(nn.Conv1d):
        """Conv1d that sees only the past: state = the last ``(kernel - 1) * dilation`` inputs."""

        def ctx(self) -> int:
            return self.kernel_size[0] - 1

        def forward(self, x, state=None):  # x (B, C, T)
            n = self.ctx()
            if n == 0:
                return self._conv(x), None
            if state is None:
                state = x.new_zeros(x.shape[0], x.shape[1], n)
            x = torch.cat([state, x], dim=-1)
            return self._conv(x), x[..., -n:]

        def _conv(self, x):
            # unfold + einsum: several x faster than mkldnn/thnn for the short per-frame inputs
            # of streaming (and the same arithmetic for training); dilation 1 only.
            k = self.kernel_size[0]
            cols = x.unfold(-1, k, 1)  # (B, C, T, k)
            if self.groups == self.in_channels == self.out_channels:
                y = torch.einsum("bctk,ck->bct", cols, self.weight[:, 0])
            else:
                y = torch.einsum("bctk,ock->bot", cols, self.weight)
            return y + self.bias[:, None]

    class Block(nn.Module):
        """Causal ConvNeXt block: depthwise causal conv, LayerNorm over channels, pointwise MLP."""

        def __init__(self, dim: int, kernel: int, mult: int):
            super().__init__()
            self.dw = CausalConv(dim, dim, kernel, groups=dim)
            self.norm = nn.LayerNorm(dim)
            self.pw1 = nn.Linear(dim, dim * mult)
            self.pw2 = nn.Linear(dim * mult, dim)
            self.gamma = nn.Parameter(torch.full((dim,), 0.1))

        def forward(self, x, state=None):  # (B, C, T)
            h, state = self.dw(x, state)
            h = self.norm(h.transpose(1, 2))
            h = self.pw2(F.gelu(self.pw1(h))) * self.gamma
            return x + h.transpose(1, 2), state

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.cfg = cfg
            d = len(cfg.levels) * cfg.groups
            self.register_buffer("mel_fb", torch.from_numpy(mel_filterbank(cfg.sample_rate, cfg.mel_fft, cfg.n_mels)), persistent=False)
            self.register_buffer("mel_window", torch.hann_window(cfg.mel_win, periodic=True), persistent=False)
            self.register_buffer("syn_window", torch.hann_window(cfg.n_fft, periodic=True), persistent=False)
            # sum over overlapping frames of the squared synthesis window (periodic; ~constant for n_fft = k * hop)
            w2 = torch.hann_window(cfg.n_fft, periodic=True) ** 2
            env = torch.zeros(cfg.hop)
            for s in range(0, cfg.n_fft, cfg.hop):
                seg = w2[s : s + cfg.hop]
                env[: len(seg)] += seg
            self.register_buffer("ola_env", env.clamp_min(1e-3), persistent=False)
            self.enc_in = CausalConv(cfg.n_mels * cfg.enc_stride, cfg.enc_dim, 3)
            self.enc_blocks = nn.ModuleList(Block(cfg.enc_dim, cfg.kernel, cfg.mlp_mult) for _ in range(cfg.enc_blocks))
            fold = cfg.latent_hops // cfg.enc_stride
            self.enc_norm = nn.LayerNorm(cfg.enc_dim * fold)
            self.enc_out = nn.Linear(cfg.enc_dim * fold, d)
            self.dec_in = nn.Linear(d, cfg.dec_dim * cfg.latent_hops)
            self.dec_conv = CausalConv(cfg.dec_dim, cfg.dec_dim, 3)
            self.dec_blocks = nn.ModuleList(Block(cfg.dec_dim, cfg.kernel, cfg.mlp_mult) for _ in range(cfg.dec_blocks))
            self.dec_norm = nn.LayerNorm(cfg.dec_dim)
            self.head = nn.Linear(cfg.dec_dim, 2 * (cfg.n_fft // 2 + 1))
            levels = torch.tensor(cfg.levels * cfg.groups, dtype=torch.float32)
            self.register_buffer("levels", levels, persistent=False)
            basis = torch.tensor(np.cumprod([1] + cfg.levels[:-1]).tolist(), dtype=torch.long)
            self.register_buffer("basis", basis, persistent=False)

        # ---- encoder -------------------------------------------------------------------------
        def log_mel(self, pcm, state=None):
            """(B, n*hop) -> (B, n_mels, n) with each window ending at its hop's end."""
            c = self.cfg
            mel, state = causal_log_mel(pcm, state, self.mel_window, self.mel_fb, c.hop, c.mel_fft, 1e-5)
            return mel.transpose(1, 2), state

        def encode_latent(self, pcm, state=None):
            """(B, n*latent_hops*hop) -> continuous pre-quantization latent (B, N, d), state."""
            c = self.cfg
            st = state or {}
            mel, s_mel = self.log_mel(pcm, st.get("mel"))
            B, M, T = mel.shape
            mel = mel.transpose(1, 2).reshape(B, T // c.enc_stride, M * c.enc_stride).transpose(1, 2)
            h, s_in = self.enc_in((mel + 5.0) / 4.0, st.get("in"))
            new = {"mel": s_mel, "in": s_in}
            for i, blk in enumerate(self.enc_blocks):
                h, new[f"b{i}"] = blk(h, st.get(f"b{i}"))
            B, C, T = h.shape
            fold = c.latent_hops // c.enc_stride
            h = h.transpose(1, 2).reshape(B, T // fold, C * fold)
            return self.enc_out(self.enc_norm(h)), new

        def fsq(self, z):
            """Bound, round (straight-through) and scale to [-1, 1]. Returns (zq, integer digits)."""
            L = self.levels
            half_l = (L - 1) * (1 + 1e-3) / 2
            offset = torch.where(L % 2 == 0, 0.5, 0.0)
            shift = torch.atanh(offset / half_l)
            b = torch.tanh(z + shift) * half_l - offset
            r = b + (torch.round(b) - b).detach()
            half_w = torch.div(L, 2, rounding_mode="floor")
            digits = (torch.round(b) + half_w).long()
            return r / half_w, digits

        def digits_to_ids(self, digits):  # (B, N, groups*len) -> (B, N, groups)
            c = self.cfg
            d = digits.reshape(*digits.shape[:-1], c.groups, len(c.levels))
            return (d * self.basis).sum(-1)

        def ids_to_zq(self, ids):  # (B, N, groups) -> (B, N, d)
            c = self.cfg
            L = torch.tensor(c.levels, device=ids.device)
            digits = (ids.unsqueeze(-1) // self.basis) % L
            half_w = torch.div(L, 2, rounding_mode="floor")
            zq = (digits - half_w).float() / half_w
            return zq.reshape(*ids.shape[:-1], c.groups * len(c.levels))

        # ---- decoder -------------------------------------------------------------------------
        def decode_hidden(self, zq, state=None):
            """(B, N, d) -> per-hop ISTFT frames (B, N*latent_hops, n_fft), state."""
            c = self.cfg
            st = state or {}
            B, N, _ = zq.shape
            h = self.dec_in(zq).reshape(B, N * c.latent_hops, c.dec_dim).transpose(1, 2)
            h, s_conv = self.dec_conv(h, st.get("conv"))
            new = {"conv": s_conv}
            for i, blk in enumerate(self.dec_blocks):
                h, new[f"b{i}"] = blk(h, st.get(f"b{i}"))
            out = self.head(self.dec_norm(h.transpose(1, 2)))  # (B, T, 2F)
            logmag, phase = out.chunk(2, dim=-1)
            mag = torch.exp(logmag.clamp(max=6.0))
            spec = torch.complex(mag * torch.cos(phase), mag * torch.sin(phase))
            frames = torch.fft.irfft(spec, n=c.n_fft) * self.syn_window
            return frames, new

        def overlap_add(self, frames, tail=None):
            """Frames (B, T, n_fft) -> final samples (B, T*hop) and the new tail (B, n_fft-hop)."""
            c = self.cfg
            B, T, W = frames.shape
            if W % c.hop == 0:  # n_fft = k * hop: k shifted adds of (T, hop) blocks
                k = W // c.hop
                blocks = frames.reshape(B, T, k, c.hop)
                out = frames.new_zeros(B, T + k - 1, c.hop)
                for j in range(k):
                    out[:, j : j + T] += blocks[:, :, j]
                out = out.reshape(B, -1)
            else:
                out = F.fold(
                    frames.transpose(1, 2), output_size=(1, (T - 1) * c.hop + W), kernel_size=(1, W), stride=(1, c.hop)
                ).reshape(B, -1)
            keep = W - c.hop
            if tail is not None:
                out = torch.cat([out[:, :keep] + tail, out[:, keep:]], dim=-1)
            y = out[:, : T * c.hop] / self.ola_env.repeat(T)
            return y, out[:, T * c.hop :]

        def decode_zq(self, zq, state=None):
            st = state or {}
            frames, s_net = self.decode_hidden(zq, st.get("net"))
            y, tail = self.overlap_add(frames, st.get("tail"))
            return y, {"net": s_net, "tail": tail}

        def forward(self, pcm):
            """Training pass: (B, T) -> (reconstruction delayed by delay_samples, ids)."""
            z, _ = self.encode_latent(pcm)
            zq, digits = self.fsq(z)
            y, _ = self.decode_zq(zq)
            return y, self.digits_to_ids(digits)

    return Model()


# ----------------------------------------------------------------------------------------------
# The codec


def _load_model(weights_dir: str | os.PathLike | None, config: dict | None, seed: int,
                expected_digest: str | None = None):
    """``(model, cfg, digest)``: trained weights from ``weights_dir`` (``digest`` names them; weights other
    than ``expected_digest`` are refused), else random weights from ``config`` (``digest`` None)."""
    torch = _torch()
    digest = None
    if weights_dir is not None:
        wd = Path(weights_dir)
        if not (wd / "config.json").is_file() or not (wd / "model.safetensors").is_file():
            raise ValueError(f"fsq weights directory {str(wd)!r} lacks config.json or model.safetensors; {WEIGHTS_HINT}.")
        cfg = FSQConfig.from_dict(json.loads((wd / "config.json").read_text()))
        if config is not None and FSQConfig.from_dict(config) != cfg:
            raise ValueError(f"fsq config given with weights_dir {str(wd)!r} differs from its config.json.")
        from safetensors.torch import load

        data = (wd / "model.safetensors").read_bytes()  # read once: hashed and loaded
        digest = _digest(data)
        if expected_digest is not None and expected_digest != digest:
            # a model's layout made with other weights would silently mishear: refuse it
            raise ValueError(f"This model's layout was made with fsq weights {expected_digest}, but {str(wd)!r} "
                             f"holds {digest}; pass the weights it was made with (--codec-weights DIR).")
        model = build_model(cfg)
        model.load_state_dict(load(data))
    elif config is not None:
        cfg = FSQConfig.from_dict(dict(config))
        with torch.random.fork_rng(devices=[]):  # reproducible random weights; global RNG untouched
            torch.manual_seed(seed)
            model = build_model(cfg)
    else:
        raise ValueError(f"The fsq codec needs weights: {WEIGHTS_HINT}.")
    return model.eval(), cfg, digest


def save_weights(model, out_dir: str | os.PathLike) -> None:
    """Write ``config.json`` + ``model.safetensors`` (what ``weights_dir`` loads)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(model.cfg.to_dict(), indent=2) + "\n")
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))


def _digest(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()[:16]


def weights_digest(weights_dir: str | os.PathLike) -> str:
    """The first 16 hex digits of ``model.safetensors``' SHA-256: what a layout records to name its weights."""
    return _digest((Path(weights_dir) / "model.safetensors").read_bytes())


def shipped_weights_dir() -> Path | None:
    """The trained weights that ship with the project, if any."""
    return ASSETS_DIR if (ASSETS_DIR / "model.safetensors").is_file() else None


class FSQCodec(Codec):
    """The project's FSQ codec.

    Args:
        weights_dir: local directory with config.json + model.safetensors (nothing is downloaded).
        config: dict of :class:`FSQConfig` fields for random weights (used when no weights_dir).
        seed: seed of the random weights built from ``config``.
    With no arguments the shipped trained weights are loaded (``streaming/codecs/assets/fsq``).
    """

    def __init__(self, weights_dir: str | None = None, config: dict | None = None, seed: int = 0,
                 weights_sha256: str | None = None):
        options: dict[str, Any] = {}
        if weights_dir is None and config is None:
            shipped = shipped_weights_dir()
            if shipped is None:
                raise ValueError(
                    f"No trained fsq weights ship with this install ({ASSETS_DIR} is empty); {WEIGHTS_HINT}."
                )
            self.model, self.cfg, digest = _load_model(shipped, None, seed, weights_sha256)
            options["weights_sha256"] = digest
        elif weights_dir is not None:
            self.model, self.cfg, digest = _load_model(weights_dir, config, seed, weights_sha256)
            options.update(weights_dir=str(weights_dir), weights_sha256=digest)
        else:
            self.model, self.cfg, _ = _load_model(None, config, seed)
            options.update(config=self.cfg.to_dict(), seed=int(seed))
        c = self.cfg
        self.spec = CodecSpec(
            name="fsq",
            sample_rate=c.sample_rate,
            frame_samples=c.frame_samples,
            codebook_sizes=(c.codebook_size,) * c.ids_per_frame,
            lookahead_frames=0,
            options=options,
        )
        self._sizes = np.asarray(self.spec.codebook_sizes, dtype=np.int64)

    @property
    def delay_samples(self) -> int:
        """Decoded audio is the input delayed by this many samples (ISTFT overlap; 20 ms default)."""
        return self.cfg.delay_samples

    def encoder(self) -> FSQEncoder:
        return FSQEncoder(self)

    def decoder(self) -> FSQDecoder:
        return FSQDecoder(self)

    def check_pcm(self, pcm: np.ndarray) -> np.ndarray:
        pcm = check_pcm(pcm, self.spec)
        if not np.isfinite(pcm).all():
            raise ValueError("fsq encode got NaN or infinite samples.")
        return pcm

    def check_codes(self, codes: np.ndarray) -> np.ndarray:
        return check_codes(codes, self._sizes, self.spec.name)


class FSQEncoder(StreamingEncoder):
    """``(n * frame_samples,)`` float32 -> ``(n, Q)`` int64; identical codes under any chunking."""

    def __init__(self, codec: FSQCodec):
        self.spec, self._codec = codec.spec, codec
        self.reset()

    def reset(self) -> None:
        self.state: dict | None = None
        self.frames = 0

    def encode(self, pcm: np.ndarray) -> np.ndarray:
        torch = _torch()
        pcm = self._codec.check_pcm(pcm)
        q = self.spec.num_codebooks
        if not len(pcm):
            return np.zeros((0, q), dtype=np.int64)
        m = self._codec.model
        with torch.inference_mode():
            z, self.state = m.encode_latent(torch.from_numpy(np.ascontiguousarray(pcm))[None], self.state)
            _, digits = m.fsq(z)
            ids = m.digits_to_ids(digits)[0]  # (N, groups)
        self.frames += len(pcm) // self.spec.frame_samples
        return ids.reshape(-1, q).numpy().astype(np.int64)


class FSQDecoder(StreamingDecoder):
    """``(n, Q)`` int -> ``(n * frame_samples,)`` float32, causal, the input delayed by
    ``delay_samples``; streamed equals one-shot to float rounding."""

    def __init__(self, codec: FSQCodec):
        self.spec, self._codec = codec.spec, codec
        self.reset()

    def reset(self) -> None:
        self.state: dict | None = None
        self.frames = 0

    def decode(self, codes: np.ndarray) -> np.ndarray:
        torch = _torch()
        codes = self._codec.check_codes(codes)
        if not len(codes):
            return np.zeros(0, dtype=np.float32)
        m, c = self._codec.model, self._codec.cfg
        with torch.inference_mode():
            ids = torch.from_numpy(codes).reshape(1, -1, c.groups)
            y, self.state = m.decode_zq(m.ids_to_zq(ids), self.state)
        self.frames += len(codes)
        return y[0].numpy().astype(np.float32)


@register_codec("fsq")
def _build(**options: Any) -> FSQCodec:
    return FSQCodec(**options)
