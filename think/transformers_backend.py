"""The reference backend: a transformers causal LM with one KV cache per session, on CPU or GPU.

Per frame (``Q_in`` user ids in, ``1 + Q_out`` agent ids out) it runs ``1 + Q_out`` forward passes:
one that feeds the ids not yet seen (the previous frame's last agent id, then this frame's user ids)
and yields the text logits, then one per agent id but the last. The last agent id is fed at the start
of the next frame, so no forward is wasted.

Two engines run the same weights: ``lean`` (:mod:`think.lean_llama`, the default for Llama-family
models: preallocated KV cache, output head computed only over the allowed rows) and ``hf`` (the plain
transformers forward with a ``DynamicCache``, for any architecture). Tests check they agree.
"""
from __future__ import annotations

import asyncio
import inspect
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from think.backend import Backend, BackendSession, StepResult, check_given_text
from think.checkpoint import LoadedModel, load_checkpoint, trained_window_frames
from think.context import ContextConfig, ContextWindow
from think.layout import DuplexLayout
from think.lean_llama import LeanLlama
from think.sampling import SamplingConfig, SlotMasks, sample
from think.tokenizer import encode_system_prompt


class TransformersBackend(Backend):
    """Hosts sessions on one in-process transformers model."""

    name = "transformers"

    def __init__(self, loaded: LoadedModel, context: ContextConfig | None = None, threads: int | None = None,
                 engine: str = "auto", adapters_dir: str | Path | None = None) -> None:
        if threads is None and next(loaded.model.parameters()).device.type == "cpu":
            # Batch-1 decoding of a small model is a chain of tiny matmuls: intra-op threads only add
            # synchronisation (measured here: 1.6 ms vs 18 ms per frame for "nano" on a busy 2-core
            # machine), so small models default to one thread and leave the other core to audio I/O.
            params = sum(p.numel() for p in loaded.model.parameters())
            threads = 1 if params < 60_000_000 else None
        if threads:
            torch.set_num_threads(threads)
        self.loaded = loaded
        self.model = loaded.model
        self.layout: DuplexLayout = loaded.layout
        self.tokenizer = loaded.tokenizer
        self.context = context or ContextConfig()
        self.device = next(self.model.parameters()).device
        rows = self.model.get_output_embeddings().weight.shape[0]
        self.masks = SlotMasks(self.layout, rows, self.device)
        params = inspect.signature(self.model.forward).parameters
        # transformers 5.x renamed past_key_values to cache; accept either.
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self.max_positions = int(getattr(self.model.config, "max_position_embeddings", 4096))
        self.trained_frames = trained_window_frames(loaded.path)
        # One model, many sessions: forward passes are serialised (torch itself is not re-entrant per model
        # under inference mode with shared buffers on every build we use).
        self.lock = threading.Lock()
        if engine not in ("auto", "lean", "hf"):
            raise ValueError(f"engine must be auto, lean or hf, got {engine!r}.")
        reason = LeanLlama.unsupported_reason(self.model)
        if engine == "lean" and reason:
            raise ValueError(f"The lean engine cannot run this model: {reason}; use engine='hf'.")
        self.lean = LeanLlama(self.model) if engine != "hf" and not reason else None
        self.engine = "lean" if self.lean else "hf"
        self.adapters_dir = adapters_dir
        self._adapter_backends: dict[str, TransformersBackend] = {}
        self._adapter_lock = threading.Lock()

    @classmethod
    def from_dir(cls, path: str | Path, device: str = "cpu", context: ContextConfig | None = None,
                 threads: int | None = None, engine: str = "auto",
                 adapters_dir: str | Path | None = None) -> "TransformersBackend":
        return cls(load_checkpoint(path, device=device), context=context, threads=threads, engine=engine,
                   adapters_dir=adapters_dir)

    def open_session(self, sampling: SamplingConfig | None = None, system_prompt: str = "",
                     adapter: str | None = None) -> "TransformersSession":
        backend = self.adapter_backend(adapter) if adapter else self
        return TransformersSession(backend, sampling or SamplingConfig(), system_prompt)

    def adapter_backend(self, name: str) -> "TransformersBackend":
        """A backend on a copy of the model with LoRA adapter ``name`` (from ``adapters_dir``) merged in.

        Merged once per adapter name and cached; the lean engine then runs the merged weights.
        """
        with self._adapter_lock:  # sessions open from worker threads: one merge per name, not one per caller
            if name not in self._adapter_backends:
                self._adapter_backends[name] = self._merged_backend(name)
            return self._adapter_backends[name]

    def _merged_backend(self, name: str) -> "TransformersBackend":
        import copy

        from peft import PeftModel

        from think.adapters import resolve_adapter

        info = resolve_adapter(self.adapters_dir, name)
        with self.lock:
            base = copy.deepcopy(self.model)
        merged = PeftModel.from_pretrained(base, str(info.path)).merge_and_unload().eval()
        loaded = LoadedModel(model=merged, layout=self.layout, tokenizer=self.tokenizer, path=self.loaded.path)
        return TransformersBackend(loaded, context=self.context, threads=torch.get_num_threads(), engine=self.engine)

    def new_stream(self, capacity: int) -> "_KVStream":
        return _LeanStream(self, capacity) if self.lean else _HFStream(self)


class _KVStream:
    """One sequence's KV cache behind ``feed(ids, rows) -> logits over rows`` (the last position)."""

    length: int = 0

    def feed(self, ids: list[int], rows: tuple[int, int] | None) -> torch.Tensor:
        raise NotImplementedError


class _LeanStream(_KVStream):
    def __init__(self, backend: TransformersBackend, capacity: int) -> None:
        self.backend = backend
        self.state = backend.lean.new_state(capacity)

    @property
    def length(self) -> int:
        return self.state.length

    def feed(self, ids: list[int], rows: tuple[int, int] | None) -> torch.Tensor:
        with self.backend.lock:
            return self.backend.lean.forward(ids, self.state, rows)


class _HFStream(_KVStream):
    def __init__(self, backend: TransformersBackend) -> None:
        from transformers import DynamicCache

        self.backend = backend
        self.cache = DynamicCache(config=backend.model.config)
        self.length = 0

    def feed(self, ids: list[int], rows: tuple[int, int] | None) -> torch.Tensor:
        b = self.backend
        x = torch.tensor([ids], dtype=torch.long, device=b.device)
        with b.lock, torch.inference_mode():
            out = b.model(input_ids=x, use_cache=True, logits_to_keep=1, **{b._cache_kw: self.cache})
        self.length += len(ids)
        logits = out.logits[0, -1]
        return logits if rows is None else logits[rows[0]:rows[1]]


class TransformersSession(BackendSession):
    """One conversation: its KV cache, the ids not yet fed, and its rolling window."""

    def __init__(self, backend: TransformersBackend, sampling: SamplingConfig, system_prompt: str) -> None:
        self.backend = backend
        self.layout = backend.layout
        self.sampling = sampling
        self.generator = torch.Generator(device="cpu")
        if sampling.seed is not None:
            self.generator.manual_seed(sampling.seed)
        lay = self.layout
        prefix = lay.session_prefix(encode_system_prompt(backend.tokenizer, system_prompt))
        self.window = ContextWindow(prefix, lay.slot_size, backend.max_positions, backend.context,
                                    backend.trained_frames)
        self.capacity = len(prefix) + (self.window.hard_limit + 2) * lay.slot_size
        self.stream = backend.new_stream(self.capacity)
        self.pending: list[int] = list(prefix)  # ids appended to the sequence but not yet fed
        self.fed = 0
        self.frame = 0
        self.closed = False
        # A step runs in a worker thread: close() during it must not pull the KV cache from under it,
        # and two steps at once would interleave their ids in one sequence.
        self._state_lock = threading.Lock()
        self._silence_ids = [lay.pad_id, *lay.agent_audio_ids(lay.agent_silence_codes()).tolist()]

    @property
    def context_tokens(self) -> int:
        return self.fed

    async def step(self, user_codes: np.ndarray, force_silence: bool = False, text_id: int | None = None,
                   heard_id: int | None = None, speak_now: bool = False) -> StepResult:
        return await asyncio.to_thread(self.step_sync, user_codes, force_silence, False, text_id, heard_id, speak_now)

    def step_sync(self, user_codes: np.ndarray, force_silence: bool = False, quiet: bool = False,
                  text_id: int | None = None, heard_id: int | None = None, speak_now: bool = False) -> StepResult:
        """Synchronous :meth:`step`; ``quiet`` tells the window that now is a good time to rebase."""
        if not self._state_lock.acquire(blocking=False):
            if self.closed:
                raise RuntimeError("This session is closed.")
            raise RuntimeError("This session is already running a step; steps of one session must not overlap.")
        try:
            return self._step_locked(user_codes, force_silence, quiet, text_id, heard_id, speak_now)
        finally:
            self._state_lock.release()

    def _step_locked(self, user_codes: np.ndarray, force_silence: bool, quiet: bool, text_id: int | None,
                     heard_id: int | None = None, speak_now: bool = False) -> StepResult:
        if self.closed:
            raise RuntimeError("This session is closed.")
        check_given_text(self.layout, text_id, heard_id)
        t0 = time.perf_counter()
        lay = self.layout
        user_ids = lay.frame_user_ids(user_codes)
        rebased = False
        if self.window.should_rebase(quiet or force_silence):
            self._rebase()
            rebased = True
        if force_silence:
            agent = list(self._silence_ids)
            self.pending += user_ids + agent
            # Fed with the next frame's ids: one forward per forced frame instead of 1 + Q_out.
        else:
            agent = self._sample_slot(user_ids, text_id, heard_id, speak_now)
        self.window.append(user_ids + agent)
        text_id = agent[0]
        codes = np.asarray(agent[1:], dtype=np.int64) - np.asarray(lay.agent_offsets, dtype=np.int64)
        result = StepResult(frame=self.frame, text_id=text_id, agent_codes=codes, forced=force_silence,
                            compute_ms=(time.perf_counter() - t0) * 1000.0, rebased=rebased)
        self.frame += 1
        return result

    def _feed(self, ids: list[int], j: int | None) -> torch.Tensor:
        """Feed ids; return logits over the row window of sampled position ``j`` (None: no logits needed)."""
        rows = self.backend.masks.rows[j] if j is not None else (0, 1)
        logits = self.stream.feed(ids, rows)
        self.fed += len(ids)
        return logits

    def _sample_slot(self, user_ids: list[int], text_id: int | None = None, heard_id: int | None = None,
                     speak_now: bool = False) -> list[int]:
        """The slot's 1 + Q_out ids: text (``text_id`` when given, else drawn, ``heard_id`` in place of a
        drawn PAD, a word piece only with ``speak_now``) then the agent's audio."""
        s = self.sampling
        masks = self.backend.masks
        logits = self._feed(self.pending + user_ids, 0)
        self.pending = []
        out: list[int] = []
        for j in range(1 + self.layout.q_out):
            if j == 0 and text_id is not None:
                token = int(text_id)
            else:
                temp, top_k = (s.text_temperature, s.text_top_k) if j == 0 else (s.audio_temperature, s.audio_top_k)
                mask = (masks.text_mask(s.pad_bias, heard=not self.listener_heard, speak=speak_now) if j == 0
                        else masks.masks[j])
                token = masks.rows[j][0] + sample(logits, mask, temp, top_k, self.generator)
                if j == 0 and heard_id is not None and token == self.layout.pad_id:
                    token = int(heard_id)
            out.append(token)
            if j < self.layout.q_out:
                logits = self._feed([token], j + 1)
        self.pending = [out[-1]]
        return out

    def _rebase(self) -> None:
        ids = self.window.rebased_ids()
        self.stream = self.backend.new_stream(self.capacity)
        self.fed = 0
        # Everything in the window, including this session's not-yet-fed ids, is re-prefilled.
        self._feed(ids, None)
        self.pending = []

    def teacher_forced_logprobs(self, ids: list[int]) -> torch.Tensor:
        """Log-probabilities ``(n-1, vocab)`` of a whole id sequence from a fresh cache (for checks)."""
        x = torch.tensor([ids], dtype=torch.long, device=self.backend.device)
        with self.backend.lock, torch.inference_mode():
            logits = self.backend.model(input_ids=x).logits[0, :-1]
        return torch.log_softmax(logits.float(), dim=-1)

    async def close(self) -> None:
        self.closed = True
        # A step still running finishes on its cache; the cache is freed once no step holds it.
        await asyncio.to_thread(self._release)

    def _release(self) -> None:
        with self._state_lock:
            self.stream = None
            self.pending = []
