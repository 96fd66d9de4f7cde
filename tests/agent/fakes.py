"""A scripted model for session tests: it 'talks' (loud codes) unless forced silent, and records calls."""
from __future__ import annotations

import numpy as np

from think.backend import BackendSession, StepResult
from think.layout import DuplexLayout


class TalkingModel(BackendSession):
    """Always answers with the codes of a loud frame and a text id, unless forced silent.

    Args:
        layout: the layout (codec2 700C in these tests).
        loud_codes: ``(Q_out,)`` codes that decode to audible speech-like sound.
        talk_from: first frame at which it starts talking.
        talk_until: the frame at which it falls silent again (None = never).

    A step with ``speak_now`` (the policy's answer prompt) talks whatever the frame: a model whose text slot
    may only draw a word piece starts to speak.
    """

    def __init__(self, layout: DuplexLayout, loud_codes: np.ndarray, talk_from: int = 0, text_id: int = 300,
                 talk_until: int | None = None) -> None:
        self.layout = layout
        self.loud = np.asarray(loud_codes, dtype=np.int64)
        self.talk_from = talk_from
        self.talk_until = talk_until
        self.text_id = text_id
        self.calls: list[dict] = []
        self.frame = 0

    @property
    def context_tokens(self) -> int:
        return self.frame * self.layout.slot_size

    async def step(self, user_codes, force_silence=False, text_id=None, heard_id=None, speak_now=False):
        self.calls.append({"frame": self.frame, "user": np.asarray(user_codes).copy(), "forced": force_silence,
                           "speak_now": speak_now})
        lay = self.layout
        quiet = self.frame < self.talk_from or (self.talk_until is not None and self.frame >= self.talk_until)
        quiet = quiet and not speak_now  # a prompt to answer: it talks, as a model restricted to words would
        if force_silence or quiet:
            r = StepResult(self.frame, lay.pad_id, lay.agent_silence_codes(), forced=force_silence)
        else:
            r = StepResult(self.frame, self.text_id, self.loud.copy())
        self.frame += 1
        return r

    async def close(self):
        pass
