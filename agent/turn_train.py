"""``duplex turn train|eval``: the turn detector (``listen/turn_detector.py``): finished turn or mid-turn pause.

Data: whole ``duplex data synth`` dialogues, their user channel taken to the detector's rate the way a live
input path does (``agent/training/mic_paths.py``, one path per dialogue: WebRTC's processing with the script's
agent as the echo reference, the server's decimator, plain soxr), so it hears what a session's codec hears.
Labels are on the silent steps after the user stops, up to ``window_s`` later: "finished" after a turn end
(the request is complete), "still going" in a mid-turn pause (``pause`` events: the request's first words,
said as held, then silence); every other step is unlabelled. The encoder runs over the whole crop, so what
it says in the silence depends on how the words before it were said.

Training: cross-entropy on the labelled steps, the two classes weighted equally, random crops of
``crop_steps`` and a random level per crop (a microphone's gain), AdamW with warm-up + cosine. Outputs in
``--out``: ``train_config.json``, ``best/`` and ``last/`` (what ``load_detector`` loads, with the threshold
tuned on val), ``metrics.jsonl``, and the cached features ``features/`` (reused by a rerun).
"""
from __future__ import annotations

import json
import math
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from agent.recognizer_train import _mask
from agent.training.schedule import run_progress, warmup_cosine
from listen.recognizer import RecognizerConfig
from listen.turn_detector import build_detector, load_detector, save_detector

IGNORE = -1
DEFAULT_MODEL = {"sample_rate": 8000, "hop": 80, "win": 200, "n_fft": 256, "n_mels": 40, "fmax": 3500.0,
                 "stack": 4, "dim": 128, "conv_layers": 2, "kernel": 5, "rnn_layers": 1}
# Where the session asks: the frame ends after the user stops, up to the wait a pause may need (ms).
EVAL_OFFSETS_MS = (80, 160, 240, 320, 400, 480, 560)


@dataclass
class TurnTrainConfig:
    """Fields: ``data`` dialogue dirs, comma-separated; ``model`` RecognizerConfig fields (the encoder's shape
    and front end: default ``DEFAULT_MODEL``, 8 kHz like codec2); ``mic_paths`` the input paths, one per
    dialogue; ``window_s`` how long after the user stops a step is labelled; ``crop_steps`` 40 ms steps per
    training crop; ``gain_db`` each crop's level is shifted by up to this much; ``freq_masks``/``time_masks``
    SpecAugment masks per crop (as the recogniser's training draws them); ``steps``/``max_seconds``
    whichever ends first; ``workers`` processes computing the features; ``threads`` torch CPU threads."""

    data: str = "runs/data-s20"
    out: str = "runs/turn"
    model: dict = field(default_factory=dict)
    mic_paths: str = "soxr-lq,decimate-24k,daemon-apm,browser-apm"
    window_s: float = 0.64
    crop_steps: int = 400
    batch: int = 16
    steps: int = 1500
    max_seconds: float = 0.0
    lr: float = 2e-3
    lr_min: float = 1e-4
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    gain_db: float = 10.0
    freq_masks: int = 0
    freq_mask_width: int = 6
    time_masks: int = 0
    time_mask_steps: int = 4
    eval_every: int = 250
    seed: int = 0
    workers: int = 2
    threads: int = 2
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("crop_steps", "batch", "steps", "eval_every", "workers", "threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}.")
        if not (0 < self.window_s <= 2.0):
            raise ValueError(f"window_s must be above 0 and at most 2 s, got {self.window_s!r}.")


def step_labels(record: dict, steps: int, step_s: float, window_s: float) -> np.ndarray:
    """``(steps,)`` int8: 1 on the steps ending within ``window_s`` after a turn end (until the user speaks
    again), 0 on those in a mid-turn pause (until it ends), ``IGNORE`` elsewhere. Step i ends at ``(i+1)*step_s``."""
    labels = np.full(steps, IGNORE, np.int8)
    starts = sorted(float(t["start"]) for t in record["turns"] if t["speaker"] == "user")
    ends = (np.arange(steps) + 1) * step_s

    def mark(t0: float, t1: float, value: int) -> None:
        labels[(ends > t0) & (ends <= t1)] = value

    for e in record["events"]:
        t = float(e["time"])
        nxt = next((s for s in starts if s > t + 1e-3), math.inf)
        if e["type"] == "turn_end":
            mark(t, min(t + window_s, nxt), 1)
        elif e["type"] == "pause":
            mark(t, min(t + window_s, float(e.get("end", nxt)), nxt), 0)
    return labels


def _dialogue_features(job: tuple) -> np.ndarray:
    """One dialogue's features ``(steps, stack*n_mels)`` float16 through its input path; run in a worker."""
    import soundfile as sf
    import torch

    from agent.training.mic_paths import to_codec_rate

    wav, cfg_dict, path = job
    torch.set_num_threads(1)
    cfg = RecognizerConfig.from_dict(cfg_dict)
    audio, rate = sf.read(wav, dtype="float32", always_2d=True)
    user = to_codec_rate(audio[:, 0], rate, cfg.sample_rate, path, far=audio[:, 1] if audio.shape[1] > 1 else None)
    n = len(user) // cfg.step_samples * cfg.step_samples
    model = _front_end(cfg)
    with torch.inference_mode():
        feats, _ = model.features(torch.from_numpy(np.ascontiguousarray(user[:n]))[None])
    return feats[0].numpy().astype(np.float16)


_FRONT: dict = {}


def _front_end(cfg: RecognizerConfig):
    key = json.dumps(asdict(cfg), sort_keys=True)
    if key not in _FRONT:
        _FRONT[key] = build_detector(cfg)
    return _FRONT[key]


def featurize(dirs: list[Path], split: str, cfg: RecognizerConfig, paths: tuple[str, ...], window_s: float,
              cache: Path | None, workers: int, progress: bool = True) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(id, features, labels) of every dialogue of ``split`` with a labelled step; cached per dialogue."""
    from tqdm import tqdm

    from agent.training.mic_paths import check_paths, path_for
    from agent.training.tokenize import iter_dialogues

    check_paths(paths)
    # the labels are cheap and depend on window_s: only the features are cached
    digest = zlib.crc32(json.dumps([asdict(cfg), paths], sort_keys=True).encode())
    step_s = cfg.step_samples / cfg.sample_rate
    jobs, out = [], []
    for d in dirs:
        for wav, rec in iter_dialogues(d):
            if rec.get("split") != split:
                continue
            f = None if cache is None else cache / f"{d.name}-{rec['id']}-{digest:08x}.npy"
            if f is not None and f.is_file():
                feats = np.load(f)
                out.append((rec["id"], feats, step_labels(rec, len(feats), step_s, window_s)))
            else:
                jobs.append(((str(wav), asdict(cfg), path_for(rec["id"], paths)), f, rec))
    if jobs:
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=len(jobs), desc=f"features ({split})", unit="dialogue", disable=not progress)
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for (_, f, rec), feats in zip(jobs, pool.map(_dialogue_features, [j for j, _, _ in jobs])):
                if f is not None:
                    np.save(f, feats)
                out.append((rec["id"], feats, step_labels(rec, len(feats), step_s, window_s)))
                bar.update(1)
        bar.close()
    return [o for o in out if (o[2] != IGNORE).any()]


def probabilities(model, data: list[tuple[str, np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """P(finished) ``(steps,)`` per dialogue, the encoder run over each whole dialogue as a session runs it."""
    import torch

    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for _, feats, _ in data:
            logp, _ = model(None, feats=torch.from_numpy(feats.astype(np.float32))[None].to(device))
            out.append(logp[0, :, 1].exp().float().cpu().numpy())
    return out


def event_scores(model, data, records: dict[str, dict], step_s: float) -> dict[str, list[np.ndarray]]:
    """Per event kind (``turn_end``, ``pause``), P(finished) at each of ``EVAL_OFFSETS_MS`` after the user
    stopped (``nan`` where the user spoke again first)."""
    scores: dict[str, list[np.ndarray]] = {"turn_end": [], "pause": []}
    for (did, feats, _), p in zip(data, probabilities(model, data)):
        rec = records[did]
        starts = sorted(float(t["start"]) for t in rec["turns"] if t["speaker"] == "user")
        for e in rec["events"]:
            if e["type"] not in scores:
                continue
            t = float(e["time"])
            nxt = next((s for s in starts if s > t + 1e-3), math.inf)
            scores[e["type"]].append(scores_after(p, step_s, t, nxt))
    return scores


def scores_after(p: np.ndarray, step_s: float, t: float, nxt: float) -> np.ndarray:
    """P(finished) ``p`` (one per step of ``step_s``) at each of ``EVAL_OFFSETS_MS`` after the user stopped at
    ``t``; ``nan`` from ``nxt`` on (the user spoke again)."""
    row = []
    for ms in EVAL_OFFSETS_MS:
        at = t + ms / 1000.0
        i = int(math.floor(at / step_s)) - 1  # the last step that ended by then
        row.append(float(p[i]) if at < nxt and 0 <= i < len(p) else math.nan)
    return np.asarray(row)


def summarize(scores: dict[str, list[np.ndarray]], threshold: float | None = None) -> dict:
    """AUC at each offset, and for ``threshold`` (None: tuned here) how the policy would act: a pause is *held*
    when P stays below it at every offset the user is still silent; a turn end is *free* at 240 ms when P is at
    or above it there (the agent may start; the data's agents start 120-480 ms after the user)."""
    te = np.asarray(scores["turn_end"]) if scores["turn_end"] else np.zeros((0, len(EVAL_OFFSETS_MS)))
    pa = np.asarray(scores["pause"]) if scores["pause"] else np.zeros((0, len(EVAL_OFFSETS_MS)))
    auc = {}
    for k, ms in enumerate(EVAL_OFFSETS_MS):
        a, b = te[:, k], pa[:, k]
        a, b = a[~np.isnan(a)], b[~np.isnan(b)]
        if len(a) and len(b):
            auc[str(ms)] = round(float((a[:, None] > b[None, :]).mean() + 0.5 * (a[:, None] == b[None, :]).mean()), 4)
    k240 = EVAL_OFFSETS_MS.index(240)

    def rates(thr: float) -> tuple[float, float]:
        held = np.mean([np.all(np.nan_to_num(r, nan=-1.0) < thr) for r in pa]) if len(pa) else math.nan
        free = np.mean([r[k240] >= thr for r in te if not np.isnan(r[k240])]) if len(te) else math.nan
        return float(held), float(free)

    if threshold is None:  # the threshold that holds the most pauses while leaving >= 95 % of turn ends free
        grid = np.linspace(0.02, 0.98, 49)
        ok = [t for t in grid if rates(t)[1] >= 0.95]
        threshold = float(max(ok)) if ok else 0.5
    held, free = rates(threshold)
    return {"turn_ends": len(te), "pauses": len(pa), "auc": auc, "threshold": round(threshold, 3),
            "pauses_held": round(held, 4), "turn_ends_free_at_240ms": round(free, 4)}


def train_detector(cfg: TurnTrainConfig, progress: bool = True) -> dict:
    import torch
    from tqdm import tqdm

    from agent.training.tokenize import dialogue_dirs, iter_dialogues
    from think.device import resolve_device

    device = resolve_device(cfg.device)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    mcfg = RecognizerConfig.from_dict(DEFAULT_MODEL | cfg.model)
    dirs = dialogue_dirs(cfg.data)
    paths = tuple(p for p in cfg.mic_paths.split(",") if p)
    train = featurize(dirs, "train", mcfg, paths, cfg.window_s, out / "features", cfg.workers, progress)
    val = featurize(dirs, "val", mcfg, paths, cfg.window_s, out / "features", cfg.workers, progress)
    if not train or not val:
        raise ValueError(f"No labelled turn ends or pauses in the train and val splits of {cfg.data}.")
    records = {rec["id"]: rec for d in dirs for _, rec in iter_dialogues(d) if rec.get("split") == "val"}
    step_s = mcfg.step_samples / mcfg.sample_rate
    all_labels = np.concatenate([lab for _, _, lab in train])
    counts = [int((all_labels == c).sum()) for c in (0, 1)]
    weight = torch.tensor([sum(counts) / (2 * max(1, c)) for c in counts], dtype=torch.float32, device=device)
    model = build_detector(mcfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    shift = cfg.gain_db / 10.0 * math.log(10.0) / 4.0  # dB -> the front end's scaled natural-log units
    t0, step, best, history = time.time(), 0, -math.inf, []
    metrics = open(out / "metrics.jsonl", "a")
    bar = tqdm(total=cfg.steps, desc="turn detector", unit="step", disable=not progress)
    while step < cfg.steps and not (cfg.max_seconds and time.time() - t0 >= cfg.max_seconds):
        frac = run_progress(step, cfg.steps, time.time() - t0, cfg.max_seconds)
        for g in opt.param_groups:
            g["lr"] = warmup_cosine(step, frac, peak=cfg.lr, floor=cfg.lr_min, warmup=cfg.warmup, steps=cfg.steps)
        x = np.zeros((cfg.batch, cfg.crop_steps, train[0][1].shape[1]), np.float32)
        y = np.full((cfg.batch, cfg.crop_steps), IGNORE, np.int64)
        for k in range(cfg.batch):
            _, feats, labels = train[int(rng.integers(len(train)))]
            at = int(rng.choice(np.flatnonzero(labels != IGNORE)))  # a crop that ends at or after a labelled step
            s = max(0, min(at - int(rng.integers(cfg.crop_steps // 4, cfg.crop_steps)), len(feats) - cfg.crop_steps))
            n = min(cfg.crop_steps, len(feats) - s)
            x[k, :n] = feats[s:s + n] + rng.uniform(-shift, shift)
            y[k, :n] = labels[s:s + n]
        xt = torch.from_numpy(x)
        if cfg.freq_masks or cfg.time_masks:
            xt = _mask(xt, cfg, mcfg.n_mels, rng)
        model.train()
        logp, _ = model(None, feats=xt.to(device))
        loss = torch.nn.functional.nll_loss(logp.reshape(-1, 2).float(), torch.from_numpy(y).reshape(-1).to(device),
                                            weight=weight, ignore_index=IGNORE)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        row = {"step": step, "loss": round(loss.item(), 4), "seconds": round(time.time() - t0, 1)}
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.3f}", refresh=False)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            model.eval()
            summary = summarize(event_scores(model, val, records, step_s))
            row |= {"val_" + k: v for k, v in summary.items()}
            meta = {"step": step, "threshold": summary["threshold"], "val": summary, "data": cfg.data,
                    "mic_paths": list(paths), "window_s": cfg.window_s}
            save_detector(model, out / "last", meta)
            score = summary["auc"].get("240", 0.0)
            if score > best:
                best = score
                save_detector(model, out / "best", meta)
        history.append(row)
        metrics.write(json.dumps(row) + "\n")
        metrics.flush()
    bar.close()
    if not (out / "best" / "model.safetensors").is_file():  # the budget ended before the first evaluation
        model.eval()
        summary = summarize(event_scores(model, val, records, step_s))
        save_detector(model, out / "best", {"step": step, "threshold": summary["threshold"], "val": summary})
    result = {"steps": step, "seconds": round(time.time() - t0, 1), "train_dialogues": len(train),
              "labelled_steps": {"still_going": counts[0], "finished": counts[1]},
              "parameters": sum(p.numel() for p in model.parameters()),
              "best": json.loads((out / "best" / "turn.json").read_text())}
    (out / "final_metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def eval_detector(model_dir: str | None, data: str, split: str = "test", mic_paths: str = "browser-apm",
                  threshold: float | None = None, workers: int = 2, progress: bool = True) -> dict:
    """How the detector (None: the shipped one) tells turn ends from pauses on ``split`` through ``mic_paths``,
    at its own threshold (or ``threshold``)."""
    from agent.training.tokenize import dialogue_dirs, iter_dialogues

    model = load_detector(model_dir)
    dirs = dialogue_dirs(data)
    window_s = float(model.meta.get("window_s", 0.64))
    paths = tuple(p for p in mic_paths.split(",") if p)
    got = featurize(dirs, split, model.cfg, paths, window_s, None, workers, progress)
    if not got:
        raise ValueError(f"No labelled turn ends or pauses in the {split} split of {data}.")
    records = {rec["id"]: rec for d in dirs for _, rec in iter_dialogues(d) if rec.get("split") == split}
    thr = threshold if threshold is not None else float(model.meta.get("threshold", 0.5))
    step_s = model.cfg.step_samples / model.cfg.sample_rate
    return {"model": str(model_dir or "shipped"), "data": data, "split": split, "mic_paths": list(paths),
            "dialogues": len(got)} | summarize(event_scores(model, got, records, step_s), thr)


def add_turn_commands(sub) -> None:
    """``duplex turn train|eval`` (called from agent/cli.py's build_parser)."""
    from agent.config import add_train_flags

    group = sub.add_parser("turn", help="the turn detector: a finished turn or a mid-turn pause, from the audio")
    tsub = group.add_subparsers(dest="turn_cmd", required=True)
    p = tsub.add_parser("train", help="train it on the turn ends and pauses of synthetic dialogues")
    add_train_flags(p, "best/, last/, metrics.jsonl", "--set mic_paths=soxr-lq --set model.dim=96")
    p.set_defaults(func=_cmd_train)
    p = tsub.add_parser("eval", help="pauses held and turn ends left free, on held-out dialogues")
    p.add_argument("--model", help="detector directory (default: the shipped one)")
    p.add_argument("--data", required=True, help="dialogue directories (duplex data synth), comma-separated")
    p.add_argument("--split", default="test", help="split to score (default test: held-out voices)")
    p.add_argument("--mic-paths", default="browser-apm", help="input paths, one per dialogue (default browser-apm)")
    p.add_argument("--threshold", type=float, help="P(finished) below which the agent waits (default: the model's)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_eval)


def _cmd_train(args) -> int:
    from agent.config import config_from_flags

    cfg = config_from_flags(TurnTrainConfig, args, ("data", "out", "steps", "max_seconds", "threads"))
    print(json.dumps(train_detector(cfg, progress=not args.quiet), indent=2))
    print(f"wrote {cfg.out} (best/, last/, metrics.jsonl)")
    return 0


def _cmd_eval(args) -> int:
    print(json.dumps(eval_detector(args.model, args.data, args.split, args.mic_paths, args.threshold,
                                   progress=not args.quiet), indent=2))
    return 0
