"""``duplex recognizer lm``: the recogniser's word language model and its beam search's weights.

The model (``listen/word_lm.py``) counts the words of the training split's user turns, the same turns the
recogniser trained on (so the val/test turns' held-out slot values stay unknown to it, as to the lexicon).
The weights (``lm_weight``, ``word_score``) are picked on val turns by the word error rate of the search as a
session runs it, and everything is written to the recogniser directory's ``lm.json``; a session's
recogniser then decodes with the beam (``listen/ctc_beam.py``). ``duplex recognizer train`` does this at the
end of training for ``best/`` and ``last/``.
"""
from __future__ import annotations

import itertools
import json

import numpy as np

from listen.ctc_beam import BeamConfig, StreamingBeamDecoder
from listen.recognizer import search_graph
from listen.word_lm import WordNgramLM, save_word_lm

LM_WEIGHTS = (0.3, 0.5, 0.7, 1.0)
WORD_SCORES = (0.0, 0.5)
STREAM_STEPS = 2  # a session feeds the recogniser one 80 ms codec frame (two 40 ms steps) at a time


def beam_words(decoder: StreamingBeamDecoder, logp: np.ndarray, chunk: int = STREAM_STEPS) -> list[str]:
    """One utterance ``(steps, classes)`` through a streaming search, ``chunk`` steps at a time, as a session
    decodes it (``chunk=0``: all at once); the words in the order they were committed."""
    decoder.reset()
    words = []
    size = chunk or max(1, len(logp))
    for i in range(0, len(logp), size):
        words += decoder.step(logp[i:i + size])
    return words + decoder.end()


def word_error_rate(hyps: list[str], refs: list[str]) -> float:
    from rapidfuzz.distance import Levenshtein

    err = sum(Levenshtein.distance(h.split(), r.split()) for h, r in zip(hyps, refs))
    return round(err / max(1, sum(len(r.split()) for r in refs)), 4)


def attach_word_lm(model, lm: WordNgramLM, decode: dict | None = None) -> None:
    """``model.word_lm`` = ``lm`` with ``decode`` settings (default weights); the search graph is rebuilt."""
    model.word_lm = (lm, dict(decode or {}))
    model._search_graph = None


def tune_beam(model, logps: list[np.ndarray], texts: list[str], chunk: int = 0) -> tuple[dict, list[dict]]:
    """The ``lm_weight`` x ``word_score`` pair with the lowest WER on ``logps`` (one array per turn), and every
    pair's WER. ``chunk=0`` decodes each turn at once (the same search; quicker to tune)."""
    graph = search_graph(model)
    grid = []
    for lm_weight, word_score in itertools.product(LM_WEIGHTS, WORD_SCORES):
        decoder = StreamingBeamDecoder(graph, BeamConfig(lm_weight=lm_weight, word_score=word_score))
        hyps = [" ".join(beam_words(decoder, lp, chunk)) for lp in logps]
        grid.append({"lm_weight": lm_weight, "word_score": word_score, "wer": word_error_rate(hyps, texts)})
    best = min(grid, key=lambda g: g["wer"])
    return {"lm_weight": best["lm_weight"], "word_score": best["word_score"]}, grid


def build_and_tune(model, lm: WordNgramLM, val_feats: list[np.ndarray], val_texts: list[str]) -> dict:
    """Attach ``lm`` (counted from the training turns) to ``model`` with the val-tuned weights; returns what
    was chosen."""
    attach_word_lm(model, lm)
    if not val_feats:  # nothing to tune on: the defaults
        return {"decode": {}, "grid": []}
    from agent.recognizer_train import log_probs

    decode, grid = tune_beam(model, log_probs(model, val_feats), [t.strip() for t in val_texts])
    attach_word_lm(model, lm, decode)
    return {"decode": decode, "grid": grid}


def make_word_lm(model_dir: str, data: str, order: int = 3, progress: bool = True) -> dict:
    """``duplex recognizer lm``: count the train split's user turns of ``data``, tune on its val turns, write
    ``model_dir/lm.json``."""
    from agent.recognizer_train import error_rates, featurize, user_turns
    from agent.training.tokenize import dialogue_dirs
    from listen.recognizer import load_recognizer

    model = load_recognizer(model_dir)
    dirs = dialogue_dirs(data)
    train_texts = [t for _, _, _, t in user_turns(dirs, "train")]
    if not train_texts:
        raise ValueError(f"No user turns in the train split of {data} to count words from.")
    val_feats, val_texts = featurize(model, user_turns(dirs, "val")[:400], None, progress, 8000)
    lm = WordNgramLM.from_sentences(train_texts, order=order)
    chosen = build_and_tune(model, lm, val_feats, val_texts)
    path = save_word_lm(lm, model_dir, model.word_lm[1])
    rates = error_rates(model, val_feats, val_texts) if val_feats else {}
    return {"wrote": str(path), "order": order, "train_turns": len(train_texts), "words": len(lm.words),
            "ngrams": len(lm.counts), "decode": chosen["decode"], "grid": chosen["grid"],
            "val": {k: v for k, v in rates.items() if k != "examples"}}


def add_lm_command(rsub) -> None:
    p = rsub.add_parser("lm", help="count a word language model of the training turns and tune the beam search "
                                    "(writes lm.json beside the recogniser's weights)")
    p.add_argument("--model", required=True, help="recogniser directory (config.json + model.safetensors)")
    p.add_argument("--data", required=True, help="dialogue directories (duplex data synth), comma-separated")
    p.add_argument("--order", type=int, default=3, help="n-gram order (default 3)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_lm)


def _cmd_lm(args) -> int:
    print(json.dumps(make_word_lm(args.model, args.data, args.order, progress=not args.quiet), indent=2))
    return 0
