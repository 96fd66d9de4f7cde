"""The rolling context window: sessions of any length run in bounded memory.

The context is ``prefix + the most recent slots``. The prefix (session start and the system prompt) is
never dropped. When the context grows past ``soft_limit`` slots the session rebases at the next quiet
frame (nobody speaking), or unconditionally at ``hard_limit``: it keeps the newest ``keep`` slots and
re-prefills them from position 0, which is how training sequences start. Re-prefill is the only cost,
paid rarely (once per ``hard_limit - keep`` frames at most).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass
class ContextConfig:
    """Rolling-window policy, in frames (slots).

    Attributes:
        max_frames: hard limit; 0 = the window the model was trained on (``window_frames`` in its
            ``train_config.json``), within its max positions; without one, as many as its positions hold.
        keep_fraction: share of the window kept after a rebase.
        soft_fraction: share of the window after which a quiet frame triggers the rebase.
    """

    max_frames: int = 0
    keep_fraction: float = 0.5
    soft_fraction: float = 0.75

    def __post_init__(self) -> None:
        if isinstance(self.max_frames, bool) or not isinstance(self.max_frames, int) or self.max_frames < 0:
            raise ValueError(f"context.max_frames must be an integer >= 0 (0: the model's trained window), "
                             f"got {self.max_frames!r}.")
        if not 0.0 < self.keep_fraction < self.soft_fraction <= 1.0:
            raise ValueError("Need 0 < keep_fraction < soft_fraction <= 1.")


class PromptTooLong(ValueError):
    """The system prompt leaves the model's context no room for the conversation."""


class ContextWindow:
    """Keeps the ids needed to rebuild the context, and decides when to rebase."""

    def __init__(self, prefix: list[int], slot_size: int, max_positions: int, config: ContextConfig,
                 trained_frames: int | None = None) -> None:
        """``trained_frames``: the model's training window (``think.checkpoint.trained_window_frames``); the
        default limit when ``config.max_frames`` is 0. An explicit ``max_frames`` may go past it."""
        self.prefix = list(prefix)
        fit = (max_positions - len(self.prefix) - 2 * slot_size) // slot_size
        if fit < 4:
            raise PromptTooLong(f"The model's context ({max_positions} ids) is too short for the system prompt "
                             f"({len(self.prefix)} ids) and a few frames; shorten the system prompt.")
        limit = config.max_frames or trained_frames or fit
        self.hard_limit = min(limit, fit)
        self.soft_limit = max(2, int(self.hard_limit * config.soft_fraction))
        self.keep = max(1, int(self.hard_limit * config.keep_fraction))
        self.slots: deque[list[int]] = deque(maxlen=self.hard_limit)
        self.rebases = 0

    def append(self, slot_ids: list[int]) -> None:
        self.slots.append(list(slot_ids))

    def should_rebase(self, quiet: bool) -> bool:
        n = len(self.slots)
        return n >= self.hard_limit or (quiet and n >= self.soft_limit)

    def rebased_ids(self) -> list[int]:
        """Drop old slots and return the full id sequence to re-prefill."""
        while len(self.slots) > self.keep:
            self.slots.popleft()
        self.rebases += 1
        return self.prefix + [t for slot in self.slots for t in slot]
