"""``duplex recognizer train|eval``: the streaming recogniser of the user (``listen/recognizer.py``).

Data: the user turns of ``duplex data synth`` dialogues (their user channel, augmented as synthesized: speed,
pitch, noise, gain, echo of the agent; taken to 8 kHz and back, as a codec2 session's listener hears it), each
cut from 0.1-0.6 s before its start to 0.35 s after its end (the silence after the last word is where the model
learns to finish it), labelled with the turn's text plus a trailing space. Turns the agent cut short (``cut_at``) are left out: their text is longer than their audio.
The splits are the dialogues' own (held-out voices and slot values in val/test).

Training: CTC (blank 0), AdamW, warm-up + cosine by steps or wall clock, SpecAugment-style masks, batches of
similar lengths. Outputs in ``--out``: ``train_config.json`` (the resolved config), ``best/`` and ``last/``
(``config.json`` + ``model.safetensors``, what ``load_recognizer`` loads), ``metrics.jsonl``, ``loss.png``,
and the cached features ``features-<split>.npz`` (reused by a rerun on the same data and front end).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from agent.training.schedule import run_progress, warmup_cosine
from agent.training.tokenize import dialogue_dirs
from listen.recognizer import RecognizerConfig, build_model, normalize_text, save_recognizer

# A turn's audio starts this long before its first word (each batch drops a random part of it: a live
# stream's recogniser has heard anything from a moment to minutes of silence before a turn) ...
PAD_BEFORE_S, MIN_BEFORE_S = 0.6, 0.1
# ... and ends this long after its last word (the silence in which the last word gets finished).
PAD_AFTER_S = 0.35
# The RecognizerConfig fields the cached features depend on.
FRONT_END_FIELDS = ("sample_rate", "hop", "win", "n_fft", "n_mels", "fmax", "stack")


@dataclass
class RecognizerTrainConfig:
    """Fields: ``data`` dialogue dirs (``duplex data synth``), comma-separated; ``model`` RecognizerConfig
    overrides; ``steps``/``max_seconds`` whichever ends first; ``batch_steps`` model steps per batch (40 ms
    each, padding included); ``eval_every`` steps between val measurements (greedy CER/WER on ``eval_turns``
    val turns); ``via_rate`` the rate the user audio passes through before its features (0: none); ``threads``
    torch CPU threads; ``device`` where the model trains (``auto``: CUDA when torch sees one; the features are
    computed on the CPU first, and the weights are saved as CPU tensors either way)."""

    data: str = "runs/data-v2"
    out: str = "runs/recognizer"
    model: dict = field(default_factory=dict)
    init: str = ""  # a recogniser directory to start from (its shape; ``model`` is then ignored)
    via_rate: int = 8000  # the user audio goes to this rate and back (soxr LQ) first, as a codec2 session's does
    steps: int = 6000
    max_seconds: float = 0.0
    batch_steps: int = 2400
    lr: float = 2e-3
    lr_min: float = 1e-4
    warmup: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    freq_masks: int = 2
    freq_mask_width: int = 6
    time_masks: int = 2
    time_mask_steps: int = 4
    eval_every: int = 250
    eval_turns: int = 400
    seed: int = 0
    threads: int = 2
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_steps", "eval_every", "eval_turns", "threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}.")
        m = self.max_seconds
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m) or m < 0:
            raise ValueError(f"max_seconds must be a number of seconds >= 0 (0: no limit), got {m!r}.")


def user_turns(data_dirs: list[Path], split: str) -> list[tuple[Path, float, float, str]]:
    """``(wav, start_s, end_s, text)`` of every usable user turn of ``split`` (cut times padded)."""
    from agent.training.tokenize import iter_dialogues

    out = []
    for data in data_dirs:
        for wav, rec in iter_dialogues(data):
            if rec.get("split") != split:
                continue
            users = sorted((t for t in rec["turns"] if t["speaker"] == "user"), key=lambda t: t["start"])
            for i, t in enumerate(users):
                text = normalize_text(str(t.get("text", "")))
                if not text or t.get("cut_at") is not None:
                    continue
                nxt = users[i + 1]["start"] if i + 1 < len(users) else float(rec.get("duration", 1e9))
                start = max(0.0, float(t["start"]) - PAD_BEFORE_S)
                end = min(float(t["end"]) + PAD_AFTER_S, max(float(t["end"]), float(nxt) - 0.05))
                out.append((wav, start, end, text))
    return out


def featurize(model, turns, cache: Path | None, progress: bool = True,
              via_rate: int = 0) -> tuple[list[np.ndarray], list[str]]:
    """Front-end features ``(steps, stack*n_mels)`` float16 per turn, cached in ``cache`` (npz; None: not cached).
    ``via_rate``: each dialogue's user channel is resampled to that rate and back first (soxr LQ, the
    listener's quality), so the features are the ones a session at that codec rate computes."""
    import soxr
    import soundfile as sf
    import torch
    from tqdm import tqdm

    # only the front end shapes the features: a wider or deeper network reuses the same cache
    front = {k: v for k, v in asdict(model.cfg).items() if k in FRONT_END_FIELDS}
    key = json.dumps({"cfg": front, "via": via_rate, "turns": [(str(w), s, e, t) for w, s, e, t in turns]}, sort_keys=True)
    digest = __import__("hashlib").sha256(key.encode()).hexdigest()[:16]
    if cache is not None and cache.is_file():
        z = np.load(cache, allow_pickle=False)
        if str(z["digest"]) == digest:
            lengths = z["lengths"]
            flat = z["feats"]
            bounds = np.concatenate([[0], np.cumsum(lengths)])
            return [flat[bounds[i]:bounds[i + 1]] for i in range(len(lengths))], [str(t) for t in z["texts"]]
    cfg = model.cfg
    feats, texts = [], []
    by_wav: dict[Path, list] = {}
    for w, s, e, t in turns:
        by_wav.setdefault(w, []).append((s, e, t))
    with torch.inference_mode():
        for wav, items in tqdm(by_wav.items(), desc="features", unit="dialogue", disable=not progress):
            audio, rate = sf.read(wav, dtype="float32", always_2d=True)
            if rate != cfg.sample_rate:
                raise ValueError(f"{wav} is {rate} Hz; the recogniser's data must be {cfg.sample_rate} Hz.")
            user = audio[:, 0]
            if via_rate and via_rate != rate:
                down = soxr.resample(user, rate, via_rate, quality="LQ")
                user = soxr.resample(down, via_rate, rate, quality="LQ")[: len(user)].astype(np.float32)
            for s, e, t in items:
                a = user[int(s * rate): int(e * rate)]
                n = len(a) // cfg.step_samples * cfg.step_samples
                if n == 0:
                    continue
                f, _ = model.features(torch.from_numpy(np.ascontiguousarray(a[:n]))[None])
                feats.append(f[0].numpy().astype(np.float16))
                texts.append(t + " ")
    if cache is None:
        return feats, texts
    lengths = np.asarray([len(f) for f in feats])
    np.savez(cache, digest=digest, lengths=lengths, feats=np.concatenate(feats) if feats else np.zeros((0, 1)),
             texts=np.asarray(texts))
    return feats, texts


def encode_labels(text: str, alphabet: str) -> list[int]:
    return [alphabet.index(ch) + 1 for ch in text]


def batches(lengths: np.ndarray, batch_steps: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Index batches of similar lengths, each at most ``batch_steps`` padded steps, in random order."""
    order = np.argsort(lengths + rng.uniform(0, 8, len(lengths)))
    out, cur, longest = [], [], 0
    for i in order:
        longest2 = max(longest, int(lengths[i]))
        if cur and longest2 * (len(cur) + 1) > batch_steps:
            out.append(np.asarray(cur))
            cur, longest2 = [], int(lengths[i])
        cur.append(i)
        longest = longest2
    if cur:
        out.append(np.asarray(cur))
    rng.shuffle(out)
    return out


def _pad(feats: list[np.ndarray], idx: np.ndarray, skip: np.ndarray | None = None):
    """A zero-padded batch ``(B, T, D)`` and its lengths; ``skip[k]`` leading steps of example k left out."""
    import torch

    skip = np.zeros(len(idx), int) if skip is None else skip
    n = max(len(feats[i]) - s for i, s in zip(idx, skip))
    x = np.zeros((len(idx), n, feats[idx[0]].shape[1]), np.float32)
    for k, (i, s) in enumerate(zip(idx, skip)):
        x[k, : len(feats[i]) - s] = feats[i][s:]
    return torch.from_numpy(x), torch.tensor([len(feats[i]) - s for i, s in zip(idx, skip)])


def _mask(x, cfg: RecognizerTrainConfig, n_mels: int, rng: np.random.Generator):
    """SpecAugment: zero random mel bands (same bands in every stacked hop) and runs of steps, per example."""
    b, t, d = x.shape
    v = x.view(b, t, d // n_mels, n_mels)
    for k in range(b):
        for _ in range(cfg.freq_masks):
            w = int(rng.integers(0, cfg.freq_mask_width + 1))
            f0 = int(rng.integers(0, n_mels - w + 1))
            v[k, :, :, f0:f0 + w] = 0.0
        for _ in range(cfg.time_masks):
            w = int(rng.integers(0, cfg.time_mask_steps + 1))
            t0 = int(rng.integers(0, max(1, t - w)))
            v[k, t0:t0 + w] = 0.0
    return x


def log_probs(model, feats: list[np.ndarray]) -> list[np.ndarray]:
    """The model's log-probabilities ``(steps, classes)`` per turn, from front-end features (batches of 32)."""
    import torch

    out = []
    device = next(model.parameters()).device
    with torch.inference_mode():
        for i in range(0, len(feats), 32):
            idx = np.arange(i, min(len(feats), i + 32))
            x, lengths = _pad(feats, idx)
            lp, _ = model(None, feats=x.to(device))
            lp = lp.float().cpu()
            out += [lp[k, : int(lengths[k])].numpy() for k in range(len(idx))]
    return out


def error_rates(model, feats: list[np.ndarray], texts: list[str]) -> dict:
    """Greedy-decoded character and word error rates (edit distance over the references' lengths); with a
    word LM on the model, also the streamed beam search's (``wer_beam``)."""
    from rapidfuzz.distance import Levenshtein

    from listen.recognizer import Lexicon, RecognizerState, greedy_words

    lexicon = Lexicon(model.lexicon) if getattr(model, "lexicon", None) else None
    beam = None
    if getattr(model, "word_lm", None) is not None:
        from agent.recognizer_lm import beam_words
        from listen.ctc_beam import BeamConfig, StreamingBeamDecoder
        from listen.recognizer import search_graph

        beam = StreamingBeamDecoder(search_graph(model), BeamConfig.from_dict(model.word_lm[1]))
    char_err = char_n = word_err = word_n = lex_err = beam_err = 0
    examples = []
    for logp, text in zip(log_probs(model, feats), texts):
        st = RecognizerState()
        words = greedy_words(logp.argmax(-1).tolist(), model.cfg.alphabet, st)
        words += [st.word] if st.word else []
        hyp, ref = " ".join(words), text.strip()
        char_err += Levenshtein.distance(hyp, ref)
        char_n += len(ref)
        word_err += Levenshtein.distance(hyp.split(), ref.split())
        word_n += len(ref.split())
        snapped = [lexicon.snap(w) for w in words] if lexicon else words
        lex_err += Levenshtein.distance(snapped, ref.split())
        example = {"ref": ref, "hyp": hyp} | ({"lexicon": " ".join(snapped)} if lexicon else {})
        if beam is not None:  # what a session gets with lm.json: the streamed beam search
            beamed = beam_words(beam, logp)
            beam_err += Levenshtein.distance(beamed, ref.split())
            example["beam"] = " ".join(beamed)
        if len(examples) < 6:
            examples.append(example)
    result = {"cer": round(char_err / max(1, char_n), 4), "wer": round(word_err / max(1, word_n), 4)}
    if lexicon:  # greedy, each finished word snapped to the lexicon
        result["wer_lexicon"] = round(lex_err / max(1, word_n), 4)
    if beam is not None:
        result["wer_beam"] = round(beam_err / max(1, word_n), 4)
    return result | {"turns": len(feats), "examples": examples}


def train_recognizer(cfg: RecognizerTrainConfig, progress: bool = True) -> dict:
    import torch
    from tqdm import tqdm

    from think.device import resolve_device

    device = resolve_device(cfg.device)  # before any work: a missing GPU is one clear error
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    if cfg.init:
        from listen.recognizer import load_recognizer

        model = load_recognizer(cfg.init).train()
        model.word_lm = None  # counted afresh from this run's turns at the end
        mcfg = model.cfg
    else:
        mcfg = RecognizerConfig.from_dict(cfg.model)
        model = build_model(mcfg)
    dirs = dialogue_dirs(cfg.data)
    train_f, train_t = featurize(model, user_turns(dirs, "train"), out / "features-train.npz", progress, cfg.via_rate)
    val_f, val_t = featurize(model, user_turns(dirs, "val"), out / "features-val.npz", progress, cfg.via_rate)
    if not train_f:
        raise ValueError(f"No usable user turns in the train split of {cfg.data}.")
    val_f, val_t = val_f[: cfg.eval_turns], val_t[: cfg.eval_turns]
    model.to(device)
    labels = [torch.tensor(encode_labels(t, mcfg.alphabet)) for t in train_t]
    model.lexicon = sorted({w for t in train_t for w in t.split()})  # saved with the weights (lexicon.json)
    max_skip = int((PAD_BEFORE_S - MIN_BEFORE_S) * mcfg.sample_rate) // mcfg.step_samples
    lengths = np.asarray([len(f) for f in train_f])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ctc = torch.nn.CTCLoss(blank=0, zero_infinity=True)
    t0, step, best = time.time(), 0, math.inf
    history = []
    metrics = open(out / "metrics.jsonl", "a")
    bar = tqdm(total=cfg.steps, desc="recognizer", unit="step", disable=not progress)
    epoch_batches: list[np.ndarray] = []
    while step < cfg.steps and not (cfg.max_seconds and time.time() - t0 >= cfg.max_seconds):
        if not epoch_batches:
            epoch_batches = batches(lengths, cfg.batch_steps, rng)
        idx = epoch_batches.pop()
        frac = run_progress(step, cfg.steps, time.time() - t0, cfg.max_seconds)
        for g in opt.param_groups:
            g["lr"] = warmup_cosine(step, frac, peak=cfg.lr, floor=cfg.lr_min, warmup=cfg.warmup, steps=cfg.steps)
        model.train()
        x, in_len = _pad(train_f, idx, rng.integers(0, max_skip + 1, len(idx)))
        x = _mask(x, cfg, mcfg.n_mels, rng)
        logp, _ = model(None, feats=x.to(device))
        target = [labels[i] for i in idx]
        loss = ctc(logp.transpose(0, 1).float(), torch.cat(target).to(device), in_len.to(device),
                   torch.tensor([len(t) for t in target], device=device))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        value = loss.item()
        row = {"step": step, "loss": round(value, 4), "seconds": round(time.time() - t0, 1)}
        bar.update(1)
        bar.set_postfix(loss=f"{value:.3f}", refresh=False)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            model.eval()
            row |= {f"val_{k}": v for k, v in error_rates(model, val_f, val_t).items() if k != "examples"}
            save_recognizer(model, out / "last", {"step": step})
            if row["val_cer"] < best:
                best = row["val_cer"]
                save_recognizer(model, out / "best", {"step": step})
        history.append(row)
        metrics.write(json.dumps(row) + "\n")
        metrics.flush()
    bar.close()
    model.eval()
    final = error_rates(model, val_f, val_t)
    save_recognizer(model, out / "last", {"step": step})
    if final["cer"] < best:
        save_recognizer(model, out / "best", {"step": step})
    _plot(history, out / "loss.png")
    # the word LM of the training turns and the beam's weights, tuned on val for each saved model
    from agent.recognizer_lm import build_and_tune
    from listen.recognizer import load_recognizer
    from listen.word_lm import WordNgramLM, save_word_lm

    lm = WordNgramLM.from_sentences(train_t)
    for name in ("best", "last"):
        saved = load_recognizer(out / name)
        tuned = build_and_tune(saved, lm, val_f, val_t)
        save_word_lm(saved.word_lm[0], out / name, tuned["decode"])
        if name == "last":
            final = error_rates(saved, val_f, val_t)
    result = {"steps": step, "seconds": round(time.time() - t0, 1), "val": final, "best_val_cer": min(best, final["cer"]),
              "train_turns": len(train_f), "parameters": sum(p.numel() for p in model.parameters())}
    (out / "final_metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _plot(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], lw=0.6, label="train CTC loss")
    ax.set_xlabel("step")
    ax.set_ylabel("CTC loss")
    ev = [h for h in history if "val_cer" in h]
    if ev:
        ax2 = ax.twinx()
        ax2.plot([h["step"] for h in ev], [h["val_cer"] for h in ev], "r.-", label="val CER")
        ax2.set_ylabel("val CER")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def eval_recognizer(model_dir: str | None, data: str, split: str = "test", limit: int = 0,
                    progress: bool = True, via_rate: int = 8000) -> dict:
    """CER/WER of a recogniser (None: the shipped one) on the user turns of ``split``: greedy one-shot, and
    the beam search streamed 80 ms at a time when it has ``lm.json`` (streamed greedy decoding equals
    one-shot by construction; tested)."""
    import torch

    from listen.recognizer import load_recognizer

    model = load_recognizer(model_dir)
    dirs = dialogue_dirs(data)
    turns = user_turns(dirs, split)
    if limit:
        turns = turns[:limit]
    if not turns:
        raise ValueError(f"No usable user turns in the {split} split of {data}.")
    with torch.inference_mode():
        feats, texts = featurize(model, turns, None, progress, via_rate)
        result = error_rates(model, feats, texts)
    return {"model": str(model_dir or "shipped"), "data": data, "split": split, "via_rate": via_rate} | result


def add_recognizer_commands(sub) -> None:
    """``duplex recognizer train|eval`` (called from agent/cli.py's build_parser)."""
    from agent.config import add_train_flags

    group = sub.add_parser("recognizer", help="the streaming recogniser that writes a heard-text model's transcript")
    rsub = group.add_subparsers(dest="recognizer_cmd", required=True)
    p = rsub.add_parser("train", help="train it with CTC on the user turns of synthetic dialogues")
    add_train_flags(p, "best/, last/, metrics.jsonl, loss.png", "--set lr=1e-3 --set model.dim=320")
    p.add_argument("--init", help="a recogniser directory to continue from (its shape and weights)")
    p.set_defaults(func=_cmd_train)
    p = rsub.add_parser("eval", help="character and word error rates on held-out user turns")
    p.add_argument("--model", help="recogniser directory (default: the shipped one)")
    p.add_argument("--data", required=True, help="dialogue directories (duplex data synth), comma-separated")
    p.add_argument("--split", default="test", help="split to score (default test: held-out voices)")
    p.add_argument("--limit", type=int, default=0, help="score the first N turns only (0 = all)")
    p.add_argument("--via-rate", type=int, default=8000, help="resample the user audio to this rate and back first, "
                   "as a codec2 session does (default 8000; 0: not)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_eval)
    from agent.recognizer_lm import add_lm_command

    add_lm_command(rsub)


def _cmd_train(args) -> int:
    from agent.config import config_from_flags

    cfg = config_from_flags(RecognizerTrainConfig, args, ("data", "out", "steps", "init", "max_seconds", "threads"))
    print(json.dumps(train_recognizer(cfg, progress=not args.quiet), indent=2))
    print(f"wrote {cfg.out} (best/, last/, metrics.jsonl, loss.png)")
    return 0


def _cmd_eval(args) -> int:
    print(json.dumps(eval_recognizer(args.model, args.data, args.split, args.limit, progress=not args.quiet,
                                     via_rate=args.via_rate), indent=2))
    return 0
