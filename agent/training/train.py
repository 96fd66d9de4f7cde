"""``duplex train``: train a duplex model on token shards (from scratch, or a LoRA adapter on a checkpoint).

Windows of ``window_frames`` slots are cut from the dialogues at slot boundaries and prefixed with the
session-start id, which is exactly what the serving context looks like after a rebase. The loss is
next-id cross-entropy on the ids the agent produces (its text slot and its audio codebooks); user ids
are context only. PAD in the text slot is down-weighted (it is most of the text slot). Per-stream losses
(text, each audio codebook) are logged.

Outputs in ``out``: the model (safetensors) + ``duplex_layout.json`` + ``tokenizer.json`` (a checkpoint
directory that ``--model`` accepts), or for LoRA ``adapter/`` (vLLM-servable: attention/MLP projections
only); ``train_config.json`` (resolved), ``metrics.jsonl``, ``loss.png``, and ``last/`` for ``--resume``.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agent.training.loss import stream_losses
from agent.training.tokenize import load_split, shard_layout
from think.checkpoint import load_checkpoint
from think.layout import DuplexLayout
from think.tokenizer import TOKENIZER_FILE

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class TrainConfig:
    """One training run.

    Attributes:
        shards: directory made by ``duplex data tokenize``.
        out: output directory.
        init: checkpoint directory to start from (``duplex model init`` output, or a trained model for LoRA);
            empty for "scratch" = a new random model of ``model_preset`` with the shards' layout.
        model_preset: shape preset for a new model (nano, tiny, small).
        mode: "scratch" (train every weight of ``init``) or "lora" (train a LoRA adapter on ``init``).
        window_frames: frames per training window.
        batch_size: windows per step.
        steps: optimizer steps.
        lr: peak learning rate (cosine decay after a linear warm-up).
        warmup: warm-up steps.
        weight_decay: AdamW weight decay.
        grad_clip: gradient norm clip.
        pad_weight: loss weight of PAD targets in the text slot.
        text_weight: loss weight of the text slot.
        audio_weight: loss weight of each agent audio codebook.
        eval_every: steps between evaluations on the val split (0 = only at the end).
        eval_windows: windows per evaluation.
        save_every: steps between resumable checkpoints.
        seed: random seed.
        threads: torch threads (None = torch's default).
        device: "auto" (CUDA when present, else CPU), "cpu", "cuda" or "cuda:N".
        autocast: bfloat16 mixed precision for the forward pass (weights and optimizer stay float32);
            2.3x the matmul rate of float32 on CPUs with AVX512-BF16, and the norm on GPUs.
        lora_r / lora_alpha / lora_dropout / lora_targets: adapter settings (mode "lora").
    """

    shards: str = ""
    out: str = ""
    init: str = ""
    model_preset: str = "tiny"
    mode: str = "scratch"
    window_frames: int = 120
    batch_size: int = 8
    steps: int = 1000
    lr: float = 2e-3
    warmup: int = 50
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    pad_weight: float = 0.3
    text_weight: float = 1.0
    audio_weight: float = 1.0
    eval_every: int = 200
    eval_windows: int = 32
    save_every: int = 200
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    autocast: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))

    def __post_init__(self) -> None:
        if self.mode not in ("scratch", "lora"):
            raise ValueError(f"mode must be scratch or lora, got {self.mode!r}.")
        if self.window_frames < 2 or self.batch_size < 1 or self.steps < 1:
            raise ValueError("window_frames >= 2, batch_size >= 1 and steps >= 1 are required.")
        bad = [t for t in self.lora_targets if t not in LORA_TARGETS]
        if bad:
            raise ValueError(f"LoRA may only target attention/MLP projections ({', '.join(LORA_TARGETS)}); "
                             f"vLLM cannot serve adapters on {', '.join(bad)} (no modules_to_save, no extra vocab).")


class WindowSampler:
    """Random slot-aligned windows from a list of sequences, with their loss weights."""

    def __init__(self, sequences: list[np.ndarray], layout: DuplexLayout, cfg: TrainConfig, seed: int) -> None:
        if not sequences:
            raise ValueError("No dialogues in this split of the shards.")
        self.seqs = sequences
        self.layout = layout
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)
        slot = layout.slot_size
        # Loss weight of predicting the id at slot position p (0 = user ids: context only).
        role_w = np.zeros(slot, dtype=np.float32)
        role_w[layout.q_in] = cfg.text_weight
        role_w[layout.q_in + 1:] = cfg.audio_weight
        self.role_w = role_w

    def window(self) -> tuple[np.ndarray, np.ndarray]:
        lay, slot, w = self.layout, self.layout.slot_size, self.cfg.window_frames
        seq = self.seqs[self.rng.integers(len(self.seqs))]
        frames = (len(seq) - 1) // slot
        start = int(self.rng.integers(0, max(1, frames - w + 1)))
        n = min(w, frames - start)
        body = seq[1 + start * slot: 1 + (start + n) * slot]
        ids = np.concatenate([[lay.special("session_start")], body]).astype(np.int64)
        weights = np.tile(self.role_w, n)
        text_pos = np.arange(n) * slot + lay.q_in
        weights[text_pos[body[text_pos] == lay.pad_id]] *= self.cfg.pad_weight
        return ids, weights  # weights[i] is the weight of predicting ids[i + 1]

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        items = [self.window() for _ in range(size)]
        length = max(len(ids) for ids, _ in items)
        x = np.full((size, length), self.layout.pad_id, dtype=np.int64)
        wts = np.zeros((size, length - 1), dtype=np.float32)
        for i, (ids, weights) in enumerate(items):
            x[i, : len(ids)] = ids
            wts[i, : len(weights)] = weights
        xt = torch.from_numpy(x)
        return xt[:, :-1], xt[:, 1:], torch.from_numpy(wts)


def forward_loss(model: Any, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, layout: DuplexLayout,
                 autocast: bool) -> tuple[torch.Tensor, dict[str, float]]:
    """Run the decoder body on ``x`` ``(B, T)`` and score ``y`` with the per-role head slices."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps the model
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        hidden = base.model(input_ids=x).last_hidden_state
        return stream_losses(hidden, base.get_output_embeddings().weight, y, w, layout)


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {cfg.device!r} was asked for but torch sees no CUDA device.")
    return torch.device(cfg.device)


def _to(cfg: TrainConfig, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    device = _device(cfg)
    return tuple(t.to(device, non_blocking=True) for t in tensors)


def _lr(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _build_model(cfg: TrainConfig, layout: DuplexLayout) -> Any:
    if not cfg.init:
        if cfg.mode == "lora":
            raise ValueError("LoRA training needs --init: the checkpoint the adapter is trained on.")
        from think.checkpoint import MODEL_PRESETS, init_from_config

        if cfg.model_preset not in MODEL_PRESETS:
            raise ValueError(f"Unknown model preset {cfg.model_preset!r}; choose one of {', '.join(MODEL_PRESETS)}.")
        cfg.init = str(init_from_config(Path(cfg.out) / "init", layout, MODEL_PRESETS[cfg.model_preset], cfg.seed))
    loaded = load_checkpoint(cfg.init)
    if loaded.layout != layout:
        raise ValueError(f"The shards were tokenized for another layout than {cfg.init}'s; re-run "
                         f"`duplex data tokenize --model {cfg.init}`.")
    model = loaded.model
    if cfg.mode == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=list(cfg.lora_targets), bias="none", task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    model.train()
    return model


@torch.no_grad()
def evaluate(model: Any, sampler: WindowSampler, cfg: TrainConfig) -> dict:
    model.eval()
    rng_state = sampler.rng.bit_generator.state
    sampler.rng = np.random.default_rng(12345)  # the same windows every evaluation
    losses, parts_acc = [], {}
    for _ in range(max(1, cfg.eval_windows // cfg.batch_size)):
        x, y, w = sampler.batch(cfg.batch_size)
        loss, parts = forward_loss(model, *_to(cfg, x, y, w), sampler.layout, cfg.autocast)
        losses.append(float(loss))
        for k, v in parts.items():
            parts_acc.setdefault(k, []).append(v)
    sampler.rng = np.random.default_rng()
    sampler.rng.bit_generator.state = rng_state
    model.train()
    return {"val_loss": round(float(np.mean(losses)), 4), **{f"val_{k}": round(float(np.mean(v)), 4)
                                                            for k, v in parts_acc.items()}}


def save_outputs(model: Any, cfg: TrainConfig, layout: DuplexLayout, where: Path) -> None:
    where.mkdir(parents=True, exist_ok=True)
    if cfg.mode == "lora":
        model.save_pretrained(where / "adapter")
        adapter_cfg = json.loads((where / "adapter" / "adapter_config.json").read_text())
        if adapter_cfg.get("modules_to_save"):
            raise ValueError("The adapter has modules_to_save; vLLM cannot serve it.")
    else:
        model.save_pretrained(where, safe_serialization=True)
        layout.save(where)
        shutil.copy(Path(cfg.init) / TOKENIZER_FILE, where / TOKENIZER_FILE)


def plot_losses(metrics_path: Path, out_png: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return  # plots need the [train] extra; the metrics file has the numbers
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train", alpha=0.7)
    if val:
        ax.plot(*zip(*val), "o-", label="val")
    ax.set_xlabel("step")
    ax.set_ylabel("weighted loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> dict:
    """Run training; returns the final metrics."""
    from tqdm import tqdm

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    layout = shard_layout(cfg.shards)
    model = _build_model(cfg, layout).to(_device(cfg))
    train_s = WindowSampler(load_split(cfg.shards, "train"), layout, cfg, cfg.seed)
    val_seqs = load_split(cfg.shards, "val") or load_split(cfg.shards, "test")
    val_s = WindowSampler(val_seqs, layout, cfg, cfg.seed + 1) if val_seqs else None
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    step = 0
    state_path = out / "last" / "trainer_state.pt"
    if resume:
        if not state_path.is_file():
            raise FileNotFoundError(f"Nothing to resume in {out} (no last/trainer_state.pt).")
        state = torch.load(state_path, weights_only=False, map_location=_device(cfg))
        model.load_state_dict(state["model"], strict=False)
        opt.load_state_dict(state["optimizer"])
        step = state["step"]
        train_s.rng.bit_generator.state = state["rng"]
    (out / "train_config.json").write_text(json.dumps({**asdict(cfg), "layout": layout.to_dict()}, indent=2) + "\n")
    metrics_path = out / "metrics.jsonl"
    if not resume and metrics_path.exists():
        metrics_path.unlink()
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train ({cfg.mode})", unit="step", disable=not progress)
    last: dict = {}
    t0 = time.perf_counter()
    while step < cfg.steps:
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg)
        x, y, w = train_s.batch(cfg.batch_size)
        loss, parts = forward_loss(model, *_to(cfg, x, y, w), layout, cfg.autocast)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        step += 1
        last = {"step": step, "loss": round(loss.item(), 4), "lr": round(opt.param_groups[0]["lr"], 6), **parts}
        if val_s is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps):
            last.update(evaluate(model, val_s, cfg))
        with metrics_path.open("a") as f:
            f.write(json.dumps(last) + "\n")
        bar.set_postfix(loss=last["loss"], text=parts.get("text"), val=last.get("val_loss"))
        bar.update(1)
        if step % cfg.save_every == 0 or step == cfg.steps:
            (out / "last").mkdir(exist_ok=True)
            torch.save({"model": {k: v for k, v in model.state_dict().items()}, "optimizer": opt.state_dict(),
                        "step": step, "rng": train_s.rng.bit_generator.state}, state_path)
    bar.close()
    model.eval()
    save_outputs(model.to("cpu"), cfg, layout, out)
    plot_losses(metrics_path, out / "loss.png")
    last["wall_seconds"] = round(time.perf_counter() - t0, 1)
    (out / "final_metrics.json").write_text(json.dumps(last, indent=2) + "\n")
    return last
