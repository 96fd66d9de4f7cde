"""A word n-gram language model of what users say, for the recogniser's beam search (``listen/ctc_beam.py``).

Why: the recogniser's acoustic model alone gets about one character in three wrong on held-out voices, and a
spelled word snapped to the nearest lexicon word ignores its neighbours. Scoring whole word sequences with
the words users say in the training turns ("which city is the capital of ...") fixes most of those errors.

Interpolated absolute discounting (Ney et al.): with ``d`` the discount, ``c`` counts, ``N1+(h .)`` the number
of distinct words seen after history ``h``::

    p(w | h) = max(c(h w) - d, 0) / c(h) + d * N1+(h .) / c(h) * p(w | h')     (h' = h without its first word)
    p(w)     = max(c(w) - d, 0) / c(.) + d * N1+(.) / c(.) / V                 (V = vocabulary + end of sentence)

A history never seen backs off to ``h'`` whole. KenLM's estimator (``lmplz``) is not installable from PyPI, so
the counts are kept here, small enough for a closed domain (13.8 k training turns: ~50 k n-grams), and stored
as ``lm.json`` beside the recogniser's weights.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path

BOS, EOS = "<s>", "</s>"
LM_FILE = "lm.json"


class WordNgramLM:
    """An n-gram model of word sequences. ``order`` 1-5; words are whitespace-separated tokens as the
    recogniser writes them (lower case, punctuation attached)."""

    def __init__(self, counts: dict[tuple[str, ...], int], order: int = 3, discount: float = 0.75) -> None:
        if not 1 <= order <= 5:
            raise ValueError(f"A word language model's order must be 1 to 5, got {order}.")
        if not 0.0 < discount < 1.0:
            raise ValueError(f"The discount must be between 0 and 1, got {discount}.")
        self.order, self.discount = order, discount
        self.counts = {g: c for g, c in counts.items() if 1 <= len(g) <= order and c > 0}
        self.history_total: Counter = Counter()  # c(h), summed over the words after h
        self.history_types: Counter = Counter()  # N1+(h .)
        for g, c in self.counts.items():
            self.history_total[g[:-1]] += c
            self.history_types[g[:-1]] += 1
        self.words = sorted({g[0] for g in self.counts if len(g) == 1} - {EOS})
        self.vocab_size = len(self.words) + 1  # + end of sentence
        self._cache: dict[tuple[tuple[str, ...], str], float] = {}

    @classmethod
    def from_sentences(cls, sentences, order: int = 3, discount: float = 0.75) -> "WordNgramLM":
        """Counts every n-gram (n <= ``order``) of each sentence padded with ``<s>`` and ``</s>``."""
        counts: Counter = Counter()
        for s in sentences:
            words = str(s).split()
            if not words:
                continue
            toks = [BOS] * (order - 1) + words + [EOS]
            for n in range(1, order + 1):
                # n-grams that start inside the padding only count once the sentence starts
                for i in range(max(0, order - n), len(toks) - n + 1):
                    counts[tuple(toks[i:i + n])] += 1
        counts.pop((BOS,), None)
        return cls(dict(counts), order, discount)

    def prob(self, history: tuple[str, ...], word: str) -> float:
        """p(word | the last ``order - 1`` words of ``history``); > 0 for any word."""
        history = tuple(history)[-(self.order - 1):] if self.order > 1 else ()
        key = (history, word)
        p = self._cache.get(key)
        if p is not None:
            return p
        d = self.discount
        total = self.history_total.get(history, 0)
        if not history:
            c = self.counts.get((word,), 0)
            p = (max(c - d, 0.0) + d * self.history_types[()] / self.vocab_size) / max(total, 1)
        elif total == 0:
            p = self.prob(history[1:], word)
        else:
            c = self.counts.get(history + (word,), 0)
            p = (max(c - d, 0.0) + d * self.history_types[history] * self.prob(history[1:], word)) / total
        self._cache[key] = p
        return p

    def logprob(self, history: tuple[str, ...], word: str) -> float:
        return math.log(self.prob(history, word))

    def start(self) -> tuple[str, ...]:
        """The history at the start of a sentence."""
        return (BOS,) * (self.order - 1)

    def to_dict(self) -> dict:
        by_order: dict[str, list] = {}
        for g, c in sorted(self.counts.items()):
            by_order.setdefault(str(len(g)), []).append([*g, c])
        return {"order": self.order, "discount": self.discount, "ngrams": by_order}

    @classmethod
    def from_dict(cls, d: dict) -> "WordNgramLM":
        try:
            counts = {tuple(str(w) for w in row[:-1]): int(row[-1]) for rows in d["ngrams"].values() for row in rows}
            return cls(counts, int(d["order"]), float(d["discount"]))
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise ValueError(f"Not a word language model ({type(e).__name__}: {e}).") from e


def save_word_lm(lm: WordNgramLM, directory: str | os.PathLike, decode: dict | None = None) -> Path:
    """``lm.json`` in ``directory``: the counts and, under ``decode``, the beam search's tuned weights."""
    path = Path(directory) / LM_FILE
    path.write_text(json.dumps(lm.to_dict() | {"decode": decode or {}}) + "\n")
    return path


def load_word_lm(directory: str | os.PathLike) -> tuple[WordNgramLM, dict] | None:
    """The model and its ``decode`` settings from ``directory/lm.json``, or None when there is none."""
    path = Path(directory) / LM_FILE
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"The word language model {path} could not be read ({e}).") from e
    if not isinstance(d, dict):
        raise ValueError(f"The word language model {path} is not a JSON object.")
    return WordNgramLM.from_dict(d), dict(d.get("decode") or {})
