"""One Realtime WebSocket connection = one full-duplex conversation.

The session clock runs the model every frame; this module maps what each frame produced
(:class:`agent.session.FrameOutput`) to Realtime events, and client events to the session:

- the agent becomes audible (or writes text) after silence -> ``response.created``; every frame of
  the response -> ``response.output_audio.delta`` (resampled once per connection from the codec rate
  to the client's rate) and ``response.output_audio_transcript.delta``; ``response_quiet_ms`` of agent
  silence or an end-of-turn id -> ``response.done`` (completed);
- a barge-in cut -> ``x_duplex.barge_in`` and ``response.done`` (cancelled, ``turn_detected``): the
  client flushes its playback buffer at once;
- the user's VAD flags (with a hangover) -> ``input_audio_buffer.speech_started`` / ``speech_stopped``;
- a heard-text model's transcript of the user (its heard ids) -> ``conversation.item.input_audio_transcription
  .delta`` on the user's item, and ``.completed`` with the whole text when the agent's response starts (the
  model's own judgement that the turn is over) or the user's next turn begins;
- every frame -> ``x_duplex.frame`` and ``x_duplex.latency`` (step times), unless turned off.

The clock starts with the first input audio (like a live microphone, with one frame of jitter margin)
or with ``response.create``, and follows the client's audio (:class:`streaming.clock.FollowingClock`)
so a late frame never costs a permanent frame of latency. See ``docs/realtime-events.md``.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np

from agent.realtime_settings import SessionSettings, check_output_modalities, parse_session_update, session_view
from agent.session import FrameOutput, Session
from listen.resample import InputDecimator, OutputResampler
from streaming import events as ev
from streaming.clock import FollowingClock
from streaming.events import EventError, error_event, server_event
from streaming.wire_audio import WireFormat
from think.context import PromptTooLong

log = logging.getLogger(__name__)
_CLOSE = object()


# Events that steer the conversation rather than feed it. When a flood has spent the event budget they still get
# through on a small budget of their own: a lost cancel or settings change is worse than a lost audio chunk.
CONTROL_EVENTS = frozenset({ev.SESSION_UPDATE, ev.RESPONSE_CANCEL, ev.RESPONSE_CREATE, ev.CONVERSATION_ITEM_TRUNCATE,
                            ev.INPUT_AUDIO_BUFFER_CLEAR, ev.INPUT_AUDIO_BUFFER_COMMIT})
_CONTROL_MAX_BYTES = 4096  # larger messages are never sniffed for a control type


def is_control_event(raw: str | bytes) -> bool:
    """Whether ``raw`` is a small JSON text event of a :data:`CONTROL_EVENTS` type (cheap; malformed = False)."""
    if not isinstance(raw, str) or len(raw) > _CONTROL_MAX_BYTES:
        return False
    try:
        event = json.loads(raw)
    except (ValueError, RecursionError):
        return False
    kind = event.get("type") if isinstance(event, dict) else None
    return isinstance(kind, str) and kind in CONTROL_EVENTS  # a list "type" is unhashable


class TokenBucket:
    """``rate`` units per second, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst, self.tokens, self.t = rate, burst, burst, time.monotonic()

    def take(self, n: float = 1.0) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False


@dataclass
class _Response:
    id: str
    item_id: str
    samples: int = 0  # at the current output rate
    earlier_ms: float = 0.0  # audio sent before the client changed the output rate mid-response
    frames: int = 0
    quiet: int = 0
    transcript: list[str] = field(default_factory=list)


class RealtimeConnection:
    """Protocol state of one connection; ``run()`` serves it until it closes."""

    def __init__(self, ws, server, requested_model: str | None = None) -> None:
        self.ws, self.server, self.cfg, self.registry = ws, server, server.config, server.registry
        self.id = ev.new_id("sess")
        self.conversation_id = ev.new_id("conv")
        base = self.registry.session_config
        model = self.registry.default
        self._model_warning = None
        if requested_model and requested_model in self.registry.entries:
            model = requested_model
        elif requested_model and requested_model != model:
            self._model_warning = requested_model
        self.settings = SessionSettings(
            model=model, adapter=None, instructions=base.system_prompt, sampling=dataclasses.replace(base.sampling),
            events={"frame": self.cfg.frame_events, "latency": self.cfg.frame_events},
            silence_ms=self.cfg.silence_duration_ms, turn_type="server_vad", barge_in=base.policy.barge_in,
            input_format=WireFormat("pcm16", self.cfg.default_input_rate),
            output_format=WireFormat("pcm16", self.cfg.default_output_rate))
        # runtime
        self.entry = None
        self.model_session = None  # opened ahead of the clock; owned by `session` once it starts
        self.session: Session | None = None
        self.clock: FollowingClock | None = None
        self.decimator: InputDecimator | None = None
        self.last_arrival = 0.0
        self.frame_arrived = asyncio.Event()
        self.frame_task: asyncio.Task | None = None
        self.out_resampler: OutputResampler | None = None
        self.closing = False
        self._stop = asyncio.Event()
        self.close_code, self.close_reason = 1000, ""
        self._out: deque = deque()
        self._out_ready = asyncio.Event()
        self.event_bucket = TokenBucket(self.cfg.max_events_per_second, 2 * self.cfg.max_events_per_second)
        self.control_bucket = TokenBucket(self.cfg.max_control_events_per_second, 2 * self.cfg.max_control_events_per_second)
        self.audio_bucket = TokenBucket(1.05, self.cfg.max_audio_ahead_seconds)
        self._last_warned: dict[str, float] = {}
        self.stats = {"events_in": 0, "events_dropped": 0, "audio_dropped_ms": 0.0, "errors_sent": 0}
        self.last_message = time.monotonic()
        # event state
        self.response: _Response | None = None
        self.items: OrderedDict[str, int] = OrderedDict()  # agent item -> ms of audio sent
        self.truncated: dict[str, int] = {}
        self.muted = False  # after response.cancel, until the agent falls quiet or the user speaks
        self.mute_quiet = 0
        self.user_speaking = False
        self.user_item: str | None = None
        self.prev_user_item: str | None = None
        self.heard: tuple[str, list[str]] | None = None  # (user item, transcript deltas) not yet completed
        self.user_quiet = 0
        self.last_speech_frame = 0
        self._turns_seen = 0
        self.user_item_committed = False  # the open user item was already committed (by a client's commit)
        self.appended_since_commit = False  # audio reached the input buffer since the last commit (or clear)
        self.client_cut = False  # a response.cancel asked for a cut: the frame that makes it is no barge-in

    # ---- lifecycle ---------------------------------------------------------------------------
    async def run(self) -> None:
        sender = asyncio.create_task(self._send_loop())
        tasks = [sender]
        try:
            try:
                await self._open_model()
            except Exception as e:
                log.exception("cannot open a session on %s", self.settings.model)
                self._emit(error_event("server_error", f"Cannot start a conversation on model {self.settings.model}: {e}",
                                       error_type="server_error"))
                self.request_close(1011, "model failed")
                return
            self._emit(server_event(ev.SESSION_CREATED, session=self.session_view()))
            if self._model_warning:
                self._emit(error_event("model_not_found", f"No model named {ev.short_repr(self._model_warning)} "
                                       f"here; using {self.settings.model!r} (models: {', '.join(self.registry.names)}).",
                                       param="model"))
            tasks += [asyncio.create_task(self._read_loop()), asyncio.create_task(self._watchdog())]
            await self._stop.wait()
        finally:
            await self._shutdown(tasks, sender)

    def request_close(self, code: int = 1000, reason: str = "") -> None:
        if not self._stop.is_set():
            self.close_code, self.close_reason = code, reason
            self._stop.set()

    async def _shutdown(self, tasks: list[asyncio.Task], sender: asyncio.Task) -> None:
        self.closing = True
        if self.clock is not None:
            self.clock.stop()
        if self.frame_task is not None:
            try:  # let the frame in flight finish (its model step runs in a thread)
                await asyncio.wait_for(asyncio.shield(self.frame_task), 3.0)
            except BaseException:
                self.frame_task.cancel()
        for t in tasks:
            if t is not sender:
                t.cancel()
        try:
            if self.session is not None:
                await self.session.close()
            elif self.model_session is not None:
                await self.model_session.close()
        except Exception:
            log.exception("closing session %s", self.id)
        self._out.append(_CLOSE)
        self._out_ready.set()
        try:
            await asyncio.wait_for(sender, 3.0)
        except BaseException:
            sender.cancel()

    # ---- outbound ----------------------------------------------------------------------------
    def _emit(self, event: dict) -> None:
        if self.closing and self._out and self._out[-1] is _CLOSE:
            return
        if event.get("type") == ev.ERROR:
            self.stats["errors_sent"] += 1
        if len(self._out) >= self.cfg.outbound_queue:
            # The client is not reading: drop what it has not taken and hang up.
            self._out.clear()
            self._out.append(json.dumps(error_event("slow_client", "The client is not reading events fast enough; "
                                                    "closing the connection.", error_type="server_error")))
            self.request_close(1008, "client too slow")
        else:
            self._out.append(json.dumps(event))
        self._out_ready.set()

    async def _send_loop(self) -> None:
        try:
            while True:
                while not self._out:
                    self._out_ready.clear()
                    await self._out_ready.wait()
                item = self._out.popleft()
                if item is _CLOSE:
                    await self.ws.close(code=self.close_code, reason=self.close_reason[:120])
                    return
                await self.ws.send_text(item)
        except asyncio.CancelledError:
            raise
        except Exception:  # the client is gone
            self._out.clear()
            self.request_close(1006, "send failed")

    def _warn_once_per_second(self, kind: str, code: str, message: str, param: str | None = None) -> None:
        now = time.monotonic()
        if now - self._last_warned.get(kind, -1e9) >= 1.0:
            self._last_warned[kind] = now
            self._emit(error_event(code, message, param=param, error_type="rate_limit_error"))

    # ---- inbound -----------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        try:
            while not self.closing:
                msg = await self.ws.receive()
                if msg.get("type") == "websocket.disconnect":
                    self.request_close(msg.get("code") or 1000, "client closed")
                    return
                self.last_message = time.monotonic()
                raw = msg.get("text") if msg.get("text") is not None else msg.get("bytes")
                if raw is None:
                    continue
                if not self.event_bucket.take() and not (is_control_event(raw) and self.control_bucket.take()):
                    self.stats["events_dropped"] += 1
                    self._warn_once_per_second(
                        "events", "rate_limited", f"More than {self.cfg.max_events_per_second:.0f} events per second; "
                        f"{self.stats['events_dropped']} events dropped so far.")
                    continue
                self.stats["events_in"] += 1
                event = None
                try:
                    event = ev.parse_client_event(raw, self.cfg.max_message_bytes)
                    await self._dispatch(event)
                except EventError as e:
                    if e.event_id is None and event is not None:
                        e.event_id = event.get("event_id")  # name the client event it answers
                    self._emit(e.to_event())
                except Exception as e:  # a bug handling one event must not end the conversation
                    log.exception("handling an event on %s", self.id)
                    self._emit(error_event("server_error", f"The server failed on this event: {type(e).__name__}.",
                                           event_id=event.get("event_id") if event else None,
                                           error_type="server_error"))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reading from %s", self.id)
            self.request_close(1011, "receive failed")  # 1006 is reserved: it cannot be sent in a close frame

    async def _watchdog(self) -> None:
        idle = self.cfg.idle_timeout_seconds
        while idle > 0:
            await asyncio.sleep(min(1.0, idle))
            if time.monotonic() - self.last_message > idle:
                self._emit(error_event("idle_timeout", f"No client event for {idle:.0f} s; closing."))
                self.request_close(1000, "idle timeout")
                return

    async def _dispatch(self, event: dict) -> None:
        handler = {
            ev.SESSION_UPDATE: self._on_session_update, ev.INPUT_AUDIO_BUFFER_APPEND: self._on_append,
            ev.INPUT_AUDIO_BUFFER_COMMIT: self._on_commit, ev.INPUT_AUDIO_BUFFER_CLEAR: self._on_clear,
            ev.CONVERSATION_ITEM_TRUNCATE: self._on_truncate, ev.RESPONSE_CREATE: self._on_response_create,
            ev.RESPONSE_CANCEL: self._on_response_cancel,
        }[event["type"]]
        await handler(event)

    async def _on_append(self, event: dict) -> None:
        wire = self.settings.input_format
        data = ev.decode_audio_b64(event["audio"], self.cfg.max_audio_bytes, wire.sample_bytes)
        if not data:
            return
        seconds = len(data) / wire.sample_bytes / wire.rate
        if seconds > self.cfg.max_audio_ahead_seconds:  # more than the rate limit can ever let through at once
            raise EventError("audio_too_large", f"This append holds {seconds:.2f} s of audio; send at most "
                             f"{self.cfg.max_audio_ahead_seconds:.1f} s per append.", param="audio")
        if not self.audio_bucket.take(seconds):
            self.stats["audio_dropped_ms"] += seconds * 1000.0
            self._warn_once_per_second(
                "audio", "rate_limited", f"Audio is arriving faster than real time (more than "
                f"{self.cfg.max_audio_ahead_seconds:.1f} s ahead); {self.stats['audio_dropped_ms']:.0f} ms dropped so far.",
                param="audio")
            return
        if self.session is None:
            self._start(delay=True)
        x = wire.decode(data)
        if self.decimator is not None:
            x = self.decimator.process(x)
        self.appended_since_commit = True
        if await self.session.push_audio(x):
            self.last_arrival = time.monotonic()
            self.frame_arrived.set()

    async def _on_commit(self, event: dict) -> None:
        # As the OpenAI API: an empty buffer is an error, not a phantom item; a user item is committed once.
        speaking = self.user_speaking and not self.user_item_committed
        if not self.appended_since_commit and not speaking:
            raise EventError("input_audio_buffer_commit_empty", "The input audio buffer is empty: no audio was "
                             "appended since the last commit.")
        item = self.user_item if speaking else ev.new_id("item")
        self.user_item_committed = speaking
        self.appended_since_commit = False
        self._emit(server_event(ev.INPUT_AUDIO_BUFFER_COMMITTED, item_id=item, previous_item_id=self.prev_user_item))
        self.prev_user_item = item

    async def _on_clear(self, event: dict) -> None:
        if self.session is not None:
            self.session.user_frames.clear()
            self.session.listener.drop_pending()  # the partial frame too: nothing appended before a clear is heard
        if self.decimator is not None:
            self.decimator.reset()
        self.appended_since_commit = False
        self._emit(server_event(ev.INPUT_AUDIO_BUFFER_CLEARED))

    async def _on_truncate(self, event: dict) -> None:
        item = event["item_id"]
        r = self.response
        sent = self._sent_ms(r) if r is not None and r.item_id == item else self.items.get(item)
        if sent is None:
            raise EventError("item_not_found", f"No agent audio item {ev.short_repr(item)} in this conversation.", param="item_id")
        if event["content_index"] != 0:
            raise EventError("invalid_field", "Agent items have one content part: content_index must be 0.",
                             param="content_index")
        if event["audio_end_ms"] > sent + 1:
            raise EventError("invalid_field", f"audio_end_ms {event['audio_end_ms']} is beyond the {sent} ms of audio "
                             f"sent for {item}.", param="audio_end_ms")
        self.truncated[item] = event["audio_end_ms"]
        self._emit(server_event(ev.CONVERSATION_ITEM_TRUNCATED, item_id=item, content_index=0,
                                audio_end_ms=event["audio_end_ms"]))

    async def _on_response_create(self, event: dict) -> None:
        check_output_modalities(event.get("response") or {}, "response")  # the rest of it is not used
        if self.response is not None:
            raise EventError("conversation_already_has_active_response",
                             f"Response {self.response.id} is still in progress.")
        self.muted = False
        if self.session is None:
            self._start(delay=False)

    async def _on_response_cancel(self, event: dict) -> None:
        r, rid = self.response, event.get("response_id")
        if r is None or (rid and rid != r.id):
            raise EventError("response_cancel_not_active", "There is no active response to cancel.",
                             param="response_id")
        self._finish_response("cancelled", "client_cancelled")
        self.muted, self.mute_quiet = True, 0
        if self.session is not None:
            self.client_cut = True
            self.session.hold_agent(1.0)  # the model's own slots go silent too: it knows it was stopped

    # ---- session.update ----------------------------------------------------------------------
    async def _on_session_update(self, event: dict) -> None:
        old = self.settings
        new = parse_session_update(event["session"], old, self.registry.names)
        if new.identity != old.identity and self.session is not None:
            which = [n for n, a, b in zip(("x_duplex.model", "x_duplex.adapter", "instructions"), new.identity,
                                          old.identity) if a != b]
            raise EventError("session_already_started", f"{', '.join(which)} can only change before the first "
                             f"audio; reconnect to change it.", param=f"session.{which[0]}")
        # The seed seeds the backend session when it opens: before the clock starts, a new one reopens it.
        if self.session is None and (new.identity != old.identity or new.sampling.seed != old.sampling.seed):
            self.settings = new
            try:
                await self._open_model()
            except (KeyError, ValueError, FileNotFoundError) as e:
                self.settings = old
                if isinstance(e, PromptTooLong):
                    raise EventError("invalid_field", f"session.instructions: {e}",
                                     param="session.instructions") from None
                raise EventError("invalid_session", f"Cannot use that model/adapter: {e}",
                                 param="session.x_duplex") from None
            except BaseException:
                self.settings = old  # still the session that is open (a busy engine, a failed load)
                raise
        # Everything is valid: apply.
        self.settings = new
        live = self.session.model if self.session is not None else self.model_session
        if live is not None and hasattr(live, "sampling"):
            live.sampling = new.sampling
        policy = new.policy(self.registry.session_config.policy)
        if self.session is not None and policy != self.session.policy.config:  # this session's policy only
            self.session.policy.reconfigure(policy)
        if new.input_rate != old.input_rate and self.session is not None:
            self._plumb_input()
        if new.output_rate != old.output_rate and self.session is not None:
            self.out_resampler = OutputResampler(self.entry.codec.spec.sample_rate, new.output_rate)
            r = self.response
            if r is not None:  # what was sent so far counts at the rate it was sent at
                r.earlier_ms += r.samples * 1000 / old.output_rate
                r.samples = 0
        self._emit(server_event(ev.SESSION_UPDATED, session=self.session_view()))

    async def _open_model(self) -> None:
        """Load the chosen model (first use only) and open a backend session for this conversation."""
        entry = await asyncio.to_thread(self.registry.get, self.settings.model)
        adapter = None
        if self.settings.adapter is not None:
            if self.settings.adapter not in entry.adapters:
                raise ValueError(f"no adapter {self.settings.adapter!r} for model {entry.name} "
                                 f"(adapters: {', '.join(sorted(entry.adapters)) or 'none'})")
            adapter = str(entry.adapters[self.settings.adapter])
        # In a worker thread: the first use of an adapter merges (or loads) it, which must not stall the frames
        # of the conversations this event loop is running.
        new = await asyncio.to_thread(entry.backend.open_session, self.settings.sampling, self.settings.instructions,
                                      adapter=adapter)
        if self.model_session is not None:
            await self.model_session.close()
        self.entry, self.model_session = entry, new

    def session_view(self) -> dict:
        return session_view(self.settings, self.id, self.registry.names,
                            sorted(self.entry.adapters) if self.entry is not None else [],
                            self.entry.codec.spec if self.entry is not None else None, self.session is not None)

    # ---- the frame loop ----------------------------------------------------------------------
    def _start(self, delay: bool) -> None:
        entry = self.entry
        base = self.registry.session_config
        config = dataclasses.replace(base, system_prompt=self.settings.instructions, sampling=self.settings.sampling,
                                     policy=self.settings.policy(base.policy))
        self.session = Session(self.model_session, entry.codec, entry.backend.tokenizer, config,
                               input_rate=self.settings.input_rate, realtime=True, keep_frame_marks=64)
        self._plumb_input()
        self.model_session = None
        spec = entry.codec.spec
        self.frame_ms = spec.frame_ms
        self.quiet_frames = max(1, int(round(self.cfg.response_quiet_ms / spec.frame_ms)))
        self.talk_rms = config.policy.agent_talking_rms
        self.out_resampler = OutputResampler(spec.sample_rate, self.settings.output_rate)
        self.frame_task = asyncio.create_task(self._frame_loop(spec.frame_ms / 1000.0 if delay else 0.0))

    def _plumb_input(self) -> None:
        """Client rate -> codec rate: an exact decimator for integer ratios, else the listener's soxr."""
        codec_rate = self.entry.codec.spec.sample_rate
        # A replaced decimator held < 2 ms of audio; dropping it keeps the timeline simple.
        self.decimator = InputDecimator.for_rates(self.settings.input_rate, codec_rate)
        self.session.listener.set_input_rate(codec_rate if self.decimator is not None else self.settings.input_rate)

    async def _frame_loop(self, delay: float) -> None:
        try:
            if delay:  # a frame of jitter margin, as a live microphone would have
                await asyncio.sleep(delay)
            self.clock = FollowingClock(self.frame_ms / 1000.0, queued=self.session.user_frames.qsize,
                                        last_arrival=lambda: self.last_arrival, arrived=self.frame_arrived)
            if self.closing:
                return
            async for out in self.session.run(self.clock):
                self._on_frame(out)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("frame loop of %s failed", self.id)
            self._finish_response("failed")  # a client waiting on response.done is not left hanging
            self._emit(error_event("server_error", f"The model failed: {type(e).__name__}: {e}",
                                   error_type="server_error"))
            self.request_close(1011, "model failed")

    def _on_frame(self, out: FrameOutput) -> None:
        if out.cut:
            if self.client_cut and self.response is None:  # the cut the client's cancel asked for: no barge-in
                self.out_resampler.reset()
            else:
                self._barge_in(out)
            self.client_cut = False
        self._track_user(out)
        if out.heard_delta:
            self._heard(out.heard_delta)
        pcm = self.out_resampler.process(out.agent_audio)
        audible = not out.forced and out.mark.agent_rms >= self.talk_rms
        active = audible or bool(out.text_delta)
        if self.muted:
            self.mute_quiet = self.mute_quiet + 1 if not active else 0
            if self.mute_quiet >= self.quiet_frames:
                self.muted = False
        else:
            if self.response is None and active and not out.end_of_turn:
                self._complete_heard()
                self._open_response()
            r = self.response
            if r is not None:
                if len(pcm):
                    self._emit(ev.output_audio_delta(r.id, r.item_id, self.settings.output_format.encode(pcm)))
                    r.samples += len(pcm)
                if out.text_delta:
                    self._emit(ev.output_audio_transcript_delta(r.id, r.item_id, out.text_delta))
                    r.transcript.append(out.text_delta)
                r.frames += 1
                r.quiet = 0 if active else r.quiet + 1
                if out.end_of_turn or r.quiet >= self.quiet_frames:
                    self._finish_response("completed")
        if self.settings.events["frame"]:
            e = ev.frame_event(out.index, out.text_id, out.text_delta, audible)
            e.update(user_speech=bool(out.user.speech), agent_rms=out.mark.agent_rms, forced=out.forced, cut=out.cut,
                     end_of_turn=out.end_of_turn, underrun=out.user_underrun, muted=self.muted,
                     response_id=self.response.id if self.response else None)
            self._emit(e)
        if self.settings.events["latency"]:
            m = out.mark
            marks = {"listen_ms": m.listen_ms, "think_ms": m.think_ms, "speak_ms": m.speak_ms,
                     "late_by_ms": m.late_by_ms, "queued_frames": float(self.session.user_frames.qsize()),
                     "user_underruns": float(self.session.user_underruns),
                     "dropped_frames": float(self.session.user_frames.dropped),
                     "clock_shift_ms": round(self.clock.shift * 1000.0, 3)}
            latency = self.session.latency
            if latency.turns_measured > self._turns_seen:
                marks["turn_latency_ms"] = latency.turn_latencies_ms[-1]
                self._turns_seen = latency.turns_measured
            self._emit(ev.latency_event(out.index, m.total_ms, marks))

    def _track_user(self, out: FrameOutput) -> None:
        """Server VAD events; with turn detection off the state is still followed (so turning it back on
        mid-utterance stays consistent) but nothing is sent."""
        emit = self._emit if self.settings.turn_type is not None else (lambda event: None)
        if out.user.speech:
            if not self.user_speaking:
                self._complete_heard()
                self.user_speaking, self.user_item = True, ev.new_id("item")
                self.user_item_committed = False
                self.muted = False  # a new user turn lifts a client's response.cancel
                emit(server_event(ev.INPUT_AUDIO_BUFFER_SPEECH_STARTED,
                                  audio_start_ms=int(out.index * self.frame_ms), item_id=self.user_item))
            self.user_quiet, self.last_speech_frame = 0, out.index
        elif self.user_speaking:
            self.user_quiet += 1
            if self.user_quiet * self.frame_ms >= self.settings.silence_ms:
                self.user_speaking = False
                emit(server_event(ev.INPUT_AUDIO_BUFFER_SPEECH_STOPPED,
                                  audio_end_ms=int((self.last_speech_frame + 1) * self.frame_ms),
                                  item_id=self.user_item))
                if not self.user_item_committed:  # a client's commit already committed it
                    emit(server_event(ev.INPUT_AUDIO_BUFFER_COMMITTED, item_id=self.user_item,
                                      previous_item_id=self.prev_user_item))
                    self.prev_user_item = self.user_item
                    if self.settings.turn_type is not None:  # the server VAD committed the buffer
                        self.appended_since_commit = False
                self.user_item_committed = True

    def _heard(self, delta: str) -> None:
        if self.user_item is None:  # heard before the VAD found speech: no user item to attach it to
            return
        if self.heard is None or self.heard[0] != self.user_item:
            self._complete_heard()
            self.heard = (self.user_item, [])
        self.heard[1].append(delta)
        self._emit(server_event(ev.INPUT_AUDIO_TRANSCRIPTION_DELTA, item_id=self.user_item, content_index=0,
                                delta=delta))

    def _complete_heard(self) -> None:
        if self.heard is not None:
            item, parts = self.heard
            self.heard = None
            self._emit(server_event(ev.INPUT_AUDIO_TRANSCRIPTION_COMPLETED, item_id=item, content_index=0,
                                    transcript="".join(parts).strip()))

    def _barge_in(self, out: FrameOutput) -> None:
        r = self.response
        audio_end_ms = self._sent_ms(r) if r is not None else None
        self._emit(ev.barge_in_event(out.index, "turn_detected", r.id if r else None, audio_end_ms))
        if r is not None:
            self._finish_response("cancelled", "turn_detected")
        self.out_resampler.reset()  # drop the cut speech the resampler still holds

    def _sent_ms(self, r: _Response) -> int:
        """Milliseconds of agent audio sent for response ``r``."""
        if not r.earlier_ms:
            return r.samples * 1000 // self.settings.output_rate
        return int(r.earlier_ms + r.samples * 1000 / self.settings.output_rate)

    def _open_response(self) -> None:
        self.response = r = _Response(ev.new_id("resp"), ev.new_id("item"))
        self._emit(server_event(ev.RESPONSE_CREATED, response={
            "object": "realtime.response", "id": r.id, "status": "in_progress", "status_details": None,
            "output": [], "output_modalities": ["audio"], "conversation_id": self.conversation_id}))

    def _finish_response(self, status: str, reason: str | None = None) -> None:
        r, self.response = self.response, None
        if r is None:
            return
        text = "".join(r.transcript)
        ids = {"response_id": r.id, "item_id": r.item_id, "output_index": 0, "content_index": 0}
        self._emit(server_event(ev.RESPONSE_OUTPUT_AUDIO_DONE, **ids))
        self._emit(server_event(ev.RESPONSE_OUTPUT_AUDIO_TRANSCRIPT_DONE, **ids, transcript=text))
        audio_ms = self._sent_ms(r)
        item = {"id": r.item_id, "object": "realtime.item", "type": "message", "role": "assistant",
                "status": "completed" if status == "completed" else "incomplete",
                "content": [{"type": "output_audio", "transcript": text}]}
        self._emit(ev.response_done(r.id, status, reason, output=[item], conversation_id=self.conversation_id,
                                    output_modalities=["audio"], x_duplex={"audio_ms": audio_ms, "frames": r.frames}))
        self.items[r.item_id] = audio_ms
        while len(self.items) > 256:
            self.items.popitem(last=False)

