"""``duplex chat``: a whole conversation from a WAV file, offline, through the real streaming loop.

The input file is streamed in blocks (a 1-hour file runs in bounded memory) into a :class:`Session`
(as fast as possible, or paced in real time with ``realtime=True``). Written next to ``output``:

- ``output``: stereo WAV, user left (what the model heard), agent right, time-aligned per frame;
- ``<stem>.txt``: the agent's transcript (its text slot); ``<stem>.transcript.json``: timed deltas (and, for a
  heard-text model, its ``heard`` transcript of the user);
- ``<stem>.latency.json``: every frame's step times and the summary;
- ``<stem>.config.json``: the resolved configuration.
"""
from __future__ import annotations

import asyncio
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf

from agent.config import SessionConfig, save_resolved
from agent.models import codec_for_layout, resolve_model
from agent.session import Session
from listen.pcm import MAX_CHANNELS, AudioInputError
from listen.resample import StreamingResampler
from listen.wavio import iter_wav_blocks, wav_info
from streaming.clock import FrameClock
from think.transformers_backend import TransformersBackend


AUTO_TAIL_MAX_SECONDS = 10.0  # an agent that babbles on does not keep an offline run going for ever
AUTO_TAIL_QUIET_SECONDS = 1.5  # the agent's silence that ends the tail (the eval's take-over window is 2 s)
MAX_TAIL_SECONDS = 86400.0  # a day of silence; more is a typo (and 1e308 s would overflow the frame count)


@dataclass
class ChatConfig:
    """One offline conversation.

    Attributes:
        input: the user's side, any WAV/FLAC/OGG soundfile reads (any rate, channels, sample type).
        output: stereo WAV to write.
        model: checkpoint directory (None = the embedded default).
        codec_weights: local weights directory for neural codecs (mimi, snac).
        realtime: pace the input and the clock in real time (as a live microphone would).
        tail_seconds: silence appended after the input so the agent can finish its answer; None (the
            default, ``--tail auto``) runs on after the input until the agent has been quiet for
            ``AUTO_TAIL_QUIET_SECONDS``, at most ``AUTO_TAIL_MAX_SECONDS``: a question that ends with the file
            still gets its answer.
        max_seconds: stop after this much input (None = the whole file).
        out_rate: sample rate of the output WAV (None = the codec's rate).
        engine: transformers backend engine (auto, lean, hf).
        threads: torch threads (None = torch's default).
    """

    input: Path
    output: Path
    model: Path | None = None
    codec_weights: Path | None = None
    realtime: bool = False
    tail_seconds: float | None = None
    max_seconds: float | None = None
    out_rate: int | None = None
    engine: str = "auto"
    threads: int | None = None

    def __post_init__(self) -> None:
        t = self.tail_seconds
        if t is not None and not (math.isfinite(t) and 0 <= t <= MAX_TAIL_SECONDS):
            raise ValueError(f"--tail must be 'auto' or a number of seconds from 0 to {MAX_TAIL_SECONDS:.0f}, "
                             f"got {self.tail_seconds}.")
        if self.max_seconds is not None and not (math.isfinite(self.max_seconds) and self.max_seconds > 0):
            raise ValueError(f"--max-seconds must be a number of seconds > 0, got {self.max_seconds}.")
        if self.out_rate is not None and not (isinstance(self.out_rate, int) and 1000 <= self.out_rate <= 768000):
            raise ValueError(f"--out-rate must be 1000 to 768000 Hz, got {self.out_rate}.")
        if self.threads is not None and not (isinstance(self.threads, int) and self.threads >= 1):
            raise ValueError(f"--threads must be >= 1, got {self.threads}.")

    def tail_frames(self, frame_ms: float) -> tuple[int, int | None]:
        """(most tail frames, agent-quiet frames that end the tail early or None) for ``Session.run``."""
        if self.tail_seconds is None:
            return (int(round(AUTO_TAIL_MAX_SECONDS * 1000.0 / frame_ms)),
                    int(round(AUTO_TAIL_QUIET_SECONDS * 1000.0 / frame_ms)))
        return int(round(self.tail_seconds * 1000.0 / frame_ms)), None

    def check_output(self) -> None:
        """Refuse an output path that cannot be written as a stereo PCM16 file, or that is the input."""
        out = Path(self.output)
        if out.is_dir():
            raise ValueError(f"--out {out} is a directory; pass a file name such as {out / 'dialogue.wav'}.")
        fmt = out.suffix[1:].upper()
        if fmt not in ("WAV", "FLAC"):
            raise ValueError(f"--out {out} must name a .wav (or .flac) file.")
        if out.exists() and Path(self.input).exists() and os.path.samefile(out, self.input):
            raise ValueError(f"--out {out} is the input file; writing it would destroy the input. "
                             f"Pass another name.")
        # Made now, before the model loads: a file in the way fails here, in one sentence, not after the load.
        for parent in (out.parent, *out.parent.parents):
            if parent.exists():
                if not parent.is_dir():
                    raise ValueError(f"--out {out}: {parent} is a file, not a directory; pass another path.")
                break
        out.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(out.parent, os.W_OK):
            raise ValueError(f"--out {out}: the directory {out.parent} is not writable; pass another path.")
        for suffix in SIDE_SUFFIXES:  # a directory named like a side file failed only after the whole run
            side = _side_path(out, suffix)
            if side.is_dir():
                raise ValueError(f"--out {out}: {side} is a directory, but the run writes its {suffix} file there; "
                                 f"pass another name or move it.")
        existed = out.exists()
        try:  # the file itself may refuse (read-only, immutable, /proc), even to root
            open(out, "ab").close()
        except OSError as e:
            raise ValueError(f"--out {out} cannot be written ({e.strerror or e}); pass another path.") from None
        if not existed:
            out.unlink()


SIDE_SUFFIXES = (".txt", ".transcript.json", ".latency.json", ".config.json")  # written beside the WAV


def _side_path(output: Path, suffix: str) -> Path:
    return output.with_name(output.stem + suffix)


class _StereoWriter:
    """Writes user and agent tracks frame by frame; agent audio that arrives late (look-ahead codecs)
    is queued so both channels stay aligned."""

    def __init__(self, path: Path, codec_rate: int, out_rate: int | None) -> None:
        self.rate = out_rate or codec_rate
        self.file = sf.SoundFile(str(path), "w", samplerate=self.rate, channels=2, subtype="PCM_16")
        self.resample_user = StreamingResampler(codec_rate, self.rate)
        self.resample_agent = StreamingResampler(codec_rate, self.rate)
        self.agent_backlog = np.zeros(0, np.float32)
        self.frames_written = 0

    def write(self, user: np.ndarray, agent: np.ndarray, cut: bool) -> None:
        if cut:
            self.agent_backlog = np.zeros(0, np.float32)
        u = self.resample_user.process(user)
        self.agent_backlog = np.concatenate([self.agent_backlog, self.resample_agent.process(agent)])
        a = self.agent_backlog[: len(u)]
        self.agent_backlog = self.agent_backlog[len(a):]
        if len(a) < len(u):
            a = np.concatenate([a, np.zeros(len(u) - len(a), np.float32)])
        self.file.write(np.stack([u, a], axis=1))
        self.frames_written += len(u)

    def close(self) -> None:
        u = self.resample_user.flush()
        a = np.concatenate([self.agent_backlog, self.resample_agent.flush()])[: len(u)]
        a = np.concatenate([a, np.zeros(len(u) - len(a), np.float32)])
        if len(u):
            self.file.write(np.stack([u, a], axis=1))
            self.frames_written += len(u)
        self.file.close()


async def _feed(session: Session, cfg: ChatConfig, rate: int) -> None:
    block_seconds = 0.02 if cfg.realtime else 1.0
    fed = 0.0
    start = time.monotonic()
    try:
        for block in iter_wav_blocks(cfg.input, block_seconds=block_seconds):
            if cfg.max_seconds is not None and fed >= cfg.max_seconds:
                break
            if cfg.max_seconds is not None and (cfg.max_seconds - fed) * rate < len(block):
                # compared first: a huge --max-seconds (1e308) times the rate is inf, which int() refuses
                block = block[: max(0, int(round((cfg.max_seconds - fed) * rate)))]
            await session.push_audio(block)
            fed += len(block) / rate
            if cfg.realtime:
                delay = start + fed - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
    finally:
        await session.end_input()


async def run_chat(cfg: ChatConfig, session_config: SessionConfig | None = None,
                   progress: Callable[[int, int], None] | None = None, announce: Callable[[str], None] | None = None) -> dict:
    """Run the conversation; returns a summary dict (also written in the latency report)."""
    session_config = session_config or SessionConfig()
    info = wav_info(cfg.input)  # clear error for a missing/corrupt file before any model is loaded
    if info.channels > MAX_CHANNELS:
        raise AudioInputError(f"{cfg.input} has {info.channels} channels; at most {MAX_CHANNELS} are supported "
                              f"(downmix it first, e.g. sox IN -c 1 OUT).")
    cfg.check_output()
    model_dir = resolve_model(cfg.model, announce=announce)
    backend = TransformersBackend.from_dir(model_dir, context=session_config.context, threads=cfg.threads,
                                           engine=cfg.engine)
    codec = codec_for_layout(backend.layout, cfg.codec_weights)
    model_session = backend.open_session(session_config.sampling, session_config.system_prompt)
    session = Session(model_session, codec, backend.tokenizer, session_config, input_rate=info.rate,
                      realtime=cfg.realtime)
    spec = codec.spec
    input_seconds = info.duration if cfg.max_seconds is None else min(info.duration, cfg.max_seconds)
    tail_frames, tail_quiet = cfg.tail_frames(spec.frame_ms)
    expected_frames = int(np.ceil(input_seconds * 1000.0 / spec.frame_ms)) + tail_frames  # auto: at most
    writer = _StereoWriter(cfg.output, spec.sample_rate, cfg.out_rate)
    transcript: list[dict] = []
    feeder = asyncio.create_task(_feed(session, cfg, info.rate))
    clock = FrameClock(spec.frame_ms / 1000.0, realtime=cfg.realtime)
    t_start = time.perf_counter()
    frames = 0
    try:
        if cfg.realtime:
            # Like a live microphone, the session clock starts with the first frame of audio, plus one
            # frame of jitter margin (the resampler releases audio unevenly); started earlier, its first
            # ticks would find nothing yet (underruns padded with silence, lengthening the output).
            while session.user_frames.empty() and not session.input_ended and not feeder.done():
                await asyncio.sleep(0.002)
            await asyncio.sleep(spec.frame_ms / 1000.0)
        async for out in session.run(clock, tail_frames=tail_frames, tail_quiet_frames=tail_quiet):
            writer.write(out.user.audio.samples, out.agent_audio, out.cut)
            if out.text_delta or out.end_of_turn:
                transcript.append({"frame": out.index, "time": round(out.index * spec.frame_ms / 1000.0, 3),
                                   "text": out.text_delta, "end_of_turn": out.end_of_turn})
            if out.heard_delta:  # a heard-text model's transcript of the user
                transcript.append({"frame": out.index, "time": round(out.index * spec.frame_ms / 1000.0, 3),
                                   "heard": out.heard_delta})
            frames += 1
            if progress:
                progress(frames, expected_frames)
        await feeder  # surfaces input errors
        if progress:
            progress(frames, frames)  # an auto tail ends before the most it could take
        if frames == 0 and announce:
            announce(f"{cfg.input} holds no audio (0 frames); wrote an empty conversation.")
    finally:
        if not feeder.done():
            feeder.cancel()
        writer.close()
        await session.close()
        # Written also when the run stops early (Ctrl-C, a corrupt block further in): the transcript so far
        # stays beside the partial WAV instead of being lost.
        _side_path(cfg.output, ".txt").write_text(session.text.text.strip() + "\n")
        _side_path(cfg.output, ".transcript.json").write_text(json.dumps(transcript, indent=1) + "\n")
    wall = time.perf_counter() - t_start
    summary = session.latency.summary()
    summary.update({
        "input": str(cfg.input), "output": str(cfg.output), "model": str(model_dir), "engine": backend.engine,
        "input_seconds": round(input_seconds, 3), "output_seconds": round(writer.frames_written / writer.rate, 3),
        "output_rate": writer.rate, "wall_seconds": round(wall, 3), "realtime": cfg.realtime,
        "user_underruns": session.user_underruns, "nonfinite_input_samples": session.listener.nonfinite_samples,
        "agent_speaking_at_end": bool(session.policy.agent_talking),
    })
    report = session.latency.report()
    report["summary"] = summary
    _side_path(cfg.output, ".latency.json").write_text(json.dumps(report) + "\n")
    save_resolved(_side_path(cfg.output, ".config.json"), chat=cfg, session=session_config,
                  layout=backend.layout.to_dict())
    return summary
