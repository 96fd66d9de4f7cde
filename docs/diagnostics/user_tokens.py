"""Which user-side tokens can a small model learn to recognise? A controlled listening experiment.

The default model's answers ignore the question (``listening.py``): its user stream is codec2 700C, which even
Whisper only half understands (~60 % WER). This trains the same small decoder (the ``tiny`` preset's shape) for
the same wall-clock budget to transcribe held-out user turns from two tokenisations of the same audio:

- ``codec2``: the layout's user ids, codec2 700C, 6 ids per 80 ms (2 frames x 3 codebooks);
- ``mel``: k-means units (K=1024) of 20 ms log-mel frames (40 mels, 10 ms hop, two hops stacked), 4 ids per
  80 ms, from the 16 kHz audio. It cannot be decoded to audio, which the user side never needs.
- ``mel8``: the same from the audio at codec2's 8 kHz (telephone band, what the session's listener has).

Sequences are ``[BOS] audio ids [SEP] transcript ids [EOS]``; the loss is on the transcript. Scored on the test
split (held-out voices): transcript cross-entropy and accuracy with the real audio and with another turn's audio
(the gap is what is recognised), and the WER of greedy transcripts. Prints JSON. Not part of the package.

    python docs/diagnostics/user_tokens.py DATA_DIR OUT_DIR SECONDS_PER_TOKENISATION [MAX_TRAIN_TURNS [NAMES]]

NAMES is a comma-separated subset of mel,codec2,mel8 (default mel,codec2). With CURVE_STEPS (e.g.
``500,1000,2000``) each tokenisation is also scored after those steps: the learning curve of recognition.

    python docs/diagnostics/user_tokens.py DATA_DIR OUT_DIR SECONDS MAX_TRAIN_TURNS NAMES CURVE_STEPS
"""
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import soxr
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

from agent.training.tokenize import iter_dialogues
from listen.wavio import read_wav
from streaming.codecs.base import load_codec
from think.tokenizer import default_tokenizer

torch.set_num_threads(2)
data, out, budget = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
max_train = int(sys.argv[4]) if len(sys.argv) > 4 else 20000
names = sys.argv[5].split(",") if len(sys.argv) > 5 else ["mel", "codec2"]
curve = [int(x) for x in sys.argv[6].split(",")] if len(sys.argv) > 6 else []
out.mkdir(parents=True, exist_ok=True)
RATE, K, MAX_TURN_S = 16000, 1024, 6.0
tok = default_tokenizer()
MEL = {16000: mel_filter_bank(num_frequency_bins=201, num_mel_filters=40, min_frequency=60, max_frequency=7600,
                               sampling_rate=16000, norm="slaney", mel_scale="slaney"),
       8000: mel_filter_bank(num_frequency_bins=101, num_mel_filters=40, min_frequency=60, max_frequency=3800,
                             sampling_rate=8000, norm="slaney", mel_scale="slaney")}


def log_mel(pcm: np.ndarray, rate: int = RATE) -> np.ndarray:
    """(frames, 40) log-mel with a 25 ms window at a 10 ms hop; causal framing (no centre padding)."""
    if rate != RATE:
        pcm = soxr.resample(pcm, RATE, rate).astype(np.float32)
    n = rate // 40
    spec = spectrogram(pcm, window_function(n, "hann"), frame_length=n, hop_length=rate // 100, power=2.0,
                       center=False, mel_filters=MEL[rate], log_mel="log10", mel_floor=1e-8)
    return spec.T.astype(np.float32)


def turns(split_filter) -> list[tuple[np.ndarray, str]]:
    items = []
    for wav, rec in iter_dialogues(data):
        if not split_filter(rec.get("split")):
            continue
        pcm, rate = read_wav(wav)
        user = pcm[:, 0] if pcm.ndim == 2 else pcm
        for t in rec["turns"]:
            if t["speaker"] != "user" or not t["text"].strip() or t["end"] - t["start"] > MAX_TURN_S:
                continue
            a, b = int(max(0.0, t["start"] - 0.05) * rate), int((t["end"] + 0.1) * rate)
            items.append((user[a:b].astype(np.float32), t["text"]))
        if len(items) >= max_train:
            break
    return items


def codec2_ids(items, codec) -> list[np.ndarray]:
    offsets = np.concatenate([[0], np.cumsum(codec.spec.codebook_sizes)[:-1]])
    seqs = []
    for pcm, _ in items:
        codes = codec.encode_all(soxr.resample(pcm, RATE, codec.spec.sample_rate))  # (frames, Q)
        seqs.append((codes + offsets).reshape(-1))
    return seqs, int(sum(codec.spec.codebook_sizes))


def mel_units(items, centroids=None, rate: int = RATE) -> tuple[list[np.ndarray], torch.Tensor]:
    feats = []
    for pcm, _ in items:
        m = log_mel(pcm, rate)
        m = m[: len(m) // 2 * 2].reshape(-1, 80)  # two 10 ms hops per unit
        feats.append(m)
    if centroids is None:
        pool = torch.from_numpy(np.concatenate(feats))
        pool = pool[torch.randperm(len(pool))[:150_000]]
        centroids = pool[torch.randperm(len(pool))[:K]].clone()
        for _ in range(20):  # Lloyd iterations
            assign = torch.cat([torch.cdist(c, centroids).argmin(1) for c in pool.split(20000)])
            for k in range(K):
                members = pool[assign == k]
                if len(members):
                    centroids[k] = members.mean(0)
    seqs = [torch.cdist(torch.from_numpy(f), centroids).argmin(1).numpy() for f in feats]
    return seqs, centroids


def build(audio_seqs, items, audio_vocab):
    """[BOS] audio [SEP] text [EOS] with the loss start index."""
    bos, sep, eos, text0 = audio_vocab, audio_vocab + 1, audio_vocab + 2, audio_vocab + 3
    rows = []
    for a, (_, text) in zip(audio_seqs, items):
        t = [text0 + i for i in tok.encode(text).ids] + [eos]
        rows.append((np.concatenate([[bos], a, [sep], t]).astype(np.int64), len(a) + 2))
    return rows, text0 + tok.get_vocab_size()


def model_for(vocab: int) -> LlamaForCausalLM:
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=1, head_dim=64, max_position_embeddings=1024,
                      tie_word_embeddings=True, rms_norm_eps=1e-6)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def batch(rows):
    n = max(len(r) for r, _ in rows)
    ids = torch.zeros(len(rows), n, dtype=torch.long)
    labels = torch.full((len(rows), n), -100, dtype=torch.long)
    for i, (r, start) in enumerate(rows):
        ids[i, : len(r)] = torch.from_numpy(r)
        labels[i, start: len(r)] = torch.from_numpy(r[start:])
    return ids, labels


def train(model, rows, seconds: float, tokens_per_batch: int = 6000, at_steps=(), on_step=None) -> dict:
    """Train for ``seconds`` of wall time (cosine lr over that time); ``on_step(step)`` after ``at_steps``."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    rng, t0, step, losses = random.Random(0), time.time(), 0, []
    rows = sorted(rows, key=lambda r: len(r[0]))
    paused = 0.0  # scoring time does not count against the budget
    while time.time() - t0 - paused < seconds:
        if step in at_steps and on_step is not None:
            t1 = time.time()
            on_step(step)
            model.train()
            paused += time.time() - t1
        i = rng.randrange(len(rows))
        n = max(1, tokens_per_batch // len(rows[i][0]))
        chunk = rows[i: i + n] if i + n <= len(rows) else rows[len(rows) - n:]
        frac = (time.time() - t0 - paused) / seconds
        for g in opt.param_groups:
            g["lr"] = 1e-3 * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        ids, labels = batch(chunk)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        step += 1
    return {"steps": step, "final_train_loss": float(np.mean(losses[-50:]))}


def wer(ref: list[str], hyp: list[str]) -> tuple[int, int]:
    d = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, d[0] = d[0], i
        for j, h in enumerate(hyp, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (r != h))
    return d[len(hyp)], len(ref)


def score(model, rows, audio_seqs, audio_vocab, text0, greedy_n=150) -> dict:
    model.eval()
    out = {}
    for name, shift in (("real", 0), ("other_turn", 1)):
        ce, acc, n = 0.0, 0.0, 0
        for i, (r, start) in enumerate(rows):
            if shift:
                other = audio_seqs[(i + 7) % len(rows)]
                r = np.concatenate([[audio_vocab], other, r[start - 1:]])
                start = len(other) + 2
            ids, labels = batch([(r, start)])
            with torch.no_grad():
                logits = model(ids).logits[0, :-1]
            tgt = labels[0, 1:]
            m = tgt != -100
            ce += torch.nn.functional.cross_entropy(logits[m], tgt[m], reduction="sum").item()
            acc += (logits[m].argmax(-1) == tgt[m]).sum().item()
            n += int(m.sum())
        out[name] = {"ce": ce / n, "acc": acc / n}
    errors = words = 0
    examples = []
    for r, start in rows[:greedy_n]:
        prompt = torch.from_numpy(r[:start])[None]
        with torch.no_grad():
            gen = model.generate(prompt, max_new_tokens=40, do_sample=False, eos_token_id=audio_vocab + 2,
                                 pad_token_id=audio_vocab + 2)[0, start:].tolist()
        hyp = tok.decode([g - text0 for g in gen if g >= text0]).split()
        ref = tok.decode([g - text0 for g in r[start:].tolist() if g >= text0]).split()
        e, w = wer(ref, hyp)
        errors, words = errors + e, words + w
        if len(examples) < 8:
            examples.append({"ref": " ".join(ref), "hyp": " ".join(hyp)})
    out["greedy_wer"] = errors / max(1, words)
    out["examples"] = examples
    return out


if __name__ == "__main__":
    t0 = time.time()
    train_items = turns(lambda s: s == "train")
    test_items = turns(lambda s: s == "test")[:400]
    print(f"{len(train_items)} train turns, {len(test_items)} test turns ({time.time() - t0:.0f} s)", flush=True)
    codec = load_codec("codec2", mode="700C", frame_ms=80)
    results = {"budget_s": budget, "train_turns": len(train_items), "test_turns": len(test_items)}
    runs = []
    for name in names:
        if name == "codec2":
            (tr, vocab), (te, _) = codec2_ids(train_items, codec), codec2_ids(test_items, codec)
            runs.append((name, tr, te, vocab, 6))
        else:
            rate = 8000 if name == "mel8" else RATE
            tr, centroids = mel_units(train_items, rate=rate)
            te, _ = mel_units(test_items, centroids, rate=rate)
            runs.append((name, tr, te, K, 4))
    print(f"tokenised ({time.time() - t0:.0f} s)", flush=True)
    for name, tr, te, vocab, per80 in runs:
        rows, total = build(tr, train_items, vocab)
        test_rows, _ = build(te, test_items, vocab)
        model = model_for(total)
        points = []

        def checkpoint(step, model=model, test_rows=test_rows, te=te, vocab=vocab, points=points, name=name):
            scored = score(model, test_rows, te, vocab, vocab + 3, greedy_n=100)
            points.append({"step": step, "real": scored["real"], "other_turn": scored["other_turn"],
                           "greedy_wer": scored["greedy_wer"], "examples": scored["examples"][:4]})
            print(json.dumps({name: points[-1]}), flush=True)

        info = train(model, rows, budget, at_steps=set(curve), on_step=checkpoint)
        info["curve"] = points
        info["ids_per_80ms"] = per80
        info.update(score(model, test_rows, te, vocab, vocab + 3))
        results[name] = info
        print(json.dumps({name: info}, indent=1), flush=True)
        (out / f"user_tokens-{'-'.join(names)}.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
