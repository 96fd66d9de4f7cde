"""``duplex eval``: held-out dialogues through the real streaming loop, scored Full-Duplex-Bench style.

Each test dialogue's user channel (channel 0 of its WAV: what the model would hear) is streamed through
a :class:`Session` frame by frame; the agent's output is then scored against the dialogue's labelled
events (the ``duplex data synth`` contract, see ``agent/dialogue``):

- **turn take-over** at real turn ends (``turn_end``): did the agent start within ``take_over_window_s``,
  and how long after the user stopped (latency); ``turn_take_over_rate_unprompted`` counts only the answers
  the model began itself, not those the policy's answer prompt (``policy.answer_after_ms``) began;
- **pauses** (``pause``): did the agent wrongly take the turn during a mid-utterance pause (rate, lower is better);
  ``pauses_waited`` / ``turns_waited`` count the pauses and turn ends where the policy held the agent back
  because the turn detector heard the user as not finished (``policy.wait_unfinished``);
- **agent backchannel points** (``agent_backchannel``): the breath in a long user turn where the script's agent
  says "uh-huh"; the share where the agent is heard there (``agent_heard_at_backchannel_points``), and where the wait
  in a mid-turn pause held it silent (``agent_backchannel_points_waited``: it would keep it from the "uh-huh");
- **user backchannels** (``user_backchannel``) while the agent talks: did the agent stop, i.e. fall silent
  while the user said "mm-hmm" (rate, lower is better);
- **interruptions** (``interruption``): where the agent was talking at the user's onset, the time until its audio
  stops and the share stopping within 400 ms; for all, whether the agent then answers;
- **answers**: for each question (``qa``), the agent's text after the question vs the expected answer
  (normalised containment and word F1);
- **listening** (heard-text layouts only): word error rate of the model's own transcript of each question
  (its heard ids, ``question_heard_wer``) against the question's text;
- **intelligibility** (``--asr``; needs ``pip install 'duplex-agent[eval]'``): word error rate of the agent's
  speech in each answer window through Whisper tiny.en against what its own text slot said, next to the same
  recogniser on the dialogue's clean agent channel (the TTS voice it was trained on) against the expected answer.

"The agent is active" in a frame means its decoded audio is above ``active_rms`` or its text slot holds a
word piece; "it stops" means its audio stays at or below ``active_rms`` for ``stop_quiet_frames`` frames (a
gap between words is not a stop). ``--reference`` scores the data's own agent channel the same way: a
measure the script itself fails is broken. Results: JSON (summary + per-dialogue) and, with matplotlib, a
latency histogram.
"""
from __future__ import annotations

import asyncio
import json
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from agent.config import SessionConfig
from agent.models import codec_for_layout, resolve_model
from agent.session import Session
from agent.training.mic_paths import check_paths, to_codec_rate
from listen.wavio import read_wav
from streaming.clock import FrameClock
from think.device import resolve_device
from think.transformers_backend import TransformersBackend


@dataclass
class EvalConfig:
    """Scoring settings.

    Attributes:
        data: directory of dialogues (``duplex data synth`` output).
        split: which split to score.
        limit: at most this many dialogues (0 = all).
        take_over_window_s: an answer must start within this long after a turn end.
        active_rms: agent audio level above which the agent counts as speaking.
        stop_quiet_frames: consecutive quiet frames that count as "the agent stopped" (5 = 400 ms). It must be
            longer than the agent voice's own gaps between words (at most 320 ms in data-tiny's test
            dialogues), or an agent that talks on through a user backchannel is scored as stopping at it.
        reference: score each dialogue's own agent channel (the script) instead of a model: what a model that
            does exactly what the data does gets, so a measure's best value on this data is known.
        asr: also score intelligibility through the offline recogniser.
        cut_explained_s: a barge-in cut counts as set off by the user if the user was speaking at it or within
            this long before it (the canceller can hide an onset for a while, and the cut needs 240 ms of speech);
            other cuts (``barge_in_cuts_without_user_speech``) were set off by echo or noise.
        mic_path: how the user channel reaches the codec rate. Empty: the session resamples the WAV itself
            (what ``duplex chat`` does). A name from ``agent/training/mic_paths.py`` first takes it the way
            that live input does, e.g. ``browser-apm`` to score the model as the page's users hear it.
        device: where the model runs: auto (CUDA when torch sees one), cpu, cuda or cuda:N. Real-size
            models (the SmolLM2 speech base, ~0.8 s per frame on a CPU) need a GPU to be scored in minutes.
    """

    data: str = ""
    split: str = "test"
    limit: int = 0
    take_over_window_s: float = 2.0
    active_rms: float = 0.02
    stop_quiet_frames: int = 5
    cut_explained_s: float = 1.0
    reference: bool = False
    asr: bool = False
    mic_path: str = ""
    device: str = "auto"


@dataclass
class DialogueScore:
    id: str
    turn_ends: list[dict] = field(default_factory=list)
    pauses: list[dict] = field(default_factory=list)
    backchannels: list[dict] = field(default_factory=list)
    interruptions: list[dict] = field(default_factory=list)
    answers: list[dict] = field(default_factory=list)
    agent_backchannels: list[dict] = field(default_factory=list)
    cuts: list[dict] = field(default_factory=list)


def _norm_words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def answer_score(said: str, expected: str) -> dict:
    """Containment (every expected word said, in order-insensitive bag terms) and word F1."""
    s, e = _norm_words(said), _norm_words(expected)
    if not e:
        return {"contains": False, "f1": 0.0}
    common = sum(min(s.count(w), e.count(w)) for w in set(e))
    precision = common / len(s) if s else 0.0
    recall = common / len(e)
    f1 = 2 * precision * recall / (precision + recall) if common else 0.0
    return {"contains": recall == 1.0, "f1": round(f1, 4)}


async def _run_dialogue(backend: TransformersBackend, codec, cfg: SessionConfig, wav: Path,
                        mic_path: str = "") -> tuple[list, float]:
    audio, rate = read_wav(wav)
    user = audio[:, 0]
    if mic_path:  # the live path's own resampling (and processing) replaces the session's
        user = to_codec_rate(user, rate, codec.spec.sample_rate, mic_path, far=audio[:, 1])
        rate = codec.spec.sample_rate
    return await run_user_audio(backend, codec, cfg, user, rate), codec.spec.frame_ms / 1000.0


async def run_user_audio(backend: TransformersBackend, codec, cfg: SessionConfig, user: np.ndarray,
                         rate: int) -> list:
    """One fresh session fed ``user`` (mono PCM at ``rate``) as fast as it runs; its frame outputs."""
    session = Session(backend.open_session(cfg.sampling, cfg.system_prompt), codec, backend.tokenizer, cfg,
                      input_rate=rate)

    async def feed() -> None:
        for i in range(0, len(user), rate):
            await session.push_audio(user[i:i + rate])
        await session.end_input()

    task = asyncio.create_task(feed())
    outs = [o async for o in session.run(FrameClock(codec.spec.frame_ms / 1000.0, realtime=False))]
    await task
    await session.close()
    return outs


def script_frames(wav: Path, record: dict, frame_s: float, pad_id: int) -> list[SimpleNamespace]:
    """The dialogue's own agent channel (channel 1 of its WAV) cut into frames shaped like a session's output
    (``mark.agent_rms``, ``text_id``, ``text_delta``), for ``score_dialogue``: each agent word's text stands in
    the frame where the word starts, every other frame holds ``pad_id``; ``text_id`` 0 marks a word."""
    audio, rate = read_wav(wav)
    hop = int(round(rate * frame_s))
    n = len(audio) // hop
    agent = audio[: n * hop, 1].reshape(n, hop)
    rms = np.sqrt((agent.astype(np.float64) ** 2).mean(axis=1))
    text = [""] * n
    for turn in record.get("turns", []):
        if turn["speaker"] == "agent":
            for w in turn.get("words") or []:
                text[min(n - 1, int(float(w["start"]) / frame_s))] += " " + w["word"]
    return [SimpleNamespace(mark=SimpleNamespace(agent_rms=float(rms[f])), text_id=0 if text[f] else pad_id,
                            text_delta=text[f], heard_delta="") for f in range(n)]


def answer_windows(record: dict, frame_s: float, n_frames: int) -> list[tuple[int, int, dict]]:
    """Where each completed question's answer is scored: ``(first frame, end frame, qa)`` per question.

    The window opens at the frame where the question's turn ends and runs until the user's next turn, clamped
    to ``[0, n_frames]``. A user backchannel ("mm-hmm") inside the answer does not end it (59 of data-v2's 410
    completed test answers have one, and the script's own answer goes on after it). An interrupted answer
    (``completed: false``) is not expected to be complete, so it has no window. The diagnostics in
    ``docs/diagnostics`` score the same windows.
    """
    turns = record.get("turns", [])

    def frame(t: float) -> int:
        return min(n_frames, max(0, int(t / frame_s)))

    windows = []
    for qa in record.get("qa", []):
        i = qa.get("turn_index")
        if qa.get("completed") is False or i is None or i >= len(turns):
            continue
        end = float(turns[i]["end"])
        nxt = [float(u["start"]) for u in turns if u["speaker"] == "user" and float(u["start"]) > end + 0.3
               and u.get("kind") != "backchannel"]
        windows.append((frame(end), frame(min(nxt)) if nxt else n_frames, qa))
    return windows


def score_dialogue(record: dict, outs: list, frame_s: float, cfg: EvalConfig, pad_id: int, text_vocab: int,
                   heard_text: bool = False) -> DialogueScore:
    rms = np.asarray([o.mark.agent_rms for o in outs])
    has_text = np.asarray([o.text_id < text_vocab for o in outs])
    active = (rms > cfg.active_rms) | has_text
    n = len(outs)

    def frame(t: float) -> int:
        return min(n, max(0, int(t / frame_s)))

    def first_active(a: int, b: int) -> int | None:
        idx = np.nonzero(active[a:b])[0]
        return int(a + idx[0]) if len(idx) else None

    def stop_frame(a: int, b: int) -> int | None:
        quiet = 0
        for i in range(a, b):
            quiet = quiet + 1 if rms[i] <= cfg.active_rms else 0
            if quiet >= cfg.stop_quiet_frames:
                return i - cfg.stop_quiet_frames + 1
        return None

    score = DialogueScore(id=record["id"])
    window = int(cfg.take_over_window_s / frame_s)
    for ev in record.get("events", []):
        t = float(ev["time"])
        f = frame(t)
        kind = ev["type"]
        if kind == "turn_end":
            start = first_active(f, min(n, f + window))
            # prompted: the policy's answer prompt (policy.answer_after_ms), not the model, began this answer
            prompted = start is not None and any(getattr(o.mark, "speak_now", False) for o in outs[f:start + 1])
            # how much of the 2 s after its start the answer is heard: one stray word or a reply
            spoke = 0 if start is None else int(active[start:min(n, start + window)].sum())
            # waited: the policy held the agent back here (the turn detector heard a mid-turn pause)
            waited = any(getattr(o.mark, "wait", False) for o in outs[f:(start if start is not None else min(n, f + window)) + 1])
            score.turn_ends.append({"time": t, "took_over": start is not None, "prompted": prompted, "waited": waited,
                                    "latency_ms": None if start is None else round(max(0.0, start * frame_s - t) * 1000, 1),
                                    "active_ms": round(spoke * frame_s * 1000, 1)})
        elif kind == "pause":
            end = frame(float(ev.get("end", t + float(ev.get("duration", 0.8)))))
            start = first_active(f + 1, end)
            score.pauses.append({"time": t, "took_over": start is not None,
                                 "waited": any(getattr(o.mark, "wait", False) for o in outs[f:end + 1]),
                                 "start_ms": None if start is None else round(max(0.0, start * frame_s - t) * 1000, 1)})
        elif kind == "agent_backchannel":
            # the script's agent says "uh-huh" in the breath of a long user turn: is the agent heard there
            # (a backchannel, or a start in the breath: the sound cannot tell them apart)
            end = min(n, frame(float(ev.get("end", t + 0.5))) + 2)
            score.agent_backchannels.append({"time": t, "spoke": bool(active[max(0, f - 1):end].any()),
                                             "waited": any(getattr(o.mark, "wait", False) for o in outs[max(0, f - 3):end])})
        elif kind == "user_backchannel":
            # stopped: a silence that begins while the user says "mm-hmm" (its end: ``end``); the agent's
            # answer ending later on its own is not a stop
            agent_was_active = bool(active[max(0, f - 2):f].any())
            end = frame(float(ev.get("end", t + 0.5)))
            stop = stop_frame(f, min(n, end + cfg.stop_quiet_frames))
            score.backchannels.append({"time": t, "agent_active": agent_was_active,
                                       "agent_stopped": agent_was_active and stop is not None})
        elif kind == "interruption":
            # the script's agent talks at the onset; a model whose answer already ended has nothing to stop,
            # so the stop is scored only where it was talking (``agent_active``)
            agent_was_active = bool(active[max(0, f - 2):f].any())
            stop = stop_frame(f, min(n, f + window))
            resumed = first_active(stop + cfg.stop_quiet_frames, n) if stop is not None else None
            score.interruptions.append({"time": t, "agent_active": agent_was_active,
                                        "stop_ms": None if stop is None else round(max(0.0, stop * frame_s - t) * 1000, 1),
                                        "answered_after": resumed is not None})
    turns = record.get("turns", [])
    # Every barge-in cut, and whether the user was speaking then: a cut with no user speech in the second
    # before it was set off by the agent's own echo or by noise, and cut the agent's answer for nothing.
    user_speech = [(float(u["start"]), float(u["end"])) for u in turns if u["speaker"] == "user"]
    for i, o in enumerate(outs):
        if getattr(o, "cut", False):
            t = i * frame_s
            score.cuts.append({"time": round(t, 3),
                               "user_speaking": any(a <= t and b >= t - cfg.cut_explained_s for a, b in user_speech)})
    for a, b, qa in answer_windows(record, frame_s, n):
        said = "".join(o.text_delta for o in outs[a:b])
        score.answers.append({"question": qa["question"], "expected": qa["answer"], "said": said.strip(),
                              "intent": qa.get("intent"), "frames": [a, b], **answer_score(said, qa["answer"])})
        if heard_text:  # what the model wrote down of the question, from its first part (before a pause) on
            i = qa["turn_index"]
            while i > 0 and turns[i - 1]["speaker"] == "user" and turns[i - 1].get("kind") == "request_start":
                i -= 1
            score.answers[-1]["heard_question"] = "".join(o.heard_delta for o in outs[frame(float(turns[i]["start"])):b]).strip()
    return score


def intelligibility(recognize, scores: list[DialogueScore], runs: list[tuple[list, Path, int]]) -> dict:
    """WER of the agent's speech vs its own text, and of the clean TTS channel vs the expected answers."""
    import soxr

    from agent.codec_eval import word_errors

    agent_err = agent_words = clean_err = clean_words = 0
    for score, (outs, wav, codec_rate) in zip(scores, runs):
        audio, rate = read_wav(wav)
        for ans in score.answers:
            a, b = ans["frames"]
            if b <= a:
                continue
            if ans["said"]:
                speech = np.concatenate([o.agent_audio for o in outs[a:b]])
                hyp = recognize(soxr.resample(speech, codec_rate, 16000).astype(np.float32))
                e, n = word_errors(ans["said"], hyp)
                agent_err, agent_words = agent_err + e, agent_words + n
                ans["heard"] = hyp
            seconds = len(outs[0].agent_audio) / codec_rate if outs else 0.08
            clean = audio[int(a * seconds * rate): int(b * seconds * rate), 1]
            e, n = word_errors(ans["expected"], recognize(soxr.resample(clean, rate, 16000).astype(np.float32)))
            clean_err, clean_words = clean_err + e, clean_words + n
    return {"agent_speech_wer": round(agent_err / agent_words, 4) if agent_words else None,
            "agent_speech_words": agent_words,
            "clean_tts_wer": round(clean_err / clean_words, 4) if clean_words else None}


def summarize(scores: list[DialogueScore]) -> dict:
    def rate(items: list[dict], key: str) -> float | None:
        return round(float(np.mean([bool(i[key]) for i in items])), 4) if items else None

    turn_ends = [x for s in scores for x in s.turn_ends]
    lat = [x["latency_ms"] for x in turn_ends if x["latency_ms"] is not None]
    inter = [x for s in scores for x in s.interruptions]
    talking = [x for x in inter if x.get("agent_active", True)]
    stops = [x["stop_ms"] for x in talking if x["stop_ms"] is not None]
    backs = [x for s in scores for x in s.backchannels if x["agent_active"]]
    agent_backs = [x for s in scores for x in s.agent_backchannels]
    answers = [x for s in scores for x in s.answers]
    heard = [x for x in answers if "heard_question" in x]
    extra = {}
    if heard:
        from agent.codec_eval import word_errors

        errors = [word_errors(x["question"], x["heard_question"]) for x in heard]
        extra["question_heard_wer"] = round(sum(e for e, _ in errors) / max(1, sum(n for _, n in errors)), 4)
    by_intent: dict[str, list[int]] = {}
    for a in answers:
        if a.get("intent"):
            c = by_intent.setdefault(a["intent"], [0, 0])
            c[0] += bool(a["contains"])
            c[1] += 1
    if by_intent:  # "correct/asked" per intent, the most asked first: where the answers are won or lost
        extra["answers_by_intent"] = {k: f"{c}/{n}" for k, (c, n) in sorted(by_intent.items(), key=lambda kv: -kv[1][1])}
    return {
        "dialogues": len(scores),
        "turn_take_over_rate": rate(turn_ends, "took_over"),
        "turn_take_over_rate_unprompted": rate([{"own": x["took_over"] and not x["prompted"]} for x in turn_ends],
                                               "own"),
        "turns_prompted": sum(bool(x.get("prompted")) for x in turn_ends),
        "turns_waited": sum(bool(x.get("waited")) for x in turn_ends),
        "pauses_waited": sum(bool(x.get("waited")) for s in scores for x in s.pauses),
        "answer_active_ms_median": _median([x["active_ms"] for x in turn_ends if x["took_over"] and not x["prompted"]]),
        "prompted_answer_active_ms_median": _median([x["active_ms"] for x in turn_ends if x.get("prompted")]),
        "turn_latency_ms_median": _median(lat),
        "turn_latency_ms_p90": round(float(np.percentile(lat, 90)), 1) if lat else None,
        "pause_take_over_rate": rate([x for s in scores for x in s.pauses], "took_over"),
        "agent_backchannel_points": len(agent_backs),
        "agent_heard_at_backchannel_points": rate(agent_backs, "spoke"),
        "agent_backchannel_points_waited": sum(bool(x["waited"]) for x in agent_backs),
        "backchannels_agent_talking": len(backs),
        "backchannel_take_over_rate": rate(backs, "agent_stopped"),
        "interruptions": len(inter),
        "interruptions_agent_talking": len(talking),
        "interruption_stop_within_400ms": round(float(np.mean([s is not None and s <= 400 for s in
                                                              [x["stop_ms"] for x in talking]])), 4) if talking else None,
        "interruption_stop_ms_median": _median(stops),
        "interruption_answered_rate": rate(inter, "answered_after"),
        "barge_in_cuts": sum(len(s.cuts) for s in scores),
        "barge_in_cuts_without_user_speech": sum(not c["user_speaking"] for s in scores for c in s.cuts),
        "answer_accuracy": rate(answers, "contains"),
        "answer_f1_mean": round(float(np.mean([a["f1"] for a in answers])), 4) if answers else None,
        "questions": len(answers),
        **extra,
    }


def _median(values: list[float]) -> float | None:
    return round(float(np.median(values)), 1) if values else None


def _plot(scores: list[DialogueScore], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    lat = [x["latency_ms"] for s in scores for x in s.turn_ends if x["latency_ms"] is not None]
    stops = [x["stop_ms"] for s in scores for x in s.interruptions if x["stop_ms"] is not None]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].hist(lat or [0], bins=20)
    axes[0].set_title("turn-end -> agent start (ms)")
    axes[1].hist(stops or [0], bins=20, color="tab:red")
    axes[1].set_title("interruption -> agent stops (ms)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def held_out_records(data: Path, split: str, limit: int = 0) -> list[tuple[Path, dict]]:
    """``(wav, record)`` of a split's dialogues in ``data``, in the order eval scores them (by file name), at
    most ``limit`` (0 = all)."""
    from agent.training.tokenize import check_dialogue_audio, read_record

    if limit < 0:
        raise ValueError(f"--limit must be >= 0 (0 = every dialogue), got {limit}.")
    records = []
    for p in sorted(Path(data).glob("*.json")):
        if p.name in ("manifest.json", "shards.json"):
            continue
        r = read_record(p)  # a malformed dialogue is named, never scored as one with no turns
        if r.get("split") == split:
            if not p.with_suffix(".wav").is_file():  # found now, not after the dialogues before it were scored
                raise FileNotFoundError(f"{p} has no audio file {p.with_suffix('.wav').name}.")
            check_dialogue_audio(p.with_suffix(".wav"), r)
            records.append((p.with_suffix(".wav"), r))
            if limit and len(records) >= limit:
                break
    return records


def run_eval(cfg: EvalConfig, model: str | None, out: str | Path, session_cfg: SessionConfig | None = None,
             progress: bool = True) -> dict:
    from tqdm import tqdm

    if cfg.reference and (cfg.asr or cfg.mic_path):
        raise ValueError("--reference scores the data's own agent, which hears nothing and is the clean TTS voice: "
                         "drop --mic-path and --asr (a model's --asr run reports the clean TTS's WER beside its own).")
    data = Path(cfg.data)
    records = held_out_records(data, cfg.split, cfg.limit)
    if not records:
        raise FileNotFoundError(f"No {cfg.split!r} dialogues in {data}; make them with `duplex data synth`.")
    if cfg.mic_path:
        check_paths([cfg.mic_path])
    session_cfg = session_cfg or SessionConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)  # before the work: a bad --out must not cost the whole evaluation
    backend = None
    if cfg.reference:  # the data's own agent channel, at the model's frame length; no weights are loaded
        from think.layout import DuplexLayout

        lay = DuplexLayout.load(resolve_model(model))
        frame_s, source = lay.frame_ms / 1000.0, "reference: the dialogues' own agent channel"
    else:
        backend = TransformersBackend.from_dir(resolve_model(model), device=str(resolve_device(cfg.device)))
        codec = codec_for_layout(backend.layout)
        lay, source = backend.layout, str(backend.loaded.path)
    scores: list[DialogueScore] = []
    runs: list[tuple[list, Path, int]] = []
    stopped = False
    try:
        for wav, record in tqdm(records, desc="eval", unit="dialogue", disable=not progress):
            if backend is None:
                outs = script_frames(wav, record, frame_s, lay.pad_id)
            else:
                outs, frame_s = asyncio.run(_run_dialogue(backend, codec, session_cfg, wav, cfg.mic_path))
            scores.append(score_dialogue(record, outs, frame_s, cfg, lay.pad_id, lay.text_vocab_size,
                                         heard_text=lay.heard_text and backend is not None))
            if cfg.asr:
                runs.append((outs, wav, codec.spec.sample_rate))
    except KeyboardInterrupt:
        if not scores:
            raise
        stopped = True  # Ctrl-C: the dialogues already scored are written, not thrown away
    summary = summarize(scores)
    if cfg.asr and not stopped:
        from agent.codec_eval import Recognizer

        summary.update(intelligibility(Recognizer(), scores, runs))
    result = {"summary": summary, "config": asdict(cfg), "session": asdict(session_cfg), "model": source,
              "complete": not stopped, "dialogues": [asdict(s) for s in scores]}
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    _plot(scores, out / "eval.png")
    if stopped:
        print(f"duplex: eval stopped after {len(scores)} of {len(records)} dialogues; {out / 'eval.json'} scores "
              "those (\"complete\": false).", file=sys.stderr)
        raise KeyboardInterrupt
    return result
