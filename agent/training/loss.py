"""The training loss: next-id cross-entropy over each slot position's own id range.

At serving time the sampler masks every position to the ids its role allows (text slot: text ids,
PAD, end-of-turn; agent codebook k: that codebook's ids), so the distribution that matters is the
softmax *within* that range. Computing the head only there is also most of the speed: the full
vocabulary (text + every user and agent codebook, ~10 k ids with codec2) is ~25x wider than the
average allowed range, and user positions (context only) need no head at all. Measured on the
2-core dev CPU, tiny shape, 8 x 120-frame windows, 1 thread: 7.8 s per step with the full head in
float32, 3.3 s sliced with bfloat16 autocast (``duplex bench train`` times a shape on any machine).
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
        banned, covered = [], lo  # the gaps between the sorted allowed ranges
        for a, b in sorted(ranges):
            banned += range(covered - lo, a - lo)
            covered = max(covered, b)
        banned = tuple(banned)
        name = "text" if p == layout.q_in else f"audio{p - layout.q_in - 1}"
        heads.append(RoleHead(name, p, lo, hi, banned))
    return heads


def stream_losses(hidden: torch.Tensor, head_weight: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                  layout: DuplexLayout, offset_in_slot: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted loss for a batch of slot-aligned windows and the mean loss per stream.

    Args:
        hidden: final hidden states ``(B, T, H)`` (after the model's last norm).
        head_weight: the output head ``(V, H)`` (tied or not).
        targets: next ids ``(B, T)``: ``targets[:, i]`` is predicted from ``hidden[:, i]``.
        weights: loss weight per target ``(B, T)``; 0 = not trained (user ids, padding).
        offset_in_slot: slot position of ``targets[:, 0]``.

    Returns:
        (loss, parts): the weighted mean cross-entropy and ``{stream: mean CE}`` over weighted targets.
    """
    return role_losses(hidden, head_weight, targets, weights, slot_roles(targets.shape, layout, offset_in_slot),
                       layout)


def slot_roles(shape: tuple[int, ...], layout: DuplexLayout, offset_in_slot: int = 0) -> torch.Tensor:
    """Role index (into :func:`role_heads`) of every target of slot-aligned windows ``shape = (B, T)``;
    -1 for user positions (no head)."""
    pos = (torch.arange(shape[-1]) + offset_in_slot) % layout.slot_size - layout.q_in
    return torch.where(pos >= 0, pos, -1).expand(shape).contiguous()


def role_losses(hidden: torch.Tensor, head_weight: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                roles: torch.Tensor, layout: DuplexLayout) -> tuple[torch.Tensor, dict[str, float]]:
    """Like :func:`stream_losses`, with each target's head given explicitly (any sequence format).

    Args:
        roles: ``(B, T)`` index into :func:`role_heads` (0 = the text slot's range: text ids, PAD, end-of-turn;
            1 + k = agent codebook k) of the range ``targets[:, i]`` is scored in; -1 = no loss.

    Only targets with a role and a weight > 0 reach a head, so no head is computed for context ids.
    """
    roles = roles.to(targets.device)
    total = hidden.new_zeros((), dtype=torch.float32)
    norm = weights.sum().clamp_min(1e-6)
    parts: dict[str, float] = {}
    for index, head in enumerate(role_heads(layout)):
        sel = (roles == index) & (weights > 0)
        if not bool(sel.any()):
            continue
        w = weights[sel]
        logits = (hidden[sel] @ head_weight[head.lo:head.hi].T).float()  # (n, hi - lo)
        if head.banned:
            logits[:, list(head.banned)] = float("-inf")
        local = targets[sel] - head.lo
        if bool(((local < 0) | (local >= head.hi - head.lo)).any()):
            raise ValueError(f"A weighted target lies outside the {head.name} range [{head.lo}, {head.hi}).")
        ce = torch.nn.functional.cross_entropy(logits, local, reduction="none")
        total = total + (ce * w).sum()
        parts[head.name] = round(float(ce.detach().mean()), 4)
    return total / norm, parts
