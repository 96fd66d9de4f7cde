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


class BackendSession(abc.ABC):
    """One conversation's live token stream."""

    layout: DuplexLayout

    @abc.abstractmethod
    async def step(self, user_codes: np.ndarray, force_silence: bool = False) -> StepResult:
        """Append this frame's user codes ``(>= Q_in,)`` and produce the agent's slot.

        With ``force_silence`` the agent's slot is PAD + silence codes instead of a sample, and the
        model sees exactly that in its context (how a barge-in cut is made visible to it).
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
