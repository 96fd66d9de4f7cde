"""The interface every inference backend implements (transformers reference, vLLM).

A backend holds one model; a :class:`BackendSession` is one conversation's token stream. Each frame
the session appends the user's codes and returns the agent's slot: one text id and Q_out audio codes.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field

import numpy as np

from think.layout import DuplexLayout
from think.sampling import SamplingConfig


@dataclass(frozen=True)
class StepResult:
    """The agent's slot for one frame.

    Attributes:
        frame: frame index on the session clock.
        text_id: the text slot (a word piece, PAD or end-of-turn id).
        agent_codes: ``(Q_out,)`` codec codes of the agent's audio for this frame.
        forced: True when the policy forced silence instead of sampling.
        compute_ms: wall time spent in the model for this frame.
        rebased: True when the context was rebuilt (rolling window) during this frame.
    """

    frame: int
    text_id: int
    agent_codes: np.ndarray
    forced: bool = False
    compute_ms: float = 0.0
    rebased: bool = False
    extra: dict = field(default_factory=dict)


def check_given_text(layout: DuplexLayout, text_id: int | None, heard_id: int | None = None) -> None:
    """Refuse a given text-slot id that is not one, or a heard id that is not a heard id (a wrong id would
    corrupt the session's context)."""
    if text_id is not None and not layout.is_text_slot_id(int(text_id)):
        raise ValueError(f"{text_id} is not an id the text slot can hold.")
    if heard_id is not None and not layout.is_heard_id(int(heard_id)):
        raise ValueError(f"{heard_id} is not a heard id of this layout.")


class BackendSession(abc.ABC):
    """One conversation's live token stream."""

    layout: DuplexLayout
    #: The session's listener writes the heard text (``agent/heard.py``): the model draws no heard ids itself.
    listener_heard: bool = False

    @abc.abstractmethod
    async def step(self, user_codes: np.ndarray, force_silence: bool = False, text_id: int | None = None,
                   heard_id: int | None = None, speak_now: bool = False) -> StepResult:
        """Append this frame's user codes ``(>= Q_in,)`` and produce the agent's slot.

        With ``force_silence`` the agent's slot is PAD + silence codes instead of a sample, and the
        model sees exactly that in its context (how a barge-in cut is made visible to it). With ``text_id``
        the text slot holds that id instead of a draw. With ``heard_id`` (the listener's next heard id) the
        text slot is drawn as usual, and holds ``heard_id`` where the draw is PAD: the transcript takes only
        the frames the agent leaves free, as in training (``recognized_heard``), and never delays its turn.
        With ``speak_now`` the drawn text id is a word piece: neither PAD, nor end-of-turn, nor a heard id
        (the policy's answer prompt). Either way the agent's audio ids are drawn after the text id.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the session's state (KV cache, engine request)."""

    @property
    @abc.abstractmethod
    def context_tokens(self) -> int:
        """Ids currently held in the model's context (bounded by the rolling window)."""


class Backend(abc.ABC):
    """A loaded model that can host sessions."""

    layout: DuplexLayout
    tokenizer: object
    name: str = "backend"

    @abc.abstractmethod
    def open_session(self, sampling: SamplingConfig | None = None, system_prompt: str = "",
                     adapter: str | None = None) -> BackendSession:
        """Start a conversation."""

    async def aclose(self) -> None:
        """Shut the backend down."""
