"""``duplex codec train``: train the project's fsq speech codec (streaming/codecs/fsq.py).

Recipe: random 16 kHz crops of offline-synthesized speech (many voices, :mod:`agent.data`) plus the
real recordings that install; the model's output is the input delayed by ``delay_samples`` (ISTFT
overlap), so losses compare ``y[D:]`` with ``x[:-D]``:

- multi-resolution STFT loss (spectral convergence + L1 of log magnitudes, 3 resolutions),
- L1 of log-mel (80 bands),
- optional adversarial stage (``adversarial: true``; a multi-resolution spectrogram discriminator,
  hinge loss + feature matching) from ``adv_start`` steps.

Outputs in ``--out``: ``config.yaml`` (the resolved config), ``ckpt.pt`` (resume), ``best/`` and
``last/`` (``config.json`` + ``model.safetensors``: what ``load_codec("fsq", weights_dir=...)``
loads), ``history.jsonl`` and ``losses.png``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.training.schedule import run_progress, warmup_cosine

PRESET_DIR = Path(__file__).parent / "presets"


@dataclass
class DataConfig:
    dir: str = "runs/codec-data"  # a speech set (manifest.jsonl); built here if missing
    utterances: int = 3000  # training utterances to synthesize when building
    held_out_utterances: int = 10  # per held-out voice
    n_espeak: int = 120  # espeak-ng voices in the training set
    include_real: bool = True


@dataclass
class CodecTrainConfig:
    out: str = "runs/codec-fsq"
    data: DataConfig = field(default_factory=DataConfig)
    model: dict[str, Any] = field(default_factory=dict)  # FSQConfig overrides
    steps: int = 20000
    batch_size: int = 16
    segment_frames: int = 12  # crop length in codec frames (12 x 80 ms = 0.96 s)
    lr: float = 1e-3
    lr_min: float = 1e-4
    warmup: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    mel_weight: float = 2.0
    stft_weight: float = 1.0
    adversarial: bool = False
    adv_start: float = 5000  # step (>= 1) or fraction of the run (< 1) at which the adversarial stage starts
    adv_weight: float = 1.0
    fm_weight: float = 2.0
    eval_every: int = 250
    eval_batches: int = 4
    save_every: int = 250
    log_every: int = 10
    seed: int = 0
    threads: int = 1
    device: str = "auto"  # auto: cuda when available
    max_seconds: float = 0  # wall-clock budget (0 = none): the run ends, and the lr decays, by steps or time, whichever comes first

    def __post_init__(self) -> None:
        # Each would train nothing, loop on a modulo by zero, or fail in torch after the data is built.
        for name in ("steps", "batch_size", "segment_frames", "eval_every", "eval_batches", "save_every", "log_every",
                     "threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}.")
        for name in ("lr", "lr_min", "warmup", "weight_decay", "grad_clip", "max_seconds"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {v!r}.")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CodecTrainConfig:
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"Unknown codec train settings {unknown}; known: {sorted(known)}.")
        data = DataConfig(**d.pop("data", {}) or {})
        return cls(data=data, **d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_config(preset: str | None, overrides: list[str] | None = None, **direct: Any) -> CodecTrainConfig:
    """Preset (name in agent/presets as ``codec-NAME`` or a YAML path) + ``key.sub=value`` overrides."""
    from agent.config import apply_overrides, load_yaml

    d: dict[str, Any] = {}
    if preset:
        try:
            d = load_yaml(preset if Path(preset).is_file() else f"codec-{preset}")
        except FileNotFoundError:
            names = sorted(p.stem[len("codec-"):] for p in PRESET_DIR.glob("codec-*.yaml"))
            raise FileNotFoundError(f"No codec preset {preset!r}; presets: {', '.join(names)}.") from None
    d = apply_overrides(d, overrides or [])
    for k, v in direct.items():
        if v is not None:
            d[k] = v
    return CodecTrainConfig.from_dict(d)


# ---------------------------------------------------------------------------------------------- data


class SpeechCrops:
    """All of a split's audio in memory (int16), served as random fixed-length crops."""

    def __init__(self, rows: list[dict], rate: int, seg: int, seed: int):
        from agent.data.speech import load_wav

        self.seg = seg
        clips, weights = [], []
        for r in rows:
            pcm = load_wav(r["path"], rate)
            if len(pcm) < seg // 2:
                continue
            if len(pcm) < seg:
                pcm = np.pad(pcm, (0, seg - len(pcm)))
            clips.append((np.clip(pcm, -1, 1) * 32767).astype(np.int16))
            weights.append(len(pcm))
        if not clips:
            raise ValueError("The speech set has no usable audio for this split.")
        self.clips = clips
        self.p = np.asarray(weights, dtype=np.float64) / sum(weights)
        self.rng = np.random.default_rng(seed)
        self.seconds = sum(weights) / rate

    def batch(self, n: int, rng: np.random.Generator | None = None, gain: bool = True) -> np.ndarray:
        rng = rng or self.rng
        out = np.zeros((n, self.seg), dtype=np.float32)
        for i in range(n):
            c = self.clips[int(rng.choice(len(self.clips), p=self.p))]
            s = int(rng.integers(0, len(c) - self.seg + 1))
            x = c[s : s + self.seg].astype(np.float32) / 32767.0
            if gain:  # random level, -20..0 dB below a 0.95 peak
                peak = float(np.abs(x).max()) + 1e-6
                x = x * (0.95 / peak) * 10 ** (-rng.uniform(0, 20) / 20)
            out[i] = x
        return out


def ensure_data(cfg: CodecTrainConfig, progress: bool = True) -> Path:
    from agent.data.speech import build_speech_set

    manifest = Path(cfg.data.dir) / "manifest.jsonl"
    if not manifest.is_file():
        build_speech_set(cfg.data.dir, utterances=cfg.data.utterances, held_out_utterances=cfg.data.held_out_utterances,
                         n_espeak=cfg.data.n_espeak, seed=cfg.seed, include_real=cfg.data.include_real, progress=progress)
    return manifest


# ---------------------------------------------------------------------------------------------- losses


class Losses:
    def __init__(self, sample_rate: int, device):
        import torch

        from streaming.codecs.fsq import mel_filterbank

        self.torch = torch
        self.res = [(512, 128), (1024, 256), (256, 64)]
        self.windows = {n: torch.hann_window(n, device=device) for n, _ in self.res + [(1024, 160)]}
        self.mel_fb = torch.from_numpy(mel_filterbank(sample_rate, 1024, 80)).to(device)

    def _mag(self, x, n, hop):
        torch = self.torch
        s = torch.stft(x, n, hop, window=self.windows[n], return_complex=True)
        return s.abs().clamp_min(1e-7)

    def stft(self, y, x):
        torch = self.torch
        total = 0.0
        for n, hop in self.res:
            my, mx = self._mag(y, n, hop), self._mag(x, n, hop)
            sc = torch.linalg.norm(mx - my) / torch.linalg.norm(mx).clamp_min(1e-7)
            total = total + sc + (torch.log(my) - torch.log(mx)).abs().mean()
        return total / len(self.res)

    def log_mel(self, x):
        m = self._mag(x, 1024, 160) ** 2
        return self.torch.log(self.torch.matmul(self.mel_fb, m) + 1e-5)

    def mel(self, y, x):
        return (self.log_mel(y) - self.log_mel(x)).abs().mean()


def build_discriminator():
    """A small multi-resolution spectrogram discriminator (UnivNet/Vocos MRD-style)."""
    import torch
    from torch import nn

    class SpecD(nn.Module):
        def __init__(self, n_fft: int, hop: int):
            super().__init__()
            self.n_fft, self.hop = n_fft, hop
            self.register_buffer("win", torch.hann_window(n_fft), persistent=False)
            ch = 32
            self.convs = nn.ModuleList([
                nn.Conv2d(1, ch, (3, 9), padding=(1, 4)),
                nn.Conv2d(ch, ch, (3, 9), stride=(1, 2), padding=(1, 4)),
                nn.Conv2d(ch, ch, (3, 9), stride=(1, 2), padding=(1, 4)),
                nn.Conv2d(ch, ch, (3, 3), padding=(1, 1)),
            ])
            self.out = nn.Conv2d(ch, 1, (3, 3), padding=(1, 1))

        def forward(self, x):
            s = torch.stft(x, self.n_fft, self.hop, window=self.win, return_complex=True).abs()
            h = torch.log(s.clamp_min(1e-5)).unsqueeze(1).transpose(2, 3)  # (B, 1, T, F)
            feats = []
            for c in self.convs:
                h = torch.nn.functional.leaky_relu(c(h), 0.1)
                feats.append(h)
            return self.out(h), feats

    class MRD(nn.Module):
        def __init__(self):
            super().__init__()
            self.ds = nn.ModuleList([SpecD(512, 128), SpecD(1024, 256), SpecD(256, 64)])

        def forward(self, x):
            return [d(x) for d in self.ds]

    return MRD()


# ---------------------------------------------------------------------------------------------- training


def progress_of(cfg: CodecTrainConfig, step: int, seconds: float) -> float:
    return run_progress(step, cfg.steps, seconds, cfg.max_seconds)


def adversarial_on(cfg: CodecTrainConfig, step: int, progress: float) -> bool:
    return cfg.adversarial and (progress >= cfg.adv_start if cfg.adv_start < 1 else step >= cfg.adv_start)


def _lr(cfg: CodecTrainConfig, step: int, progress: float | None = None) -> float:
    """Warm-up, then cosine to ``lr_min`` over the run's progress (steps or the wall-clock budget)."""
    done = progress_of(cfg, step, 0.0) if progress is None else progress
    return warmup_cosine(step, done, peak=cfg.lr, floor=cfg.lr_min, warmup=cfg.warmup, steps=cfg.steps)


def plot_history(history: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plots are optional (pip install matplotlib)
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    tr = [h for h in history if h["kind"] == "train"]
    ev = [h for h in history if h["kind"] == "eval"]
    for key, ax in (("mel", axes[0]), ("stft", axes[1])):
        if tr:
            ax.plot([h["step"] for h in tr], [h[key] for h in tr], label="train", alpha=0.6)
        if ev:
            ax.plot([h["step"] for h in ev], [h[key] for h in ev], "o-", label="held-out voices")
        ax.set_xlabel("step")
        ax.set_title({"mel": "log-mel L1", "stft": "multi-resolution STFT"}[key])
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def train(cfg: CodecTrainConfig, resume: bool = True, progress: bool = True) -> dict:
    """Train (or resume) and return a summary dict."""
    import torch
    import yaml
    from tqdm import tqdm

    from agent.data.speech import read_manifest
    from streaming.codecs.fsq import FSQConfig, build_model, save_weights
    from think.device import resolve_device

    torch.set_num_threads(max(1, int(cfg.threads)))
    device = resolve_device(cfg.device)
    if device.type == "cuda":  # TF32 matmuls/convs: the norm for training on GPUs, ~free accuracy-wise here
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "ckpt.pt"
    if ckpt_path.is_file() and resume:
        saved = yaml.safe_load((out / "config.yaml").read_text()) if (out / "config.yaml").is_file() else {}
        if saved.get("model", {}) != cfg.model:
            raise ValueError(f"{ckpt_path} was trained with model {saved.get('model')}, not {cfg.model}; use another --out or --no-resume.")
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    mcfg = FSQConfig.from_dict(cfg.model)
    manifest = ensure_data(cfg, progress)
    rows = read_manifest(manifest)
    seg = cfg.segment_frames * mcfg.frame_samples
    train_set = SpeechCrops([r for r in rows if r["split"] == "train"], mcfg.sample_rate, seg, cfg.seed)
    held = [r for r in rows if r["split"] == "held_out"]
    eval_set = SpeechCrops(held, mcfg.sample_rate, seg, cfg.seed + 1) if held else None
    eval_batches = None
    if eval_set is not None:
        erng = np.random.default_rng(1234)
        eval_batches = [torch.from_numpy(eval_set.batch(cfg.batch_size, erng, gain=False)) for _ in range(cfg.eval_batches)]

    torch.manual_seed(cfg.seed)
    model = build_model(mcfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.8, 0.99), weight_decay=cfg.weight_decay)
    disc = opt_d = None
    if cfg.adversarial:
        disc = build_discriminator().to(device)
        opt_d = torch.optim.AdamW(disc.parameters(), lr=cfg.lr, betas=(0.8, 0.99))
    losses = Losses(mcfg.sample_rate, device)
    D = mcfg.delay_samples
    step, best, history, elapsed_before = 0, float("inf"), [], 0.0
    if ckpt_path.is_file() and resume:
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        if disc is not None and ck.get("disc"):
            disc.load_state_dict(ck["disc"])
            opt_d.load_state_dict(ck["opt_d"])
        step, best, history = ck["step"], ck["best"], ck["history"]
        elapsed_before = float(ck.get("seconds", 0.0))
        train_set.rng = np.random.default_rng(cfg.seed + step)

    def recon(x):
        y, ids = model(x)
        return y[:, D:], x[:, :-D] if D else x, ids

    def evaluate() -> dict:
        model.eval()
        mel = stft = 0.0
        used = set()
        with torch.no_grad():
            for xb in eval_batches:
                y, x, ids = recon(xb.to(device))
                mel += float(losses.mel(y, x))
                stft += float(losses.stft(y, x))
                used.update(ids.flatten().tolist())
        model.train()
        n = len(eval_batches)
        return {"kind": "eval", "step": step, "mel": mel / n, "stft": stft / n,
                "code_usage": len(used) / mcfg.codebook_size}

    def save(tag: str) -> None:
        save_weights(model, out / tag)
        (out / tag / "train_config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    def checkpoint() -> None:
        tmp = out / "ckpt.pt.tmp"
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "best": best,
                    "history": history, "seconds": elapsed(), "disc": disc.state_dict() if disc else None,
                    "opt_d": opt_d.state_dict() if opt_d else None}, tmp)
        os.replace(tmp, ckpt_path)
        save("last")
        with open(out / "history.jsonl", "w") as f:
            f.writelines(json.dumps(h) + "\n" for h in history)
        plot_history(history, out / "losses.png")

    model.train()
    bar = tqdm(total=cfg.steps, initial=step, desc="codec train", unit="step", disable=not progress, dynamic_ncols=True)
    t0, acc = time.time(), {"mel": 0.0, "stft": 0.0, "adv": 0.0, "n": 0}

    def elapsed() -> float:
        return elapsed_before + time.time() - t0

    done = progress_of(cfg, step, elapsed())
    while done < 1.0:
        lr = _lr(cfg, step, done)
        for g in opt.param_groups:
            g["lr"] = lr
        x = torch.from_numpy(train_set.batch(cfg.batch_size)).to(device)
        y, xt, _ = recon(x)
        l_mel, l_stft = losses.mel(y, xt), losses.stft(y, xt)
        loss = cfg.mel_weight * l_mel + cfg.stft_weight * l_stft
        use_adv = disc is not None and adversarial_on(cfg, step, done)
        if use_adv:
            # discriminator step
            for g in opt_d.param_groups:
                g["lr"] = lr
            d_loss = 0.0
            for (real, _), (fake, _) in zip(disc(xt), disc(y.detach())):
                d_loss = d_loss + torch.relu(1 - real).mean() + torch.relu(1 + fake).mean()
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            g_adv = fm = 0.0
            real_out = [(o, [f.detach() for f in fs]) for o, fs in disc(xt)]
            for (fake, ff), (_, rf) in zip(disc(y), real_out):
                g_adv = g_adv + torch.relu(1 - fake).mean()
                fm = fm + sum((a - b).abs().mean() for a, b in zip(ff, rf)) / len(ff)
            loss = loss + cfg.adv_weight * g_adv + cfg.fm_weight * fm
            acc["adv"] += g_adv.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        done = progress_of(cfg, step, elapsed())
        last = done >= 1.0
        acc["mel"] += l_mel.item()
        acc["stft"] += l_stft.item()
        acc["n"] += 1
        bar.update(1)
        if step % cfg.log_every == 0 or last:
            n = max(1, acc["n"])
            rec = {"kind": "train", "step": step, "mel": acc["mel"] / n, "stft": acc["stft"] / n,
                   "lr": lr, "sec": round(elapsed(), 1)}
            if use_adv:
                rec["adv"] = acc["adv"] / n
            history.append(rec)
            bar.set_postfix(mel=f"{rec['mel']:.3f}", stft=f"{rec['stft']:.3f}")
            acc = {"mel": 0.0, "stft": 0.0, "adv": 0.0, "n": 0}
        if eval_batches and (step % cfg.eval_every == 0 or last):
            ev = evaluate()
            history.append(ev)
            if progress:
                bar.write(f"step {step}: held-out mel {ev['mel']:.4f} stft {ev['stft']:.4f} "
                          f"code usage {ev['code_usage']:.2%}", file=sys.stderr)
            if ev["mel"] < best:
                best = ev["mel"]
                save("best")
        if step % cfg.save_every == 0 or last:
            checkpoint()
    bar.close()
    if not (out / "best" / "model.safetensors").is_file():
        save("best")
    checkpoint()
    return {"out": str(out), "steps": step, "best_eval_mel": best, "train_audio_seconds": train_set.seconds,
            "wall_seconds": round(elapsed(), 1),
            "params": sum(p.numel() for p in model.parameters())}


# ---------------------------------------------------------------------------------------------- CLI


def cmd_train(args) -> int:
    overrides = list(args.overrides)
    cfg = resolve_config(args.preset, overrides, out=args.out, steps=args.steps)
    if args.data:
        cfg.data.dir = args.data
    if args.threads:
        cfg.threads = args.threads
    summary = train(cfg, resume=not args.no_resume, progress=not args.quiet)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_eval(args) -> int:
    from agent.codec_eval import run_eval

    result = run_eval(weights=args.weights, data=args.data, max_utts=args.max_utts, codecs=args.codecs.split(","),
                      out_json=args.json, neural_speed=args.neural_speed, threads=args.threads,
                      progress=not args.quiet, beam_size=args.beam_size)
    print(result["table"])
    return 0


def add_codec_commands(sub) -> None:
    """``duplex codec train|eval`` (called from agent/cli.py's build_parser)."""
    codec = sub.add_parser("codec", help="train and evaluate the project's fsq speech codec")
    csub = codec.add_subparsers(dest="codec_cmd", required=True)
    p = csub.add_parser("train", help="train the fsq codec (resumes from --out/ckpt.pt)")
    p.add_argument("--preset", default="cpu", help="codec preset (agent/presets/codec-*.yaml: smoke, cpu, gpu) or a YAML path")
    p.add_argument("--out", help="output directory (checkpoints, weights, plots)")
    p.add_argument("--data", help="speech set directory (built there if it has no manifest.jsonl)")
    p.add_argument("--steps", type=int, help="total training steps")
    p.add_argument("--threads", type=int, help="torch threads (default 1)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set batch_size=8 --set model.dec_blocks=6")
    p.add_argument("--no-resume", action="store_true", help="start over even if --out has a checkpoint")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)
    p = csub.add_parser("eval", help="WER / mel distance / rate / speed table: fsq vs codec2")
    p.add_argument("--weights", help="fsq weights directory (default: the shipped weights)")
    p.add_argument("--data", default="runs/codec-eval-data", help="speech set directory with held-out voices (built there if missing)")
    p.add_argument("--max-utts", type=int, default=40, help="held-out utterances to score (default 40)")
    p.add_argument("--codecs", default="clean,fsq,codec2-3200,codec2-1300",
                   help="comma list of: clean, fsq, codec2-MODE (e.g. codec2-3200)")
    p.add_argument("--json", help="write the results as JSON here")
    p.add_argument("--neural-speed", action="store_true", help="also time random-weight SNAC and Mimi (slow)")
    p.add_argument("--beam-size", type=int, default=1, help="Whisper beam size (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the codecs (default 1)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)
