"""The heard text a session's listener writes: the recogniser's finished words as a heard-text model's heard ids.

A heard-text model (``think/layout.py``) was trained with the user's words in its text slot, placed by
``place_heard`` (``agent/training/tokenize.py``): each word's pieces on the frames right after the word, never
inside the agent's own turn, dropped when more than ``HEARD_MAX_LAG`` frames late. :class:`HeardWriter` does the
same live: the recogniser (``listen/recognizer.py``) hears each user frame, and every word it finishes is queued
as pieces; each frame the session asks :meth:`HeardWriter.next_id` for the piece waiting (or None). By default
(``HeardConfig.placement="first"``) the piece takes the text slot and the model draws only the audio; with
``"pad"`` the model draws its text slot as usual and the piece goes in only where the draw is PAD (the backends'
``heard_id``), as training placed it. The writer is told what the slot held (:meth:`HeardWriter.observe`), so
it knows when the piece went in and when the agent is speaking.

``HeardConfig.source`` picks who writes the transcript: ``model`` (the model draws heard ids, as before),
``recognizer``, or ``auto`` (the recogniser when the model has a heard-text layout and a recogniser is found).
"""
from __future__ import annotations

import collections
import functools
from dataclasses import dataclass

import numpy as np

from agent.training.tokenize import HEARD_MAX_LAG
from listen.resample import StreamingResampler
from think.layout import DuplexLayout

SOURCES = ("auto", "model", "recognizer")
PLACEMENTS = ("first", "pad")
# The agent's turn ends at its end-of-turn id; a model that never writes one is taken to have stopped after
# this many frames without a word piece (2 s), so the transcript does not stop for good.
SPEAKING_TIMEOUT_FRAMES = 25
# After this many frames the VAD calls silence (1 s), a word still being spelled is taken as finished and the
# recogniser's stream starts afresh: it was trained on turns with under a second of silence before them.
RESET_AFTER_SILENT_FRAMES = 12
# After this many silent frames (240 ms) the recogniser's beam search closes the utterance: it rarely agrees
# on a last word before that, and the word would come too late for the model (``max_lag_frames``).
END_UTTERANCE_AFTER_SILENT_FRAMES = 3


@dataclass
class HeardConfig:
    """Who writes a heard-text model's transcript of the user.

    Attributes:
        source: ``auto`` (the recogniser when the model has heard text and a recogniser is found), ``model``
            (the model draws its heard ids itself) or ``recognizer`` (an error if it cannot be used).
        recognizer: a local recogniser directory (``duplex recognizer train``); empty: the shipped one.
        max_lag_frames: a queued word piece more than this many frames after its word was finished is dropped
            (the agent spoke meanwhile), as in training.
        during_agent_turn: also write word pieces while the agent speaks. The recogniser finishes a question's
            last word ~0.26 s after the user stops (median, data-v2 test turns), often after the agent has
            begun; held back, that word is lost. Off by default: models are trained with the pieces held back
            (``place_heard``; ``duplex data tokenize --heard-recognizer`` writes them as this setting says).
        decoder: the recogniser's decoding: ``auto`` (the beam search with its word language model when the
            recogniser has ``lm.json``, else greedy), ``greedy`` (+ lexicon snap) or ``beam``.
        placement: where a waiting word piece goes: ``first`` takes the text slot before the model draws (the
            agent cannot start its turn in that frame: it waits while the transcript is still coming), ``pad``
            only where the model draws PAD, as training placed the pieces, so the transcript never holds back the
            agent. Measured with v16 on data-v2's test dialogues through the browser path (model card): ``pad``
            answers ~50 ms sooner (median 237 vs 286 ms) and takes more turns (0.94 vs 0.90), but barges into
            more of the user's pauses (0.69 vs 0.44).
    """

    source: str = "auto"
    recognizer: str = ""
    max_lag_frames: int = HEARD_MAX_LAG
    during_agent_turn: bool = False
    decoder: str = "auto"
    placement: str = "first"

    def __post_init__(self) -> None:
        from listen.recognizer import DECODERS

        if self.source not in SOURCES:
            raise ValueError(f"heard.source must be one of {', '.join(SOURCES)}, got {self.source!r}.")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"heard.placement must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}.")
        if self.decoder not in DECODERS:
            raise ValueError(f"heard.decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}.")
        if isinstance(self.max_lag_frames, bool) or not isinstance(self.max_lag_frames, int) or self.max_lag_frames < 0:
            raise ValueError(f"heard.max_lag_frames must be an integer >= 0, got {self.max_lag_frames!r}.")


def load_heard_recognizer(config: HeardConfig, layout: DuplexLayout):
    """The recogniser model a session should use, or None when the model writes its own transcript."""
    from listen.recognizer import shipped_recognizer_dir

    if config.source == "model":
        return None
    if not layout.heard_text:
        if config.source == "recognizer":
            raise ValueError("heard.source=recognizer needs a heard-text model (duplex model init --heard-text).")
        return None
    if not config.recognizer and shipped_recognizer_dir() is None:
        if config.source == "recognizer":
            raise FileNotFoundError("heard.source=recognizer, but no recogniser ships with this copy; pass "
                                    "heard.recognizer=DIR (duplex recognizer train).")
        return None
    return _cached_recognizer(config.recognizer or None)


@functools.lru_cache(maxsize=4)
def _cached_recognizer(path: str | None):
    """One model per directory for every session of a process (each session keeps its own stream state)."""
    from listen.recognizer import load_recognizer

    return load_recognizer(path)


class HeardWriter:
    """One session's writer: ``hear`` every user frame, then ``next_id`` and ``observe`` around the model step.

    ``recognizer``: a model from :func:`listen.recognizer.load_recognizer` (shared by sessions; the stream
    state is this writer's). ``codec_rate``: the rate of the user frames' audio."""

    def __init__(self, recognizer, layout: DuplexLayout, tokenizer, codec_rate: int,
                 max_lag_frames: int = HEARD_MAX_LAG, during_agent_turn: bool = False, decoder: str = "auto") -> None:
        from listen.recognizer import StreamingRecognizer

        if not layout.heard_text:
            raise ValueError("A heard writer needs a heard-text layout.")
        self.layout = layout
        self.tokenizer = tokenizer
        self.max_lag = max_lag_frames
        self.during_agent_turn = during_agent_turn
        self.recognizer = StreamingRecognizer(recognizer, decoder=decoder)
        self.resampler = StreamingResampler(codec_rate, recognizer.cfg.sample_rate, "LQ")
        self.queue: collections.deque[tuple[int, int]] = collections.deque()  # (heard id, last frame it may go in)
        self.speaking = False
        self.since_piece = 0  # frames since the agent's last word piece
        self.silent = 0  # frames in a row the VAD called silence
        self.words: collections.deque[str] = collections.deque(maxlen=256)  # the newest words (a session may run for days)
        self.dropped = 0

    def reset(self) -> None:
        self.recognizer.reset()
        self.resampler.reset()
        self.queue.clear()
        self.speaking = False
        self.since_piece = 0
        self.silent = 0
        self.words.clear()
        self.dropped = 0

    def hear(self, audio: np.ndarray, frame: int, speech: bool = True) -> list[str]:
        """Feed one user frame's audio ``(frame_samples,)`` at the codec rate and its VAD flag; returns the
        words it finished."""
        words = self.recognizer.push(self.resampler.process(np.asarray(audio, np.float32)))
        self.silent = 0 if speech else self.silent + 1
        if self.silent == END_UTTERANCE_AFTER_SILENT_FRAMES:
            words += self.recognizer.end_utterance()
        if self.silent == RESET_AFTER_SILENT_FRAMES:
            words += self.recognizer.flush()
            self.recognizer.reset()
        for word in words:
            for piece in self.tokenizer.encode(" " + word).ids:
                self.queue.append((self.layout.heard_id(piece), frame + self.max_lag))
        self.words.extend(words)
        return words

    def next_id(self, frame: int) -> int | None:
        """The heard id waiting for this frame's text slot, or None. The session puts it in the slot
        (``placement="first"``) or where the model draws PAD (``"pad"``); :meth:`observe` takes it off the
        queue once it is in."""
        while self.queue and self.queue[0][1] < frame:
            self.queue.popleft()
            self.dropped += 1
        if (self.speaking and not self.during_agent_turn) or not self.queue:
            return None
        return self.queue[0][0]

    def observe(self, text_id: int, forced_silence: bool) -> None:
        """What the text slot held this frame: the waiting heard id, once written, leaves the queue; the agent
        speaks from its first word piece to its end-of-turn (or a cut), and no heard id goes inside that span."""
        lay = self.layout
        if self.queue and text_id == self.queue[0][0]:
            self.queue.popleft()
        self.since_piece += 1
        if forced_silence or text_id == lay.eot_id:
            self.speaking = False
        elif text_id < lay.text_vocab_size and text_id != lay.pad_id:
            self.speaking, self.since_piece = True, 0
        elif self.since_piece > SPEAKING_TIMEOUT_FRAMES:
            self.speaking = False


def recognized_heard(text: np.ndarray, user: np.ndarray, codec_rate: int, frame_samples: int, layout: DuplexLayout,
                     tokenizer, recognizer, max_lag_frames: int = HEARD_MAX_LAG,
                     vad_aggressiveness: int = 2, during_agent_turn: bool = False, decoder: str = "auto") -> np.ndarray:
    """A training text track ``(frames,)`` with its heard ids written as a live session's writer would: from
    the recogniser's words on the user channel ``user`` (at ``codec_rate``, the session's audio), with the
    session's VAD, in the frames the agent leaves free. The model then trains on the transcript, the errors and
    the timing it will be given (``during_agent_turn`` as :class:`HeardConfig` says; inside the agent's turn a
    piece takes a PAD frame, never one of the agent's own; ``decoder`` as :class:`HeardConfig` says). Returns a new array; agent text, PAD and end-of-turn
    ids stay."""
    from listen.vad import VoiceActivityDetector

    out = np.where([layout.is_heard_id(int(t)) for t in text], layout.pad_id, text).astype(text.dtype)
    writer = HeardWriter(recognizer, layout, tokenizer, codec_rate, max_lag_frames, during_agent_turn, decoder)
    vad = VoiceActivityDetector(codec_rate, vad_aggressiveness)
    pcm = np.pad(np.asarray(user, np.float32), (0, max(0, len(out) * frame_samples - len(user))))
    for f in range(len(out)):
        frame = pcm[f * frame_samples:(f + 1) * frame_samples]
        writer.hear(frame, f, speech=vad.is_speech(frame)[0])
        if out[f] == layout.pad_id:
            given = writer.next_id(f)
            if given is not None:
                out[f] = given
        writer.observe(int(out[f]), False)
    return out
