"""A small streaming speech recogniser of the user: PCM in, finished words out, frame by frame.

Why it exists: a heard-text model (``think/layout.py``) writes its transcript of the user into the text slot,
and the answers follow that transcript (``docs/diagnostics/oracle_heard.py``). Learning recognition inside the
duplex model from codec ids is slow on a CPU; this recogniser learns it directly from the synthetic dialogues'
user turns (``agent/recognizer_train.py``) and its words are written as the model's heard ids
(``agent/heard.py``). The model still hears the audio at every frame.

Architecture (all causal, explicit streaming state, ~1.5 M parameters)::

    PCM 16 kHz -> causal log-mel (25 ms windows ending at each 10 ms hop; 0-3.5 kHz, so an 8 kHz input path
      and a 48 kHz one give the same features) -> stack ``stack`` hops (40 ms) -> Linear
      -> ``conv_layers`` causal depthwise-conv blocks -> GRU (``rnn_layers``) -> Linear over blank + alphabet

Trained with CTC on each user turn's text plus a trailing space, so a word is finished the step the model
emits the space after it (at a turn's end: once it hears the silence after the last word). Two decoders:

* ``beam`` (when the directory has ``lm.json``, written by ``duplex recognizer train`` or ``lm``): a lexicon
  beam search with a word n-gram model of the training turns (``listen/ctc_beam.py``, ``listen/word_lm.py``).
* ``greedy``: best class per step; then each finished word outside the lexicon (``lexicon.json``: the words of
  the training turns) is replaced by the nearest lexicon word within ``SNAP_DISTANCE`` (normalised
  Levenshtein distance, rapidfuzz), as a closed-domain recogniser's vocabulary would.

Shapes: ``forward`` takes PCM ``(B, N)`` and returns log-probabilities ``(B, N // (stack*hop), classes)``.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from streaming.codecs.fsq import causal_log_mel, mel_filterbank

ALPHABET = " abcdefghijklmnopqrstuvwxyz',-?.!"
LEXICON_FILE = "lexicon.json"
SNAP_DISTANCE = 0.5  # a word this far (normalised edit distance) from every lexicon word is kept as spelled
ASSETS_DIR = Path(__file__).resolve().parent / "assets" / "recognizer"


@dataclass
class RecognizerConfig:
    """Shape of a recogniser (saved as ``config.json`` beside its weights)."""

    sample_rate: int = 16000  # input rate of the model; ``StreamingRecognizer`` resamples to it
    hop: int = 160  # samples per feature hop (10 ms)
    win: int = 400  # analysis window (25 ms), ending at each hop's end
    n_fft: int = 512
    n_mels: int = 48
    fmax: float = 3500.0  # every input path passes 0-3.5 kHz (codec2 runs at 8 kHz; soxr LQ rolls off above)
    stack: int = 4  # hops per model step (40 ms)
    dim: int = 256
    conv_layers: int = 2
    kernel: int = 5
    rnn_layers: int = 2
    alphabet: str = ALPHABET  # class k+1 is alphabet[k]; class 0 is the CTC blank

    def __post_init__(self) -> None:
        for name in ("sample_rate", "hop", "win", "n_fft", "n_mels", "stack", "dim", "conv_layers", "kernel",
                     "rnn_layers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"The recogniser's {name} must be an integer >= 1, got {v!r}.")
        if isinstance(self.fmax, bool) or not isinstance(self.fmax, (int, float)) or not 0 < self.fmax <= self.sample_rate / 2:
            raise ValueError(f"The recogniser's fmax must be above 0 and at most half its sample rate, got {self.fmax!r}.")
        if not isinstance(self.alphabet, str) or " " not in self.alphabet or len(set(self.alphabet)) != len(self.alphabet):
            raise ValueError("The recogniser's alphabet must be a string of distinct characters with a space in it.")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RecognizerConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"Unknown recogniser config fields {unknown}.")
        return cls(**d)

    @property
    def step_samples(self) -> int:
        return self.hop * self.stack

    @property
    def classes(self) -> int:
        return 1 + len(self.alphabet)


def normalize_text(text: str, alphabet: str = ALPHABET) -> str:
    """Lower-case, characters outside ``alphabet`` dropped, spaces collapsed (what the recogniser writes)."""
    keep = "".join(ch for ch in text.lower() if ch in alphabet)
    return " ".join(keep.split())


def build_model(cfg: RecognizerConfig, classes: int | None = None):
    """The torch module (built lazily: ``import listen`` stays numpy-only). ``classes``: the output size
    (default: CTC blank + alphabet; the turn detector, ``listen/turn_detector.py``, uses the same streaming
    encoder with two)."""
    import torch
    from torch import nn

    class Block(nn.Module):
        """Residual causal depthwise conv (state: the last ``kernel - 1`` steps) + pointwise MLP."""

        def __init__(self) -> None:
            super().__init__()
            self.dw = nn.Conv1d(cfg.dim, cfg.dim, cfg.kernel, groups=cfg.dim)
            self.norm = nn.LayerNorm(cfg.dim)
            self.mlp = nn.Sequential(nn.Linear(cfg.dim, 2 * cfg.dim), nn.GELU(), nn.Linear(2 * cfg.dim, cfg.dim))

        def forward(self, x, state=None):  # x (B, T, D)
            n = cfg.kernel - 1
            if state is None:
                state = x.new_zeros(x.shape[0], n, x.shape[2])
            padded = torch.cat([state, x], dim=1)
            y = self.dw(padded.transpose(1, 2)).transpose(1, 2)
            return x + self.mlp(self.norm(y)), padded[:, -n:]

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cfg = cfg
            fb = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, fmax=cfg.fmax)
            self.register_buffer("mel_fb", torch.from_numpy(fb), persistent=False)
            self.register_buffer("window", torch.hann_window(cfg.win, periodic=True), persistent=False)
            self.inp = nn.Linear(cfg.n_mels * cfg.stack, cfg.dim)
            self.blocks = nn.ModuleList(Block() for _ in range(cfg.conv_layers))
            self.rnn = nn.GRU(cfg.dim, cfg.dim, cfg.rnn_layers, batch_first=True)
            self.out = nn.Linear(cfg.dim, classes or cfg.classes)

        def features(self, pcm, state=None):
            """PCM ``(B, n*stack*hop)`` -> log-mel steps ``(B, n, stack*n_mels)``, state (the last window's
            context)."""
            mel, state = causal_log_mel(pcm, state, self.window, self.mel_fb, cfg.hop, cfg.n_fft, 1e-6)
            b, hops, m = mel.shape
            return ((mel + 6.0) / 4.0).reshape(b, hops // cfg.stack, cfg.stack * m), state

        def forward(self, pcm, state: dict | None = None, feats=None):
            """Log-probabilities ``(B, steps, classes)`` and the new state. ``feats`` (from :meth:`features`)
            skips the front end (training on precomputed features)."""
            state = state or {}
            new = {}
            if feats is None:
                feats, new["mel"] = self.features(pcm, state.get("mel"))
            h = self.inp(feats)
            for i, block in enumerate(self.blocks):
                h, new[f"conv{i}"] = block(h, state.get(f"conv{i}"))
            h, new["rnn"] = self.rnn(h, state.get("rnn"))
            return torch.log_softmax(self.out(h), dim=-1), new

    return Model()


def save_recognizer(model, out_dir: str | os.PathLike, extra: dict | None = None,
                    lexicon: list[str] | None = None) -> None:
    """``config.json`` + ``model.safetensors`` (+ ``lexicon.json`` when ``lexicon`` or the model has one, +
    ``lm.json`` when the model has a word LM)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(model.cfg), indent=2) + "\n")
    lexicon = lexicon if lexicon is not None else getattr(model, "lexicon", None)
    if lexicon:
        (out / LEXICON_FILE).write_text(json.dumps(sorted(lexicon)) + "\n")
    word_lm = getattr(model, "word_lm", None)
    if word_lm is not None:
        from listen.word_lm import save_word_lm

        save_word_lm(word_lm[0], out, word_lm[1])
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={k: str(v) for k, v in (extra or {}).items()})


def load_recognizer(path: str | os.PathLike | None = None):
    """The model in ``path`` (``config.json`` + ``model.safetensors``), or the shipped one when ``path`` is
    None; float32, eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = Path(path) if path is not None else ASSETS_DIR
    if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
        where = "no recogniser ships with this copy" if path is None else f"{d} has no config.json + model.safetensors"
        raise FileNotFoundError(f"No speech recogniser found: {where}; train one with `duplex recognizer train`.")
    try:
        cfg = RecognizerConfig.from_dict(json.loads((d / "config.json").read_text()))
        model = build_model(cfg)
        model.load_state_dict(load_file(str(d / "model.safetensors")))
    except (ValueError, TypeError, RuntimeError, OSError, SafetensorError) as e:  # json, a field, the file, a shape
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"The speech recogniser in {d} could not be loaded ({first[:200]}).") from e
    lex = d / LEXICON_FILE
    model.lexicon = json.loads(lex.read_text()) if lex.is_file() else None
    from listen.word_lm import load_word_lm

    model.word_lm = load_word_lm(d)  # (WordNgramLM, decode settings) or None
    return model.eval()


DECODERS = ("auto", "greedy", "beam")


def search_graph(model):
    """The beam search's shared lexicon trie + word LM for ``model`` (built once per loaded model)."""
    from listen.ctc_beam import SearchGraph

    graph = getattr(model, "_search_graph", None)
    if graph is None:
        lm, _ = model.word_lm
        # the LM's vocabulary: the training turns' words (the lexicon) and any general-English base words
        graph = model._search_graph = SearchGraph(lm, lm.words, model.cfg.alphabet)
    return graph


class Lexicon:
    """Snaps a spelled word to the nearest word of a closed vocabulary (or keeps it: see ``SNAP_DISTANCE``)."""

    def __init__(self, words: list[str], max_distance: float = SNAP_DISTANCE) -> None:
        self.words = list(words)
        self.known = set(self.words)
        self.max_distance = max_distance

    def snap(self, word: str) -> str:
        if word in self.known or not self.words:
            return word
        from rapidfuzz import distance, process

        best = process.extractOne(word, self.words, scorer=distance.Levenshtein.normalized_distance,
                                  score_cutoff=self.max_distance)
        return best[0] if best else word


def shipped_recognizer_dir() -> Path | None:
    return ASSETS_DIR if (ASSETS_DIR / "model.safetensors").is_file() else None


@dataclass
class RecognizerState:
    """One stream's state: the model's (front-end context, conv and GRU states), the samples not yet a
    whole step, and the greedy decoder's (last class, the word being spelled)."""

    model: dict = field(default_factory=dict)
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    last_class: int = 0
    word: str = ""
    steps: int = 0


def greedy_words(classes: list[int], alphabet: str, state: RecognizerState) -> list[str]:
    """CTC greedy decoding of one stream's step classes: repeats merged, blanks dropped; a word is returned
    when the space after it arrives. Updates ``state``."""
    words = []
    for c in classes:
        if c != state.last_class and c != 0:
            ch = alphabet[c - 1]
            if ch == " ":
                if state.word:
                    words.append(state.word)
                state.word = ""
            else:
                state.word += ch
        state.last_class = c
    return words


class StreamingRecognizer:
    """Feeds one stream's PCM (at ``cfg.sample_rate``, float32 mono) and returns the words it finished.

    ``decoder``: ``auto`` (the beam search when the model has a word LM, else greedy), ``greedy`` or
    ``beam``. ``snap``: greedy words snap to the lexicon. Stateful per session: :meth:`reset` starts a new
    stream. Costs one small forward per 40 ms step (+ ~0.3 ms of search with the beam)."""

    def __init__(self, model, snap: bool = True, decoder: str = "auto") -> None:
        import torch

        if decoder not in DECODERS:
            raise ValueError(f"The recogniser's decoder must be one of {', '.join(DECODERS)}, got {decoder!r}.")
        has_lm = getattr(model, "word_lm", None) is not None
        if decoder == "beam" and not has_lm:
            raise ValueError("The beam decoder needs the recogniser's word language model (lm.json); "
                             "build it with `duplex recognizer lm`.")
        self.model = model
        self.cfg: RecognizerConfig = model.cfg
        self._torch = torch
        self.state = RecognizerState()
        words = getattr(model, "lexicon", None)
        self.lexicon = Lexicon(words) if snap and words else None
        self.beam = None
        if decoder == "beam" or (decoder == "auto" and has_lm):
            from listen.ctc_beam import BeamConfig, StreamingBeamDecoder

            self.beam = StreamingBeamDecoder(search_graph(model), BeamConfig.from_dict(model.word_lm[1]))

    def reset(self) -> None:
        self.state = RecognizerState()
        if self.beam is not None:
            self.beam.reset()

    def push(self, pcm: np.ndarray) -> list[str]:
        """Words finished by this audio ``(n,)`` (any length; samples short of a step wait for the next)."""
        st = self.state
        pcm = np.concatenate([st.pending, np.asarray(pcm, np.float32).reshape(-1)])
        n = len(pcm) // self.cfg.step_samples * self.cfg.step_samples
        st.pending = pcm[n:]
        if n == 0:
            return []
        torch = self._torch
        with torch.inference_mode():
            logp, st.model = self.model(torch.from_numpy(pcm[:n])[None], st.model)
        st.steps += logp.shape[1]
        if self.beam is not None:
            return self.beam.step(logp[0].numpy())
        classes = logp[0].argmax(-1).tolist()
        return self._snapped(greedy_words(classes, self.cfg.alphabet, st))

    def flush(self) -> list[str]:
        """The words still open (the one being spelled; with the beam, the utterance's last ones): end of
        input or of an utterance."""
        if self.beam is not None:
            return self.beam.end()
        word, self.state.word = self.state.word, ""
        return self._snapped([word] if word else [])

    def end_utterance(self) -> list[str]:
        """The user paused: with the beam, close the utterance and return its last words (the search
        finishes them with the end-of-sentence score; the acoustic state runs on). Greedy: nothing (its
        word in progress waits for its space or :meth:`flush`)."""
        return self.beam.end() if self.beam is not None else []

    def _snapped(self, words: list[str]) -> list[str]:
        return [self.lexicon.snap(w) for w in words] if self.lexicon else words
