"""Sampling an agent slot: per-position id masks, temperature and top-k.

Every sampled position has a role (text, or agent codebook k); only that role's ids may be drawn.
The masks are additive ``(vocab,)`` tensors built once per layout.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch

from think.layout import DuplexLayout

MIN_TEMPERATURE = 0.01  # below it (but above 0, greedy) the sampler's logits overflow


@dataclass
class SamplingConfig:
    """How the agent's ids are drawn.

    Attributes:
        text_temperature: temperature for the text slot (0 = greedy).
        audio_temperature: temperature for the audio codebooks (0 = greedy).
        text_top_k: keep only the k most likely text ids (0 = all).
        audio_top_k: keep only the k most likely ids per codebook (0 = all).
        seed: per-session random seed (None = nondeterministic).
        pad_bias: added to the text slot's PAD logit before temperature. Negative: the agent takes its
            turn more readily (a small trained model is often unsure when to start); positive: it waits more.
    """

    text_temperature: float = 0.7
    audio_temperature: float = 0.8
    text_top_k: int = 25
    audio_top_k: int = 100
    seed: int | None = 0
    pad_bias: float = 0.0

    def __post_init__(self) -> None:
        # Every surface (server, daemon, CLI, YAML) builds one of these from user input: the checks live here.
        for name in ("text_temperature", "audio_temperature", "pad_bias"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise ValueError(f"{name} must be a number, got {v!r:.40}.")
        if not (-20.0 <= self.pad_bias <= 20.0) or self.pad_bias != self.pad_bias:
            raise ValueError(f"pad_bias must be between -20 and 20, got {self.pad_bias}.")
        for name in ("text_temperature", "audio_temperature"):
            value = getattr(self, name)
            if not (0.0 <= value <= 10.0) or value != value:
                raise ValueError(f"{name} must be between 0 and 10, got {value}.")
            if 0 < value < MIN_TEMPERATURE:  # dividing float32 logits by it overflows to inf, then NaN
                raise ValueError(f"{name} must be 0 (greedy) or at least {MIN_TEMPERATURE}, got {value}.")
        for name in ("text_top_k", "audio_top_k"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not 0 <= v < 2 ** 31:
                raise ValueError(f"{name} must be an integer from 0 to 2**31 - 1, got {v!r:.40}.")  # int32 in vLLM
        s = self.seed
        if s is not None and (isinstance(s, bool) or not isinstance(s, numbers.Integral) or not -2**63 <= s < 2**63):
            raise ValueError(f"seed must be a 64-bit signed integer or null, got {s!r:.40}.")  # torch's range


class SlotMasks:
    """Row windows and additive masks for the 1 + Q_out sampled positions of a slot.

    Position ``j`` (0 = text, 1.. = agent codebook j-1) may only draw ids inside ``rows[j] = (lo, hi)``;
    ``masks[j]`` is ``(hi - lo,)`` with 0 where allowed and -inf elsewhere inside the window. Backends
    compute logits for that window only, which is also the main CPU saving of the lean decoder.
    """

    def __init__(self, layout: DuplexLayout, vocab_rows: int, device: str | torch.device = "cpu") -> None:
        self.layout = layout
        self.rows: list[tuple[int, int]] = []
        self.masks: list[torch.Tensor] = []
        for j in range(1 + layout.q_out):
            ranges = layout.allowed_range(layout.q_in + j)
            lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
            if hi > vocab_rows:
                raise ValueError(f"The model has {vocab_rows} output rows but the layout needs {hi}.")
            mask = torch.full((hi - lo,), float("-inf"))
            for a, b in ranges:
                mask[a - lo:b - lo] = 0.0
            self.rows.append((lo, hi))
            self.masks.append(mask.to(device))

        self._pad = layout.pad_id - self.rows[0][0]
        self._heard = (layout.heard_offset - self.rows[0][0], layout.heard_offset - self.rows[0][0]
                       + layout.text_vocab_size) if layout.heard_text else None
        self._eot = layout.eot_id - self.rows[0][0]
        self._text_masks: dict[tuple[float, bool, bool], torch.Tensor] = {(0.0, True, False): self.masks[0]}

    def __len__(self) -> int:
        return len(self.rows)

    def text_mask(self, pad_bias: float, heard: bool = True, speak: bool = False) -> torch.Tensor:
        """The text position's mask with ``pad_bias`` added at PAD, and without the heard range unless
        ``heard`` (a session whose listener writes the heard text draws none itself). With ``speak`` only word
        pieces are left (no PAD, end-of-turn or heard id: the agent must start talking). Cached per setting."""
        heard = (heard or self._heard is None) and not speak
        key = (pad_bias, heard, speak)
        mask = self._text_masks.get(key)
        if mask is None:
            if len(self._text_masks) > 16:
                self._text_masks = {(0.0, True, False): self.masks[0]}
            mask = self.masks[0].clone()
            mask[self._pad] += pad_bias
            if not heard and self._heard is not None:
                mask[self._heard[0]:self._heard[1]] = float("-inf")
            if speak:
                mask[self._pad] = mask[self._eot] = float("-inf")
            self._text_masks[key] = mask
        return mask


def sample(logits: torch.Tensor, mask: torch.Tensor, temperature: float, top_k: int,
           generator: torch.Generator | None) -> int:
    """Draw one index into ``logits`` ``(n,)`` (a row window) restricted by ``mask`` ``(n,)``.

    The draw happens where ``generator`` lives (a session's seeded CPU generator), so a model on a GPU
    samples the same sequence as on the CPU and the seed means the same thing on both."""
    scores = logits.float() + mask
    if temperature <= 0.0:
        return int(torch.argmax(scores))
    if generator is not None and scores.device != generator.device:
        scores = scores.to(generator.device)
    if 0 < top_k < scores.shape[-1]:
        # Sample among the k best only: softmax and multinomial over k values, not the whole window.
        values, indices = torch.topk(scores, top_k)
        probs = torch.softmax(values / temperature, dim=-1)
        return int(indices[torch.multinomial(probs, 1, generator=generator)])
    probs = torch.softmax(scores / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
