"""The training loss: next-id cross-entropy over each slot position's own id range.

At serving time the sampler masks every position to the ids its role allows (text slot: text ids,
PAD, end-of-turn; agent codebook k: that codebook's ids), so the distribution that matters is the
softmax *within* that range. Computing the head only there is also most of the speed: the full
vocabulary (text + every user and agent codebook, ~10 k ids with codec2) is ~25x wider than the
average allowed range, and user positions (context only) need no head at all. Measured on the
2-core dev CPU for the tiny shape (8 x 120-frame windows): see ``duplex bench train``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from think.layout import DuplexLayout


@dataclass(frozen=True)
class RoleHead:
    """One agent slot position's slice of the output head.

    Attributes:
        name: stream name in the logs ("text", "audio0", ...).
        position: position within the slot (0-based).
        lo, hi: the contiguous id range ``[lo, hi)`` covering what the position allows.
        banned: ids inside ``[lo, hi)`` the position does not allow (relative to ``lo``).
    """

    name: str
    position: int
    lo: int
    hi: int
    banned: tuple[int, ...] = ()


def role_heads(layout: DuplexLayout) -> list[RoleHead]:
    """The head slices of the positions the agent produces: its text slot and its audio codebooks."""
    heads = []
    for p in range(layout.q_in, layout.slot_size):
        ranges = layout.allowed_range(p)
        lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
        allowed = {i for a, b in ranges for i in range(a, b)}
        banned = tuple(i - lo for i in range(lo, hi) if i not in allowed)
        name = "text" if p == layout.q_in else f"audio{p - layout.q_in - 1}"
        heads.append(RoleHead(name, p, lo, hi, banned))
    return heads


def stream_losses(hidden: torch.Tensor, head_weight: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                  layout: DuplexLayout, offset_in_slot: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted loss for a batch and the mean loss per stream.

    Args:
        hidden: final hidden states ``(B, T, H)`` (after the model's last norm).
        head_weight: the output head ``(V, H)`` (tied or not).
        targets: next ids ``(B, T)``: ``targets[:, i]`` is predicted from ``hidden[:, i]``.
        weights: loss weight per target ``(B, T)``; 0 = not trained (user ids, padding).
        offset_in_slot: slot position of ``targets[:, 0]``.

    Returns:
        (loss, parts): the weighted mean cross-entropy and ``{stream: mean CE}`` over weighted targets.
    """
    pos = (torch.arange(targets.shape[1], device=targets.device) + offset_in_slot) % layout.slot_size
    total = hidden.new_zeros((), dtype=torch.float32)
    norm = weights.sum().clamp_min(1e-6)
    parts: dict[str, float] = {}
    for head in role_heads(layout):
        cols = (pos == head.position).nonzero().squeeze(1)
        if cols.numel() == 0:
            continue
        w = weights[:, cols]
        logits = (hidden[:, cols] @ head_weight[head.lo:head.hi].T).float()  # (B, n, hi - lo)
        if head.banned:
            logits[..., list(head.banned)] = float("-inf")
        # Padding targets (weight 0) may lie outside the range: clamp them to any valid class.
        local = (targets[:, cols] - head.lo).clamp(0, head.hi - head.lo - 1)
        if head.banned:
            local = torch.where(w > 0, local, torch.zeros_like(local) + _first_allowed(head))
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), local.reshape(-1),
                                               reduction="none").view_as(local)
        total = total + (ce * w).sum()
        with torch.no_grad():
            valid = w > 0
            if valid.any():
                parts[head.name] = round(float(ce[valid].mean()), 4)
    return total / norm, parts


def _first_allowed(head: RoleHead) -> int:
    banned = set(head.banned)
    return next(i for i in range(head.hi - head.lo) if i not in banned)
