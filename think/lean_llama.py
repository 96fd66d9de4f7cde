"""A lean batch-1 decoder for Llama-family weights (Llama, Qwen2, SmolLM2): the CPU fast path.

On a 2-core CPU a frame is 1 + Q_out forward passes, so per-forward overhead decides real time.
This runs the *same weights* as the transformers model (shared tensors, no copy of the big ones)
with a preallocated KV cache and no per-call mask building, and computes the output head only over
the rows the position may sample (the layout's masks make the other logits irrelevant): ~2.4 ms per
forward instead of ~4.5 ms for the 4x256 "tiny" shape here. Tests check its logits against
transformers within 1e-4.

Unsupported configurations (rope scaling other than default, sliding windows) fall back to the
transformers forward: :meth:`LeanLlama.unsupported_reason` says why.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class LeanState:
    """One session's KV cache: ``keys``/``values`` are ``(layers, kv_heads, capacity, head_dim)``."""

    keys: torch.Tensor
    values: torch.Tensor
    length: int = 0

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def reset(self) -> None:
        self.length = 0


class LeanLlama:
    """Forward passes over a transformers ``*ForCausalLM`` of the Llama family, one sequence at a time."""

    def __init__(self, model: Any) -> None:
        reason = self.unsupported_reason(model)
        if reason:
            raise ValueError(f"The lean decoder cannot run this model: {reason}.")
        cfg = model.config
        self.model = model
        self.hidden = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(cfg, "head_dim", None) or self.hidden // self.heads
        self.eps = cfg.rms_norm_eps
        self.embed = model.get_input_embeddings().weight
        self.head = model.get_output_embeddings().weight
        self.final_norm = model.model.norm.weight
        self.layers = []
        for layer in model.model.layers:
            att, mlp = layer.self_attn, layer.mlp
            # The attention scale is folded into the query rows (rotation is linear, so it commutes).
            qkv_w = torch.cat([att.q_proj.weight * self._scale(cfg), att.k_proj.weight, att.v_proj.weight], 0)
            qkv_b = None
            if att.q_proj.bias is not None:
                qkv_b = torch.cat([att.q_proj.bias * self._scale(cfg), att.k_proj.bias, att.v_proj.bias], 0)
            self.layers.append(dict(
                in_norm=layer.input_layernorm.weight, post_norm=layer.post_attention_layernorm.weight,
                qkv_w=qkv_w, qkv_b=qkv_b, o_w=att.o_proj.weight, o_b=att.o_proj.bias,
                gu_w=torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight], 0), down_w=mlp.down_proj.weight,
            ))
        theta = _rope_theta(cfg)
        inv = 1.0 / (theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim))
        pos = torch.arange(cfg.max_position_embeddings, dtype=torch.float32)
        freqs = torch.outer(pos, inv)
        emb = torch.cat([freqs, freqs], -1)
        dev, dt = self.embed.device, self.embed.dtype
        # (positions, 1, head_dim): broadcast over the query and key heads rotated together.
        self.cos, self.sin = emb.cos()[:, None].to(dev, dt), emb.sin()[:, None].to(dev, dt)
        self.max_positions = cfg.max_position_embeddings

    @staticmethod
    def _scale(cfg: Any) -> float:
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return head_dim ** -0.5

    @staticmethod
    def unsupported_reason(model: Any) -> str | None:
        cfg = getattr(model, "config", None)
        if cfg is None or getattr(cfg, "model_type", "") not in ("llama", "qwen2"):
            return f"model type {getattr(cfg, 'model_type', None)!r} is not llama or qwen2"
        rope = getattr(cfg, "rope_scaling", None) or getattr(cfg, "rope_parameters", None) or {}
        if isinstance(rope, dict) and rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
            return f"rope scaling {rope.get('rope_type', rope.get('type'))!r} is not implemented"
        if getattr(cfg, "use_sliding_window", False):
            return "sliding-window attention is not implemented"
        if getattr(cfg, "hidden_act", "silu") != "silu":
            return f"activation {cfg.hidden_act!r} is not silu"
        return None

    def new_state(self, capacity: int) -> LeanState:
        capacity = min(capacity, self.max_positions)
        shape = (len(self.layers), self.kv_heads, capacity, self.head_dim)
        return LeanState(torch.zeros(shape, dtype=self.embed.dtype, device=self.embed.device),
                         torch.zeros(shape, dtype=self.embed.dtype, device=self.embed.device))

    def _attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        """Grouped attention without expanding K/V: ``q`` ``(heads, n, d)``, ``keys``/``values``
        ``(kv_heads, L, d)`` (strided views of the cache, read in place) -> ``(heads, n, d)``.

        At batch 1 on a CPU the KV cache is read from memory for every forward; not copying or repeating
        it per query head is what keeps long contexts cheap.
        """
        heads, n, d = q.shape
        group = heads // self.kv_heads
        qg = q.reshape(self.kv_heads, group * n, d)
        scores = torch.matmul(qg, keys.transpose(-1, -2))  # (kv, group*n, L); q is pre-scaled
        if mask is not None:
            scores = (scores.view(self.kv_heads, group, n, -1) + mask).view(self.kv_heads, group * n, -1)
        out = torch.matmul(torch.softmax(scores, dim=-1), values)  # (kv, group*n, d)
        return out.view(heads, n, d)

    def _norm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), w, self.eps)

    @torch.inference_mode()
    def forward(self, ids: list[int], state: LeanState, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """Feed ``ids`` ``(n,)`` after the cached context; return the last position's logits over
        ``rows`` = (lo, hi) of the vocabulary (all rows if None), shape ``(hi - lo,)``."""
        n, p0 = len(ids), state.length
        if p0 + n > state.capacity:
            raise RuntimeError(f"KV cache full ({state.capacity} positions); the context window must rebase first.")
        idx = torch.tensor(ids, dtype=torch.long, device=self.embed.device)
        x = self.embed[idx][None]  # (1, n, hidden)
        cos, sin = self.cos[p0:p0 + n], self.sin[p0:p0 + n]
        half = self.head_dim // 2
        mask = None
        if n > 1:  # causal within the new block, everything before it visible
            mask = torch.full((n, p0 + n), float("-inf"), dtype=x.dtype, device=x.device).triu(p0 + 1)
        q_dim, kv_dim = self.heads * self.head_dim, self.kv_heads * self.head_dim
        for i, L in enumerate(self.layers):
            h = self._norm(x, L["in_norm"])
            qkv = F.linear(h, L["qkv_w"], L["qkv_b"])[0]  # (n, q_dim + 2 kv_dim)
            qk = qkv[:, : q_dim + kv_dim].view(n, self.heads + self.kv_heads, self.head_dim)
            qk = qk * cos + torch.cat([-qk[..., half:], qk[..., :half]], -1) * sin  # rotary, q and k at once
            q = qk[:, : self.heads].transpose(0, 1)
            k = qk[:, self.heads:].transpose(0, 1)
            v = qkv[:, q_dim + kv_dim:].view(n, self.kv_heads, self.head_dim).transpose(0, 1)
            state.keys[i, :, p0:p0 + n] = k
            state.values[i, :, p0:p0 + n] = v
            a = self._attend(q, state.keys[i, :, : p0 + n], state.values[i, :, : p0 + n], mask)
            x = x + F.linear(a.transpose(0, 1).reshape(1, n, q_dim), L["o_w"], L["o_b"])
            h = self._norm(x, L["post_norm"])
            gate, up = F.linear(h, L["gu_w"]).chunk(2, -1)
            x = x + F.linear(F.silu(gate) * up, L["down_w"])
        state.length = p0 + n
        last = self._norm(x[0, -1], self.final_norm)
        head = self.head if rows is None else self.head[rows[0]:rows[1]]
        return F.linear(last, head)


def _rope_theta(cfg: Any) -> float:
    theta = getattr(cfg, "rope_theta", None)
    if theta is None:
        params = getattr(cfg, "rope_parameters", None) or {}
        theta = params.get("rope_theta", 10000.0)
    return float(theta)
