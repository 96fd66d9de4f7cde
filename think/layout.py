"""The duplex token layout: one token sequence per session, one fixed-size slot per codec frame.

Slot for frame t (``slot_size = Q_in + 1 + Q_out`` ids)::

    [ user audio, frame t : Q_in ids ] [ agent text : 1 id ] [ agent audio : Q_out ids, coarse -> fine ]

The agent's text leads its audio by ``text_lead`` frames (δ): the audio ids in slot t carry the
speech whose words were written at slot t - δ. User ids are prompt (prefilled from the mic); agent ids
are sampled.

Id space (every position is self-describing)::

    [0, text_vocab_size)                 text word pieces
    [text_vocab_size, +len(SPECIALS))    special ids (session start, system prompt delimiters, PAD, EOT)
    then one range per user codebook k   user_offsets[k] + code
    then one range per agent codebook k  agent_offsets[k] + code
    then, with ``heard_text``, heard word pieces   heard_offset + text id

Heard text (layout version 2, ``heard_text=True``): the text slot also carries the agent's running transcript
of the *user*, in its own id range, in the frames where the agent is not writing its own words (a listener's
inner monologue). It gives the model a dense listening target in the duplex layout itself, and lets it
answer from, and judge turn ends by, words it has already written down. Heard ids are never spoken: the
session reports them as the user's transcript, and every agent-text consumer ignores them.

The layout is data: it is written as ``duplex_layout.json`` next to every checkpoint so that training,
serving and decoding can never disagree.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streaming.codecs.base import CodecSpec

LAYOUT_FILE = "duplex_layout.json"
SPECIALS = ("session_start", "system_start", "system_end", "pad", "end_of_turn")


@dataclass(frozen=True)
class DuplexLayout:
    """Everything needed to turn codec frames and text into model ids and back.

    Attributes:
        codec: the codec's spec (name, rate, frame, codebook sizes, options).
        text_vocab_size: number of text ids (the tokenizer's vocabulary, or the base LLM's).
        q_in: user codebooks per frame (a prefix of the codec's codebooks, coarse first).
        q_out: agent codebooks per frame (a prefix of the codec's codebooks, coarse first).
        text_lead: δ, frames by which the agent's text leads its audio.
        silence_codes: the codec's codes for one silent frame, ``(Q,)`` (forced agent silence).
        heard_text: the text slot may also hold heard (user transcript) ids, ``heard_offset + text id``;
            appended after every other range, so a version-1 checkpoint grows into it by adding rows.
    """

    codec: CodecSpec
    text_vocab_size: int
    q_in: int
    q_out: int
    text_lead: int = 1
    silence_codes: tuple[int, ...] = ()
    version: int = 1
    heard_text: bool = False
    _offsets: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        q = self.codec.num_codebooks
        if not (1 <= self.q_in <= q and 1 <= self.q_out <= q):
            raise ValueError(f"q_in and q_out must be in 1..{q} for codec {self.codec.name!r}, "
                             f"got q_in={self.q_in}, q_out={self.q_out}.")
        if self.text_vocab_size < 1:
            raise ValueError("text_vocab_size must be positive.")
        if self.text_lead < 0:
            raise ValueError("text_lead (δ) must be >= 0.")
        if self.silence_codes and len(self.silence_codes) != q:
            raise ValueError(f"silence_codes must have {q} entries, got {len(self.silence_codes)}.")
        sizes = self.codec.codebook_sizes
        nxt = self.text_vocab_size + len(SPECIALS)
        user = []
        for k in range(self.q_in):
            user.append(nxt)
            nxt += sizes[k]
        agent = []
        for k in range(self.q_out):
            agent.append(nxt)
            nxt += sizes[k]
        heard = nxt
        if self.heard_text:
            nxt += self.text_vocab_size
        self._offsets.update(user=tuple(user), agent=tuple(agent), heard=heard, total=nxt)

    # ---- sizes -------------------------------------------------------------------------------
    @property
    def slot_size(self) -> int:
        """Ids per frame: Q_in + 1 + Q_out."""
        return self.q_in + 1 + self.q_out

    @property
    def vocab_size(self) -> int:
        """Total ids the model's embedding and head must cover."""
        return self._offsets["total"]

    @property
    def frame_ms(self) -> float:
        return self.codec.frame_ms

    @property
    def user_offsets(self) -> tuple[int, ...]:
        return self._offsets["user"]

    @property
    def agent_offsets(self) -> tuple[int, ...]:
        return self._offsets["agent"]

    @property
    def heard_offset(self) -> int:
        """First heard id (``heard_offset + text id`` is that word piece, heard); only with ``heard_text``."""
        if not self.heard_text:
            raise ValueError("This layout has no heard-text range (heard_text is off).")
        return self._offsets["heard"]

    def heard_id(self, text_id: int) -> int:
        """The heard twin of text id ``text_id``."""
        if not 0 <= text_id < self.text_vocab_size:
            raise ValueError(f"{text_id} is not a text id (0..{self.text_vocab_size - 1}).")
        return self.heard_offset + int(text_id)

    def is_heard_id(self, token_id: int) -> bool:
        return self.heard_text and self._offsets["heard"] <= token_id < self._offsets["total"]

    def special(self, name: str) -> int:
        """Id of a special token by name (see ``SPECIALS``)."""
        return self.text_vocab_size + SPECIALS.index(name)

    @property
    def pad_id(self) -> int:
        return self.special("pad")

    @property
    def eot_id(self) -> int:
        return self.special("end_of_turn")

    # ---- building ids ------------------------------------------------------------------------
    def session_prefix(self, prompt_ids: list[int]) -> list[int]:
        """What a session's sequence starts with: ``[session_start]``, then ``[system_start] prompt
        [system_end]`` when there is a system prompt (its text ids)."""
        prefix = [self.special("session_start")]
        if prompt_ids:
            prefix += [self.special("system_start"), *prompt_ids, self.special("system_end")]
        return prefix

    def user_ids(self, codes: np.ndarray) -> np.ndarray:
        """User codes ``(frames, >= Q_in)`` or ``(>= Q_in,)`` -> ids of the same leading shape."""
        codes = _int_codes(codes, "user")
        return self._shift(codes[..., : self.q_in], self.user_offsets, "user")

    def frame_user_ids(self, codes: np.ndarray) -> list[int]:
        """One frame's user codes ``(>= Q_in,)`` -> its Q_in ids (what a backend session appends)."""
        codes = np.asarray(codes)
        if codes.ndim != 1:
            raise ValueError(f"A step takes one frame of user codes, shape ({self.q_in},), got shape {codes.shape}.")
        return self.user_ids(codes).tolist()

    def agent_audio_ids(self, codes: np.ndarray) -> np.ndarray:
        """Agent codes ``(frames, >= Q_out)`` or ``(>= Q_out,)`` -> ids."""
        codes = _int_codes(codes, "agent")
        return self._shift(codes[..., : self.q_out], self.agent_offsets, "agent")

    def slot(self, user_codes: np.ndarray, text_id: int, agent_codes: np.ndarray) -> np.ndarray:
        """One frame's slot ``(slot_size,)`` from user codes ``(Q_in,)``, a text id and agent codes."""
        if not self.is_text_slot_id(text_id):
            raise ValueError(f"Text slot id {text_id} is not a text id, PAD or end-of-turn.")
        return np.concatenate([self.user_ids(user_codes), [int(text_id)], self.agent_audio_ids(agent_codes)])

    def split_slot(self, ids: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
        """Inverse of :meth:`slot`: ``(slot_size,)`` ids -> (user codes, text id, agent codes)."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.shape != (self.slot_size,):
            raise ValueError(f"A slot has {self.slot_size} ids, got shape {ids.shape}.")
        self.validate(ids, start_position=0)
        user = ids[: self.q_in] - np.asarray(self.user_offsets)
        agent = ids[self.q_in + 1:] - np.asarray(self.agent_offsets)
        return user, int(ids[self.q_in]), agent

    def agent_silence_codes(self) -> np.ndarray:
        """Codes the agent 'says' when forced silent, ``(Q_out,)``."""
        if not self.silence_codes:
            return np.zeros(self.q_out, dtype=np.int64)
        return np.asarray(self.silence_codes[: self.q_out], dtype=np.int64)

    def user_silence_codes(self) -> np.ndarray:
        if not self.silence_codes:
            return np.zeros(self.q_in, dtype=np.int64)
        return np.asarray(self.silence_codes[: self.q_in], dtype=np.int64)

    def _shift(self, codes: np.ndarray, offsets: tuple[int, ...], who: str) -> np.ndarray:
        sizes = np.asarray(self.codec.codebook_sizes[: len(offsets)])
        if codes.shape[-1] != len(offsets):
            raise ValueError(f"Expected {len(offsets)} {who} codebooks per frame, got {codes.shape[-1]}.")
        if codes.size and (codes.min() < 0 or np.any(codes >= sizes)):
            raise ValueError(f"{who} codes out of range for codebook sizes {tuple(int(n) for n in sizes)}.")
        return codes + np.asarray(offsets, dtype=np.int64)

    # ---- roles and masks ---------------------------------------------------------------------
    def role(self, position: int) -> tuple[str, int]:
        """What slot position ``p`` (0-based within a slot) holds: ("user", k), ("text", 0), ("agent", k)."""
        p = position % self.slot_size
        if p < self.q_in:
            return "user", p
        if p == self.q_in:
            return "text", 0
        return "agent", p - self.q_in - 1

    def allowed_range(self, position: int) -> list[tuple[int, int]]:
        """Half-open id ranges allowed at slot position ``p`` (used for validation and sampling masks)."""
        kind, k = self.role(position)
        sizes = self.codec.codebook_sizes
        if kind == "user":
            return [(self.user_offsets[k], self.user_offsets[k] + sizes[k])]
        if kind == "agent":
            return [(self.agent_offsets[k], self.agent_offsets[k] + sizes[k])]
        text = [(0, self.text_vocab_size), (self.pad_id, self.pad_id + 1), (self.eot_id, self.eot_id + 1)]
        if self.heard_text:
            text.append((self.heard_offset, self.heard_offset + self.text_vocab_size))
        return text

    def allowed_mask(self, position: int) -> np.ndarray:
        """Boolean ``(vocab_size,)``: True where an id may appear at slot position ``p``."""
        mask = np.zeros(self.vocab_size, dtype=bool)
        for lo, hi in self.allowed_range(position):
            mask[lo:hi] = True
        return mask

    def is_text_slot_id(self, token_id: int) -> bool:
        return (0 <= token_id < self.text_vocab_size or token_id in (self.pad_id, self.eot_id)
                or self.is_heard_id(token_id))

    def validate(self, ids: np.ndarray, start_position: int = 0) -> None:
        """Raise ``ValueError`` if any id is outside its position's range."""
        for i, t in enumerate(np.asarray(ids).tolist()):
            if not any(lo <= t < hi for lo, hi in self.allowed_range(start_position + i)):
                kind, k = self.role(start_position + i)
                raise ValueError(f"Id {t} at slot position {(start_position + i) % self.slot_size} is not a "
                                 f"valid {kind} id (codebook {k}).")

    # ---- persistence -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {
            "version": self.version,
            "codec": self.codec.to_dict(),
            "text_vocab_size": self.text_vocab_size,
            "q_in": self.q_in,
            "q_out": self.q_out,
            "text_lead": self.text_lead,
            "silence_codes": list(self.silence_codes),
            "specials": {name: self.special(name) for name in SPECIALS},
            "user_offsets": list(self.user_offsets),
            "agent_offsets": list(self.agent_offsets),
            "vocab_size": self.vocab_size,
            "slot_size": self.slot_size,
        }
        if self.heard_text:
            d.update(heard_text=True, heard_offset=self.heard_offset)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DuplexLayout":
        layout = cls(
            codec=CodecSpec.from_dict(d["codec"]),
            text_vocab_size=int(d["text_vocab_size"]),
            q_in=int(d["q_in"]),
            q_out=int(d["q_out"]),
            text_lead=int(d.get("text_lead", 1)),
            silence_codes=tuple(int(x) for x in d.get("silence_codes", ())),
            version=int(d.get("version", 1)),
            heard_text=bool(d.get("heard_text", False)),
        )
        if "vocab_size" in d and int(d["vocab_size"]) != layout.vocab_size:
            raise ValueError(f"Layout file says vocab_size={d['vocab_size']} but its fields give "
                             f"{layout.vocab_size}; the file is inconsistent.")
        return layout

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / LAYOUT_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "DuplexLayout":
        path = Path(directory) / LAYOUT_FILE
        if not path.is_file():
            raise FileNotFoundError(f"No {LAYOUT_FILE} in {directory}; is this a duplex checkpoint directory "
                                    f"(made by `duplex model init`)?")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except KeyError as e:  # str(KeyError) is only the quoted key
            raise ValueError(f"{path} is not a valid duplex layout: it has no {e} entry.") from e
        except (TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} is not a valid duplex layout: {e}") from e

    @classmethod
    def for_codec(cls, codec: Any, text_vocab_size: int, q_in: int | None = None, q_out: int | None = None,
                  text_lead: int = 1, heard_text: bool = False) -> "DuplexLayout":
        """Build a layout for a :class:`~streaming.codecs.base.Codec` (its silence codes included)."""
        spec = codec.spec
        q = spec.num_codebooks
        return cls(codec=spec, text_vocab_size=text_vocab_size, q_in=q_in or q, q_out=q_out or q,
                   text_lead=text_lead, silence_codes=tuple(int(x) for x in codec.silence_codes()),
                   version=2 if heard_text else 1, heard_text=heard_text)


def _int_codes(codes: np.ndarray, who: str) -> np.ndarray:
    """Codes as int64; floats (a NaN, 1.7) are refused rather than silently truncated to another code."""
    a = np.asarray(codes)
    if a.size and a.dtype.kind not in "iu":
        raise ValueError(f"{who} codes must be integers, got dtype {a.dtype}.")
    return a.astype(np.int64, copy=False)
