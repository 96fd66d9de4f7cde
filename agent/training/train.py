"""``duplex train``: train a duplex model on token shards (from scratch, or a LoRA adapter on a checkpoint).

Windows of ``window_frames`` slots are cut from the dialogues at slot boundaries and prefixed with the
session-start id, which is exactly what the serving context looks like after a rebase. The loss is
next-id cross-entropy on the ids the agent produces (its text slot and its audio codebooks); user ids
are context only. PAD in the text slot is down-weighted (it is most of the text slot). Per-stream losses
(text, each audio codebook) are logged.

Mode "speech-base" turns a base LLM checkpoint (``duplex model init --base``) into a speech LLM: LoRA on
the attention/MLP projections plus the embedding rows of the layout's new ids (specials + audio; the
output head's too when it is not tied). A gradient hook zeroes the rows of the base's text ids and the
embeddings take no weight decay, so those rows stay bit-identical and the base keeps its text ability.
At the end the adapter is merged (``merge_and_unload``) into a full checkpoint, the *speech base*, on
which later adapters are plain vLLM-servable LoRA (mode "lora"). ``mix`` draws each window from one
source: ``duplex`` (the layout's slot windows), ``listen`` / ``speak`` (per-turn alignment sequences,
``align.py``), ``text`` (text-only chats, ``textdata.py``) or ``heard_chat`` (duplex windows with new
questions and answers, ``heard_chat.py``): ``samplers.py`` draws the batches.

Outputs in ``out``: the model (safetensors) + ``duplex_layout.json`` + ``tokenizer.json`` (a checkpoint
directory that ``--model`` accepts), or for LoRA ``adapter/`` (vLLM-servable: attention/MLP projections
only); ``train_config.json`` (resolved), ``metrics.jsonl``, ``loss.png``, and ``last/`` for ``--resume``.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agent.training.decisions import decision_weight_table
from agent.training.loss import role_losses, stream_losses
from agent.training.schedule import run_progress, warmup_cosine
from agent.training.samplers import MixSampler, build_sampler
from agent.training.tokenize import shard_layout
from think.checkpoint import load_checkpoint
from think.device import resolve_device
from think.layout import DuplexLayout
from think.tokenizer import TOKENIZER_FILE

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MODES = ("scratch", "lora", "speech-base")
SOURCES = ("duplex", "listen", "speak", "text", "heard_chat")
INIT_FILE = "duplex_init.json"


@dataclass
class TrainConfig:
    """One training run.

    Attributes:
        shards: directory made by ``duplex data tokenize``.
        out: output directory.
        init: checkpoint directory to start from (``duplex model init`` output, or a trained model for LoRA);
            empty for "scratch" = a new random model of ``model_preset`` with the shards' layout.
        model_preset: shape preset for a new model (nano, tiny, tiny-fsq, small).
        mode: "scratch" (train every weight of ``init``), "lora" (train a LoRA adapter on ``init``) or
            "speech-base" (LoRA + the new ids' embedding rows on a base-LLM checkpoint, merged at the end).
        mix: source -> weight for drawing each window: ``duplex``, ``listen``, ``speak``, ``text``,
            ``heard_chat`` (see the module docstring); weights are normalised. Default: duplex windows only.
        window_frames: frames per training window.
        batch_size: windows per step.
        steps: optimizer steps.
        lr: peak learning rate (cosine decay after a linear warm-up).
        warmup: warm-up steps.
        weight_decay: AdamW weight decay (LoRA / model weights; never on speech-base embedding rows).
        grad_clip: gradient norm clip.
        pad_weight: loss weight of PAD targets in the text slot.
        decision_weights: loss weight multiplier of the agent's targets in the frames where the script takes
            the turn, waits through a pause, talks on through a backchannel or stops at an interruption, per
            kind (``decisions.py``: ``turn_end``, ``pause``, ``user_backchannel``, ``interruption``,
            ``agent_backchannel``); kinds left out: 1. Needs shards written since they store those frames.
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
        max_seconds: wall-clock budget (0 = none): the run ends, and the lr decays, by steps or by time,
            whichever comes first (for a leased GPU); time spent before a ``--resume`` counts.
        keep_best: save the weights of the evaluation with the lowest val loss instead of the last ones
            (small data overfits on long runs); ``final_metrics.json`` names the step.
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
    decision_weights: dict[str, float] = field(default_factory=dict)
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
    mix: dict[str, float] = field(default_factory=lambda: {"duplex": 1.0})
    max_seconds: float = 0
    keep_best: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}.")
        if not isinstance(self.mix, dict) or not self.mix:
            raise ValueError(f"mix must map sources ({', '.join(SOURCES)}) to weights, got {self.mix!r}.")
        bad_mix = [k for k in self.mix if k not in SOURCES]
        if bad_mix:
            raise ValueError(f"Unknown mix source(s) {', '.join(map(str, bad_mix))}; choose from {', '.join(SOURCES)}.")
        if any(not isinstance(v, (int, float)) or v < 0 for v in self.mix.values()) or sum(self.mix.values()) <= 0:
            raise ValueError(f"mix weights must be numbers >= 0 with a positive sum, got {self.mix!r}.")
        if not isinstance(self.decision_weights, dict) or any(
                not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0 for v in self.decision_weights.values()):
            raise ValueError(f"decision_weights must map decision kinds to numbers >= 0, got {self.decision_weights!r}.")
        decision_weight_table(self.decision_weights)  # names the unknown kinds
        if self.window_frames < 2 or self.batch_size < 1 or self.steps < 1:
            raise ValueError("window_frames >= 2, batch_size >= 1 and steps >= 1 are required.")
        if isinstance(self.lora_targets, str):  # --set lora_targets=q_proj: one target, not its letters
            self.lora_targets = [self.lora_targets]
        if not isinstance(self.lora_targets, list) or not self.lora_targets:  # --set lora_targets=5 (or [])
            raise ValueError(f"lora_targets must be a list of module names ({', '.join(LORA_TARGETS)}), "
                             f"got {self.lora_targets!r}.")
        # Each of these would crash mid-run (save_every=0: a modulo by zero), or train silently wrong
        # (a negative warm-up, eval_every or loss weight), after minutes of loading.
        limits = {"lr": (self.lr, 0, False), "save_every": (self.save_every, 1, True),
                  "lora_r": (self.lora_r, 1, True), "grad_clip": (self.grad_clip, 0, False),
                  "warmup": (self.warmup, 0, True), "eval_every": (self.eval_every, 0, True),
                  "eval_windows": (self.eval_windows, 1, True), "max_seconds": (self.max_seconds, 0, True),
                  "weight_decay": (self.weight_decay, 0, True), "pad_weight": (self.pad_weight, 0, True),
                  "text_weight": (self.text_weight, 0, True), "audio_weight": (self.audio_weight, 0, True),
                  "lora_alpha": (self.lora_alpha, 0, False), "lora_dropout": (self.lora_dropout, 0, True),
                  "threads": (0 if self.threads is None else self.threads, 0, True)}
        for name, (value, low, inclusive) in limits.items():
            if value < low or (value == low and not inclusive):
                raise ValueError(f"{name} must be {'>=' if inclusive else '>'} {low}, got {value}.")
        if self.lora_dropout >= 1:
            raise ValueError(f"lora_dropout must be below 1, got {self.lora_dropout}.")
        bad = [t for t in self.lora_targets if t not in LORA_TARGETS]
        if bad:
            raise ValueError(f"LoRA may only target attention/MLP projections ({', '.join(LORA_TARGETS)}); "
                             f"vLLM cannot serve adapters on {', '.join(map(str, bad))} (no modules_to_save, no extra vocab).")


def forward_loss(model: Any, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, layout: DuplexLayout,
                 autocast: bool, roles: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Run the decoder body on ``x`` ``(B, T)`` and score ``y`` with the per-role head slices (``roles``
    ``(B, T)`` per target, or by slot position when None: slot-aligned windows)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps the model
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        hidden = base.model(input_ids=x).last_hidden_state
        if roles is None:
            return stream_losses(hidden, base.get_output_embeddings().weight, y, w, layout)
        return role_losses(hidden, base.get_output_embeddings().weight, y, w, roles, layout)


def _device(cfg: TrainConfig) -> torch.device:
    return resolve_device(cfg.device)


def _to(cfg: TrainConfig, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    device = _device(cfg)
    return tuple(t.to(device, non_blocking=True) for t in tensors)


def _lr(step: int, cfg: TrainConfig, progress: float | None = None) -> float:
    """Warm-up, then cosine to 0.1 x ``lr`` over the run's progress (steps or the wall-clock budget)."""
    done = run_progress(step, cfg.steps) if progress is None else progress
    return warmup_cosine(step, done, peak=cfg.lr, floor=0.1 * cfg.lr, warmup=cfg.warmup, steps=cfg.steps)


def init_provenance(path: str | Path) -> dict:
    """The checkpoint's ``duplex_init.json`` (empty when it has none)."""
    p = Path(path) / INIT_FILE
    return json.loads(p.read_text()) if p.is_file() else {}


def _check_speech_base_init(cfg: TrainConfig, layout: DuplexLayout) -> dict:
    info = init_provenance(cfg.init)
    if info.get("init") not in ("base", "speech-base"):
        raise ValueError(f"Mode speech-base trains a checkpoint made from a base LLM (`duplex model init --base ...`, "
                         f"or a speech base trained from one); {cfg.init} is not one.")
    if info.get("text_vocab_size", layout.text_vocab_size) != layout.text_vocab_size:
        raise ValueError(f"{cfg.init} says its base has {info['text_vocab_size']} text ids but its layout reserves "
                         f"{layout.text_vocab_size}; the checkpoint is inconsistent.")
    return info


def train_new_rows_only(model: Any, first_new: int, heard: slice | None = None) -> list[torch.nn.Parameter]:
    """Make the input embedding (and an untied output head) trainable with the gradient of rows
    ``< first_new`` (the base's text ids) zeroed; returns those parameters (train them without weight decay).

    ``heard``: the heard range of a heard-text layout, whose rows start as their text twin plus one shared
    vector (``think.checkpoint.heard_shift``). Each of its rows gets the range's summed gradient, so AdamW moves
    them all alike and a heard row stays "text twin + shared vector": what the model learns there is that
    one vector, and the shipped delta stores one row for the 49,152 (``think/delta.py``)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model

    def keep_base_rows(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[:first_new] = 0
        if heard is not None:
            grad[heard] = grad[heard].sum(0, keepdim=True)  # d loss / d (the shared vector)
        return grad

    params: list[torch.nn.Parameter] = []
    for module in (base.get_input_embeddings(), base.get_output_embeddings()):
        if module is None or any(module.weight is p for p in params):
            continue  # tied head: the same tensor
        module.weight.requires_grad_(True)
        module.weight.register_hook(keep_base_rows)
        params.append(module.weight)
    return params


def _check_init(cfg: TrainConfig, layout: DuplexLayout) -> None:
    """What can be said of ``--init`` without loading it: before the shards are read or a model is made."""
    if not cfg.init and cfg.mode in ("lora", "speech-base"):
        raise ValueError(f"Mode {cfg.mode} needs --init: the checkpoint it trains on.")
    if cfg.mode == "speech-base":
        _check_speech_base_init(cfg, layout)


def _build_model(cfg: TrainConfig, layout: DuplexLayout) -> Any:
    if not cfg.init:
        from think.checkpoint import MODEL_PRESETS, init_from_config

        if cfg.model_preset not in MODEL_PRESETS:
            raise ValueError(f"Unknown model preset {cfg.model_preset!r}; choose one of {', '.join(MODEL_PRESETS)}.")
        cfg.init = str(init_from_config(Path(cfg.out) / "init", layout, MODEL_PRESETS[cfg.model_preset], cfg.seed))
    loaded = load_checkpoint(cfg.init)
    if loaded.layout != layout:
        raise ValueError(f"The shards were tokenized for another layout than {cfg.init}'s; re-run "
                         f"`duplex data tokenize --model {cfg.init}`.")
    model = loaded.model
    if cfg.mode in ("lora", "speech-base"):
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=list(cfg.lora_targets), bias="none", task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    if cfg.mode == "speech-base":
        heard = (slice(layout.heard_offset, layout.heard_offset + layout.text_vocab_size)
                 if layout.heard_text else None)
        train_new_rows_only(model, layout.text_vocab_size, heard)
    model.train()
    return model


def _param_groups(model: Any, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: embeddings of a speech base take no weight decay (it would move the frozen text rows)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    rows = {id(m.weight) for m in (base.get_input_embeddings(), base.get_output_embeddings()) if m is not None}
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.mode != "speech-base":
        return [{"params": params, "weight_decay": cfg.weight_decay}]
    return [{"params": [p for p in params if id(p) not in rows], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if id(p) in rows], "weight_decay": 0.0}]


@torch.no_grad()
def evaluate(model: Any, sampler: MixSampler, cfg: TrainConfig) -> dict:
    """Validation loss on the same windows every time: ``val_loss`` (+ per-stream parts) with one source,
    and ``val_<source>`` per source (``val_loss`` = their mix-weighted mean) with several."""
    model.eval()
    rng_state = sampler.rng.bit_generator.state
    out: dict = {}
    per_source = {}
    for name in sampler.names if len(sampler.names) > 1 else [None]:
        sampler.rng = np.random.default_rng(12345)  # the same windows every evaluation
        losses, parts_acc = [], {}
        for _ in range(max(1, cfg.eval_windows // cfg.batch_size)):
            x, y, w, r = sampler.batch(cfg.batch_size, source=name)
            loss, parts = forward_loss(model, *_to(cfg, x, y, w), sampler.layout, cfg.autocast, roles=r)
            losses.append(float(loss))
            for k, v in parts.items():
                parts_acc.setdefault(k, []).append(v)
        if name is None:
            out = {"val_loss": round(float(np.mean(losses)), 4),
                   **{f"val_{k}": round(float(np.mean(v)), 4) for k, v in parts_acc.items()}}
        else:
            per_source[name] = float(np.mean(losses))
    if per_source:
        out = {"val_loss": round(float(sum(p * per_source[n] for n, p in zip(sampler.names, sampler.p))), 4),
               **{f"val_{n}": round(v, 4) for n, v in per_source.items()}}
    sampler.rng = np.random.default_rng()
    sampler.rng.bit_generator.state = rng_state
    model.train()
    return out


def save_outputs(model: Any, cfg: TrainConfig, layout: DuplexLayout, where: Path) -> None:
    where.mkdir(parents=True, exist_ok=True)
    if cfg.mode == "speech-base":
        info = init_provenance(cfg.init)
        model = model.merge_and_unload()  # LoRA folded into the projections: a plain checkpoint
        model.save_pretrained(where, safe_serialization=True)
        layout.save(where)
        shutil.copy(Path(cfg.init) / TOKENIZER_FILE, where / TOKENIZER_FILE)
        (where / INIT_FILE).write_text(json.dumps({
            "init": "speech-base", "from": str(cfg.init), "base": info.get("base"),
            "text_vocab_size": layout.text_vocab_size, "mix": cfg.mix, "steps": cfg.steps,
            "parameters": sum(p.numel() for p in model.parameters())}, indent=2) + "\n")
    elif cfg.mode == "lora":
        model.save_pretrained(where / "adapter")
        adapter_cfg = json.loads((where / "adapter" / "adapter_config.json").read_text())
        if adapter_cfg.get("modules_to_save"):
            raise ValueError("The adapter has modules_to_save; vLLM cannot serve it.")
    else:
        model.save_pretrained(where, safe_serialization=True)
        layout.save(where)
        shutil.copy(Path(cfg.init) / TOKENIZER_FILE, where / TOKENIZER_FILE)
    from think.base_llm import CHAT_TEMPLATE_FILE

    if cfg.mode != "lora" and (Path(cfg.init) / CHAT_TEMPLATE_FILE).is_file():
        shutil.copy(Path(cfg.init) / CHAT_TEMPLATE_FILE, where / CHAT_TEMPLATE_FILE)


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


def _check_resume(cfg: TrainConfig, out: Path, layout: DuplexLayout) -> None:
    """Refuse, before the model is built, a --resume whose settings change what the saved state trains (another
    mode, shape, adapter or layout): its weights would not fit, or fit and silently mean something else."""
    try:
        saved = json.loads((out / "train_config.json").read_text())
    except (OSError, ValueError):
        return  # no record of the earlier run: the state's own checks in train() apply
    if not isinstance(saved, dict):
        return
    mine = {**asdict(cfg), "layout": layout.to_dict()}
    keys = ["mode", "layout"]
    if cfg.mode != "scratch":
        keys += ["lora_r", "lora_alpha", "lora_targets"]
    elif not cfg.init:
        keys.append("model_preset")  # a scratch run makes OUT/init from it again
    differ = [k for k in keys if k in saved and saved[k] != mine[k]]
    if cfg.init and saved.get("init") and Path(saved["init"]).resolve() != Path(cfg.init).resolve():
        differ.append("init")
    if differ:
        was = ", ".join(f"{k} (the run's: {saved[k]!r})" if k != "layout" else "the shards' layout" for k in differ)
        raise ValueError(f"--resume must continue the run in {out} with its settings, but this one changes {was}; "
                         "use those settings, or a new --out directory.")


def _load_state(state_path: Path, model: Any, opt: torch.optim.Optimizer, trainable: set[str], device) -> dict:
    """Load a resumable state into ``model`` and ``opt``; one clear error when it is damaged or does not fit."""
    try:
        state = torch.load(state_path, weights_only=False, map_location=device)
    except Exception as e:  # noqa: BLE001 torch raises many kinds for a truncated or foreign file
        raise ValueError(f"{state_path} is corrupt or incomplete ({type(e).__name__}); start over without --resume "
                         f"(pass --force), or delete {state_path.parent}.") from None
    if not isinstance(state, dict) or not {"model", "optimizer", "step", "rng"} <= set(state):
        raise ValueError(f"{state_path} is not a `duplex train` state; start over without --resume (pass --force).")
    unexpected = set(state["model"]) - trainable
    try:
        if unexpected or trainable - set(state["model"]):
            raise ValueError("other weights")
        model.load_state_dict(state["model"], strict=False)
        opt.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise ValueError(f"{state_path} holds the state of another kind of run (mode, model shape or LoRA settings: "
                         f"{str(e).splitlines()[0][:120]}); resume with that run's settings or use a new --out "
                         "directory.") from None
    return state


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> dict:
    """Run training; returns the final metrics."""
    from tqdm import tqdm

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    layout = shard_layout(cfg.shards)
    state_path = out / "last" / "trainer_state.pt"
    if resume:
        if not state_path.is_file():
            raise FileNotFoundError(f"Nothing to resume in {out} (no last/trainer_state.pt).")
        _check_resume(cfg, out, layout)
    # The init and the shards first: a run they cannot feed fails before it makes (and leaves behind) a model
    _check_init(cfg, layout)
    train_s = build_sampler(cfg, layout, "train", cfg.seed)
    val_s = build_sampler(cfg, layout, "val", cfg.seed + 1) or build_sampler(cfg, layout, "test", cfg.seed + 1)
    model = _build_model(cfg, layout).to(_device(cfg))
    groups = _param_groups(model, cfg)
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    step, seconds_before = 0, 0.0  # seconds_before: wall-clock of earlier runs (max_seconds spans resumes)
    if resume:
        state = _load_state(state_path, model, opt, trainable, _device(cfg))
        step, seconds_before = state["step"], float(state.get("seconds", 0.0))
        train_s.rng.bit_generator.state = state["rng"]
        if run_progress(step, cfg.steps, seconds_before, cfg.max_seconds) >= 1.0 and (out / "final_metrics.json").is_file():
            # Nothing left to train: going on would only overwrite the finished run's metrics with an empty row.
            raise ValueError(f"The run in {out} has already finished ({step} of {cfg.steps} steps"
                             f"{f', max_seconds={cfg.max_seconds}' if cfg.max_seconds else ''}); raise --steps"
                             f"{' or max_seconds' if cfg.max_seconds else ''} to train on.")
    (out / "train_config.json").write_text(json.dumps({**asdict(cfg), "layout": layout.to_dict()}, indent=2) + "\n")
    metrics_path = out / "metrics.jsonl"
    if not resume and metrics_path.exists():
        metrics_path.unlink()
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train ({cfg.mode})", unit="step", disable=not progress)
    last: dict = {}
    best: tuple[float, int, dict] | None = None  # (val loss, step, weights on the CPU) for keep_best
    t0 = time.perf_counter() - seconds_before
    done = run_progress(step, cfg.steps, seconds_before, cfg.max_seconds)
    saved_step = step

    def save_state() -> None:
        (out / "last").mkdir(exist_ok=True)
        # Only what trains (the whole model from scratch; adapter + new rows otherwise): resume loads it over the
        # same --init. Written aside and renamed: a kill mid-save keeps the previous state.
        tmp = state_path.with_suffix(".pt.tmp")
        torch.save({"model": {k: v for k, v in model.state_dict().items() if k in trainable},
                    "optimizer": opt.state_dict(),
                    "step": step, "rng": train_s.rng.bit_generator.state,
                    "seconds": time.perf_counter() - t0}, tmp)
        tmp.replace(state_path)

    try:
        while done < 1.0:
            for group in opt.param_groups:
                group["lr"] = _lr(step, cfg, done)
            t_step = time.perf_counter()
            x, y, w, r = train_s.batch(cfg.batch_size)
            loss, parts = forward_loss(model, *_to(cfg, x, y, w), layout, cfg.autocast, roles=r)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            step += 1
            done = run_progress(step, cfg.steps, time.perf_counter() - t0, cfg.max_seconds)
            last = {"step": step, "loss": round(loss.item(), 4), "lr": round(opt.param_groups[0]["lr"], 6),
                    "step_s": round(time.perf_counter() - t_step, 3), **parts}
            if val_s is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or done >= 1.0):
                last.update(evaluate(model, val_s, cfg))
                if cfg.keep_best and (best is None or last["val_loss"] < best[0]):
                    best = (last["val_loss"], step,
                            {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()})
            with metrics_path.open("a") as f:
                f.write(json.dumps(last) + "\n")
            bar.set_postfix(loss=last["loss"], text=parts.get("text"), val=last.get("val_loss"))
            bar.update(1)
            if step % cfg.save_every == 0 or done >= 1.0:
                save_state()
                saved_step = step
    except KeyboardInterrupt:
        if step > saved_step:
            save_state()  # Ctrl-C keeps the steps done since the last save
        bar.close()
        print(f"duplex: stopped at step {step} of {cfg.steps}; {state_path.parent} keeps it: run the same command "
              "with --resume to continue.", file=sys.stderr)
        raise
    bar.close()
    model.eval()
    if best is not None:
        model.load_state_dict(best[2])
        last.update(best_step=best[1], best_val_loss=best[0])
    save_outputs(model.to("cpu"), cfg, layout, out)
    plot_losses(metrics_path, out / "loss.png")
    last["wall_seconds"] = round(time.perf_counter() - t0, 1)
    (out / "final_metrics.json").write_text(json.dumps(last, indent=2) + "\n")
    return last
