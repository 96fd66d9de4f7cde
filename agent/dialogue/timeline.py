"""When things are said: turns placed on a dialogue timeline with duplex phenomena and labelled events.

One dialogue is a sequence of exchanges (a user request and the agent's answer); each exchange is played out
as one phenomenon, drawn with the preset's mixture weights:

- ``normal``            the user speaks; the agent starts ``latency`` (200–700 ms) after the user's end.
- ``pause``             the user says part 1, pauses 0.6–1.5 s (event ``pause``), then part 2; nothing is said
                        in the pause, the agent answers only after part 2. Part 1 is the request cut at a word
                        boundary ("what is the capital of" ... "france") or a filler ("so, um" ... request).
- ``user_backchannel``  while the agent answers, the user says "uh-huh" / "yeah" / "okay" at a gap between the
                        agent's words (event ``user_backchannel``); the agent carries on.
- ``interruption``      while the agent answers, the user starts a new request (event ``interruption`` at its
                        onset); the agent's audio stops 200–400 ms after the onset (``cut_at``; a 10 ms fade
                        ends there), its words after the cut are dropped, and it then answers the new request.
- ``agent_backchannel`` a long user turn (a lead-in, a 0.25–0.5 s breath, then the request); the agent says a
                        short "uh-huh." in the breath (event ``agent_backchannel``) and answers at the end.

Between exchanges there is a 0.3–1.2 s gap, and with probability ``silence_prob`` a 1.5–4 s stretch of
silence (event ``silence``). Every complete user request ends with a ``turn_end`` event that carries the
agent's start and the latency. Turns are returned sorted by start time; events refer to turns by index.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from agent.dialogue.content import (AGENT_BACKCHANNELS, INTERRUPT_HEADS, LONG_TURN_HEADS, PAUSE_FILLERS,
                                    USER_BACKCHANNELS, Exchange, Picker, make_exchange)
from agent.dialogue.tts import SAMPLE_RATE, AgentSpeech

PHENOMENA = ("normal", "pause", "user_backchannel", "interruption", "agent_backchannel")


def held(text: str) -> str:
    """The words a speaker holds the floor after: a trailing comma makes the TTS voices end them on a
    continuation (level or rising) pitch instead of the final fall they give a complete utterance, as people
    do before a mid-turn pause. Without it the pause's first part sounds exactly like a turn end."""
    return text if text.endswith((",", ".", "?", "!", "...")) else text + ","


@dataclass
class TimelineConfig:
    min_duration: float = 8.0
    max_duration: float = 30.0
    phenomena: dict = field(default_factory=lambda: {"normal": 0.35, "pause": 0.15, "user_backchannel": 0.15,
                                                     "interruption": 0.15, "agent_backchannel": 0.2})
    latency: tuple = (0.2, 0.7)             # agent start after the user's end (s)
    pause: tuple = (0.6, 1.5)               # user mid-utterance pause (s)
    stop_after: tuple = (0.2, 0.4)          # agent audio stop after an interruption onset (s)
    breath: tuple = (0.25, 0.5)             # gap inside a long user turn where the agent backchannels (s)
    gap: tuple = (0.3, 1.2)                 # between an agent answer and the next user turn (s)
    silence_prob: float = 0.15
    silence: tuple = (1.5, 4.0)
    lead_in: tuple = (0.3, 1.2)             # silence at the start (s)
    tail: tuple = (0.3, 1.0)                # silence at the end (s)
    greeting_first: float = 0.3             # probability of opening with a greeting
    farewell_last: float = 0.25             # probability of closing with a farewell (when it fits)
    intent_weights: dict | None = None
    min_exchanges: int = 2                  # at least this many exchanges per dialogue (when they fit)


@dataclass
class Turn:
    speaker: str
    kind: str
    start: float
    audio: np.ndarray
    text: str
    words: list = field(default_factory=list)      # agent: [(word, start, end)] on the dialogue clock
    cut_at: float | None = None
    planned_text: str | None = None
    uid: int = 0

    @property
    def end(self) -> float:
        return self.start + len(self.audio) / SAMPLE_RATE


@dataclass
class Dialogue:
    turns: list[Turn]
    events: list[dict]
    qa: list[dict]
    duration: float
    phenomena: list[str]


def _u(rng, lo_hi) -> float:
    return float(rng.uniform(*lo_hi))


class Builder:
    """Places exchanges one after another; ``speak_user(text) -> audio``, ``speak_agent(words, tts_words)
    -> AgentSpeech`` and ``speak_head(head, rest) -> audio`` (words before a mid-turn pause; default: ``head``
    with :func:`held`'s comma) make the sound."""

    def __init__(self, cfg: TimelineConfig, rng: np.random.Generator, picker: Picker,
                 speak_user: Callable[[str], np.ndarray], speak_agent: Callable[[list, list | None], AgentSpeech],
                 speak_head: Callable[[str, str], np.ndarray] | None = None):
        self.cfg, self.rng, self.p = cfg, rng, picker
        self.speak_user, self.speak_agent = speak_user, speak_agent
        # speak_head(head, rest) -> the audio of ``head`` as said before a pause, with ``rest`` to follow
        self.speak_head = speak_head or (lambda head, rest: speak_user(held(head)))
        self.turns: list[Turn] = []
        self.events: list[dict] = []   # turn references are Turn uids until finish()
        self.qa: list[dict] = []
        self.phen: list[str] = []
        self._uid = 0

    # -- primitives
    def _turn(self, speaker, kind, start, audio, text, **kw) -> Turn:
        self._uid += 1
        return Turn(speaker, kind, start, audio, text, uid=self._uid, **kw)

    def _agent(self, kind, start, text, tts=None) -> Turn:
        words = text.split()
        sp = self.speak_agent(words, tts)
        t = self._turn("agent", kind, start, sp.audio, text)
        t.words = [(w, start + a, start + b) for w, a, b in sp.words]
        return t

    @staticmethod
    def _cut(t: Turn, cut_at: float) -> None:
        """Stop an agent turn's audio at ``cut_at`` (10 ms fade ending there) and drop the unspoken words."""
        n = max(1, int(round((cut_at - t.start) * SAMPLE_RATE)))
        audio = t.audio[:n].copy()
        f = min(len(audio), SAMPLE_RATE // 100)
        audio[len(audio) - f:] *= np.linspace(1.0, 0.0, f, dtype=np.float32)
        t.audio = audio
        t.cut_at = round(t.start + n / SAMPLE_RATE, 4)
        t.planned_text = t.text
        t.words = [w for w in t.words if w[2] <= t.cut_at]
        t.text = " ".join(w[0] for w in t.words)

    # -- one exchange in a given phenomenon; returns (new turns, events, qa, end time) without committing
    def exchange(self, t0: float, phen: str, ex: Exchange):
        cfg, rng = self.cfg, self.rng
        turns, events, qa = [], [], []

        def answer_after(user_turn: Turn, ex: Exchange, not_before: float = 0.0) -> Turn:
            start = max(user_turn.end + _u(rng, cfg.latency), not_before)
            a = self._agent("answer", start, ex.answer, ex.answer_tts)
            events.append({"type": "turn_end", "time": user_turn.end, "agent_start": a.start,
                           "latency": a.start - user_turn.end, "user_turn": user_turn.uid, "agent_turn": a.uid})
            qa.append({"question": user_turn.text, "answer": ex.answer, "intent": ex.intent,
                       "turn_index": user_turn.uid, "completed": True})
            return a

        if phen == "pause":
            words = ex.question.split()
            if ex.question_say is None and len(words) >= 4 and rng.random() < 0.7:
                k = int(rng.integers(2, len(words) - 1))
                head, tail = " ".join(words[:k]), " ".join(words[k:])
                full = ex.question
            else:
                head, tail = self.p.choice(PAUSE_FILLERS), ex.question
                full = f"{head}, {ex.question}"
            tail_say = ex.say if tail == ex.question else tail
            h = self._turn("user", "request_start", t0, self.speak_head(head, tail_say), head)
            gap = _u(rng, cfg.pause)
            tl = self._turn("user", "request_end", h.end + gap, self.speak_user(tail_say), tail)
            events.append({"type": "pause", "time": h.end, "end": tl.start, "duration": tl.start - h.end,
                           "user_turn": h.uid})
            a = answer_after(tl, ex)
            qa[-1]["question"] = full
            turns += [h, tl, a]
            return turns, events, qa, a.end

        if phen == "agent_backchannel":
            head = self.p.choice(LONG_TURN_HEADS)
            ha = self.speak_head(head, ex.say)
            breath = _u(rng, cfg.breath)
            qa_audio = self.speak_user(ex.say)
            gap = np.zeros(int(breath * SAMPLE_RATE), np.float32)
            u = self._turn("user", "request", t0, np.concatenate([ha, gap, qa_audio]), f"{head}, {ex.question}")
            bc_text, bc_tts = AGENT_BACKCHANNELS[int(rng.integers(len(AGENT_BACKCHANNELS)))]
            bstart = t0 + len(ha) / SAMPLE_RATE + float(rng.uniform(0.05, 0.2))
            b = self._agent("backchannel", bstart, bc_text, bc_tts.split())
            events.append({"type": "agent_backchannel", "time": b.start, "end": b.end, "user_turn": u.uid,
                           "agent_turn": b.uid})
            a = answer_after(u, ex, not_before=b.end + 0.2)
            turns += [u, b, a]
            return turns, events, qa, a.end

        u = self._turn("user", "request", t0, self.speak_user(ex.say), ex.question)
        a = answer_after(u, ex)
        turns += [u, a]
        dur = a.end - a.start
        gaps = [(w1[2], w2[1]) for w1, w2 in zip(a.words, a.words[1:])
                if w1[2] - a.start >= 0.5 and a.end - w2[1] >= 0.6]

        if phen == "user_backchannel" and dur >= 1.6:
            n_bc = 1 + int(dur > 4.0 and rng.random() < 0.5)
            last = a.start
            for _ in range(n_bc):
                cands = [g for g in gaps if g[0] >= last + 0.3]
                if not cands:
                    break
                g = cands[int(rng.integers(len(cands)))]
                text, say = USER_BACKCHANNELS[int(rng.integers(len(USER_BACKCHANNELS)))]
                b = self._turn("user", "backchannel", g[0] + float(rng.uniform(0.0, 0.15)), self.speak_user(say), text)
                if b.end > a.end - 0.1:
                    continue
                events.append({"type": "user_backchannel", "time": b.start, "end": b.end, "user_turn": b.uid,
                               "agent_turn": a.uid})
                turns.append(b)
                last = b.end
            return turns, events, qa, a.end

        if phen == "interruption" and dur >= 1.3:
            onset = a.start + float(rng.uniform(0.5, dur - 0.6))
            stop = onset + _u(rng, cfg.stop_after)
            ex2 = make_exchange(self.p, cfg.intent_weights)
            head = self.p.choice(INTERRUPT_HEADS)
            ui = self._turn("user", "interruption", onset, self.speak_user(head + ex2.say), head + ex2.question)
            self._cut(a, stop)
            qa[-1]["completed"] = False
            events.append({"type": "interruption", "time": onset, "agent_stop": a.cut_at,
                           "stop_latency": a.cut_at - onset, "user_turn": ui.uid, "agent_turn": a.uid})
            a2 = answer_after(ui, ex2, not_before=a.cut_at + 0.2)
            turns += [ui, a2]
            return turns, events, qa, a2.end

        return turns, events, qa, a.end

    # -- the whole dialogue
    def build(self) -> Dialogue:
        cfg, rng = self.cfg, self.rng
        target = float(rng.uniform(cfg.min_duration + 2.0, cfg.max_duration - 1.0))
        t = _u(rng, cfg.lead_in)
        names = [k for k, v in cfg.phenomena.items() if v > 0]
        w = np.array([cfg.phenomena[k] for k in names], float)
        first, fails = True, 0
        while (t < target or len(self.phen) < cfg.min_exchanges) and fails < 8:
            if t > cfg.max_duration - 3.5 and len(self.phen) >= cfg.min_exchanges:
                break   # no exchange fits in the time left
            if not first and rng.random() < cfg.silence_prob:
                s = _u(rng, cfg.silence)
                if t + s < cfg.max_duration - 4.0:
                    self.events.append({"type": "silence", "time": t, "end": t + s, "duration": s})
                    t += s
            phen = names[int(rng.choice(len(names), p=w / w.sum()))]
            if first and rng.random() < cfg.greeting_first:
                from agent.dialogue.content import greeting
                ex = greeting(self.p)
            elif t > target - 4.0 and rng.random() < cfg.farewell_last:
                from agent.dialogue.content import farewell
                ex = farewell(self.p)
            else:
                ex = make_exchange(self.p, cfg.intent_weights)
                # talking over the agent needs an answer long enough to talk over
                for _ in range(8 if phen in ("interruption", "user_backchannel") else 0):
                    if len(ex.answer.split()) >= 6:
                        break
                    ex = make_exchange(self.p, cfg.intent_weights)
            turns, events, qa, end = self.exchange(t, phen, ex)
            if end + cfg.tail[1] > cfg.max_duration:
                fails += 1
                continue
            self.turns += turns
            self.events += events
            self.qa += qa
            kinds = [e["type"] for e in events if e["type"] != "turn_end"]
            self.phen.append(kinds[0] if kinds else "normal")
            t = end + _u(rng, cfg.gap)
            first = False
        end = max((x.end for x in self.turns), default=0.0) + _u(rng, cfg.tail)
        duration = min(max(end, cfg.min_duration), cfg.max_duration)
        return self.finish(duration)

    def finish(self, duration: float) -> Dialogue:
        turns = sorted(self.turns, key=lambda x: (x.start, x.uid))
        index = {x.uid: i for i, x in enumerate(turns)}
        for e in self.events:
            for k in ("user_turn", "agent_turn"):
                if k in e:
                    e[k] = index[e[k]]
        for q in self.qa:
            q["turn_index"] = index[q["turn_index"]]
        events = sorted(self.events, key=lambda e: (e["time"], e["type"]))
        return Dialogue(turns, events, self.qa, duration, self.phen)
