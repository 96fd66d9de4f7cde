"""Turn-taking policy on top of the model: the barge-in override and the echo guard.

The model hears the user at every frame and learns when to stop; the policy is a safety net that does
not depend on the model. If the user speaks for ``barge_in_min_speech_ms`` while the agent talks, the
agent's audio is cut *in that same frame* (the playout buffer is flushed and the frame's agent slot is
forced to PAD + silence codes, so the model sees that it stopped). The force holds while the user keeps
talking and for ``release_after_ms`` of user silence after, then the model answers.

With ``pause_before_cut_ms`` > 0 the barge-in first only *pauses* the agent's audio: the model talks on and
the session holds its audio back. If the user keeps talking for that much longer, the agent is cut as above
and the held audio dropped; if the user stops first (``resume_after_ms`` of silence: a "mm-hmm"), the held
audio plays and the agent goes on. So a listener's backchannel does not end the agent's turn, and the agent
still falls silent as soon as an interruption is heard (LiveKit's agents call this a false interruption).
Speech within a second after a backchannel counts as the same utterance going on ("wait, ... stop"): it pauses
the agent at once, and its speech adds up towards the cut.

The answer prompt (``answer_after_ms``) is the same kind of net for the other way a small model fails: it
misses a turn end and leaves the user waiting in silence. Once the user has said something (a run of
``barge_in_min_speech_ms`` of speech) and then been silent that long, with the agent silent all the while,
the agent's text slot may not draw PAD or end-of-turn until it writes a word: the model starts its answer,
and says whatever it would say. The model still decides every turn it takes sooner; this only bounds how
long a user waits (LiveKit's agents call the bound a maximum endpointing delay). It must be longer than the
mid-turn pauses the agent should wait through.

The wait (``wait_unfinished``) is the net for the opposite failure: the model takes the turn in a mid-turn
pause. While the user is silent after saying something, and the session's turn detector
(``listen/turn_detector.py``) says from how the last words sounded that the user has not finished, the agent
may not start: its slot is forced silent, as after a barge-in, until the user goes on, the detector changes
its mind, or the answer prompt's bound is reached (then the agent must answer).

The echo guard (half-duplex fallback, for open speakers without echo cancellation): while the agent
talks, and ``echo_tail_ms`` after, the user's audio is replaced by silence before the model hears it
and cannot trigger a barge-in.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class PolicyConfig:
    """Barge-in and echo settings.

    Attributes:
        barge_in: cut the agent when the user talks over it.
        barge_in_min_speech_ms: sustained user speech (VAD) needed to cut the agent.
        release_after_ms: user silence after which a cut agent may speak again.
        agent_talking_rms: agent output level (RMS, full scale 1.0) above which the agent is talking.
        echo_guard: replace the user's audio by silence while the agent talks (half duplex).
        echo_tail_ms: how long the echo guard stays on after the agent stops; also how long after the agent
            stops user speech may still be its echo, which never arms the answer prompt.
        pause_before_cut_ms: 0: cut at ``barge_in_min_speech_ms``. Otherwise pause the agent's audio there and
            cut only after this much more of the user's speech; a shorter utterance is a backchannel.
        resume_after_ms: user silence that ends a pause as a backchannel (the held audio then plays).
        answer_after_ms: after the user said something and then was silent this long, with the agent silent
            all the while, the agent must start its answer (its text slot draws no PAD or end-of-turn until it
            writes a word); 0: off. 1600 is longer than data-tiny's mid-turn pauses (0.6-1.5 s), and a turn
            end the model misses is still answered within the 2 s ``duplex eval`` allows.
        wait_unfinished: keep the agent from starting while the user is silent after speaking and the session's
            turn detector says they have not finished (a mid-turn pause); no effect without a detector
            (``SessionConfig.turn_detector``).
        unfinished_below: the detector's P(finished) below which the user is taken to be still going; 0: the
            threshold the detector was tuned with (``turn.json``).
        min_silence_ms: the agent may not start while the user, after saying something, has been silent less
            than this; 0 (default): the model decides at once. A voice-independent wait through short pauses
            (as ``silence_duration_ms`` is in turn-based servers): it adds up to this much to every answer's
            latency, where the turn detector adds nothing at a turn end it hears as finished.
    """

    barge_in: bool = True
    barge_in_min_speech_ms: float = 160.0
    release_after_ms: float = 320.0
    agent_talking_rms: float = 0.01
    echo_guard: bool = False
    echo_tail_ms: float = 240.0
    pause_before_cut_ms: float = 0.0
    resume_after_ms: float = 240.0
    answer_after_ms: float = 1600.0
    wait_unfinished: bool = True
    unfinished_below: float = 0.0
    min_silence_ms: float = 0.0

    def __post_init__(self) -> None:
        for name in ("barge_in_min_speech_ms", "release_after_ms", "echo_tail_ms", "pause_before_cut_ms",
                     "resume_after_ms", "answer_after_ms", "min_silence_ms"):
            value = getattr(self, name)
            if not (0 <= value <= 60_000):
                raise ValueError(f"policy.{name} must be between 0 and 60000 ms, got {value}.")
        if not (0 <= self.agent_talking_rms <= 1):
            raise ValueError(f"policy.agent_talking_rms must be between 0 and 1, got {self.agent_talking_rms}.")
        if not (0 <= self.unfinished_below < 1):
            raise ValueError(f"policy.unfinished_below must be at least 0 and below 1, got {self.unfinished_below}.")


@dataclass(frozen=True)
class Decision:
    """What the policy wants for this frame.

    Attributes:
        force_silence: the agent's slot is forced to PAD + silence this frame.
        cut: a barge-in starts now (flush the agent's queued audio, tell clients).
        mute_user: feed silence instead of the user's audio (echo guard).
        pause_audio: hold this frame's agent audio back (a barge-in not yet confirmed; the model talks on).
        speak_now: the user has waited ``answer_after_ms`` for an answer: the text slot may not draw PAD or
            end-of-turn this frame.
        wait: the user may go on (the turn detector says unfinished, or the silence is shorter than
            ``min_silence_ms``): the agent is forced silent (``force_silence`` is set too) so that it does not
            take the turn.
    """

    force_silence: bool = False
    cut: bool = False
    mute_user: bool = False
    pause_audio: bool = False
    speak_now: bool = False
    wait: bool = False


class TurnPolicy:
    """Per-session policy state, advanced once per frame."""

    def __init__(self, config: PolicyConfig, frame_ms: float) -> None:
        self.frame_ms = frame_ms
        self._repeat_window = math.ceil(1000.0 / frame_ms)
        self.reconfigure(config)
        self.reset()

    def reconfigure(self, config: PolicyConfig) -> None:
        """New settings from the next frame on (a Realtime client's session.update); the state carries over."""
        self.config = config
        ms = self.frame_ms
        self._need_speech = max(1, math.ceil(config.barge_in_min_speech_ms / ms))
        self._need_quiet = max(1, math.ceil(config.release_after_ms / ms))
        self._echo_tail = math.ceil(config.echo_tail_ms / ms)
        self._pause_frames = math.ceil(config.pause_before_cut_ms / ms)
        self._resume_quiet = max(1, math.ceil(config.resume_after_ms / ms))
        self._answer_quiet = math.ceil(config.answer_after_ms / ms) if config.answer_after_ms > 0 else 0
        self._min_quiet = math.ceil(config.min_silence_ms / ms)

    def reset(self) -> None:
        self.user_speech_run = 0
        self.user_quiet_run = 0
        self.agent_talking = False
        self.since_agent_talked = 10**9
        self.holding = False
        self.barge_ins = 0
        self.pausing = False  # a barge-in heard but not yet confirmed: the agent's audio is held back
        self.pause_speech = 0  # user speech frames of the utterance that paused the agent
        self.backchannels = 0  # pauses that ended as backchannels (the agent went on)
        self.since_backchannel = 10**9  # frames since the last one
        self.requested_hold = 0  # frames of forced silence a client asked for (response.cancel)
        self._cut_requested = False
        self.awaiting_answer = False  # the user said something the agent has not answered (nor talked since)
        self.waited = 0  # frames the user has been silent, for the answer prompt (a one-frame VAD blip is not speech)

    def request_hold(self, frames: int) -> None:
        """Force the agent silent for at least ``frames`` frames from the next one (a client cancel):
        the model then sees that it stopped, exactly as after a barge-in."""
        self.requested_hold = max(self.requested_hold, int(frames))
        self._cut_requested = True

    def before_step(self, user_speech: bool, user_unfinished: bool = False) -> Decision:
        """Decide for this frame from the user's VAD flag, the turn detector's verdict (``user_unfinished``:
        the user sounds as if they will go on) and the agent's state so far."""
        c = self.config
        echo_active = c.echo_guard and (self.agent_talking or self.since_agent_talked <= self._echo_tail)
        if echo_active:
            user_speech = False
        if user_speech:
            self.user_speech_run += 1
            self.user_quiet_run = 0
        else:
            self.user_quiet_run += 1
            self.user_speech_run = 0
        self.waited = 0 if self.user_speech_run >= 2 else self.waited + 1
        if self.user_speech_run >= self._need_speech and self.since_agent_talked > self._echo_tail:
            # speech that outlasts the agent's echo tail is the user's: a run inside it may be the agent's own
            # voice coming back, and answering that would have the agent answer itself, on and on
            self.awaiting_answer = True
        cut = False
        self.since_backchannel += 1
        if self.pausing and not c.barge_in:  # a client turned the barge-in off mid-pause: let the agent go on
            self.pausing = False
        # Within a second of a backchannel, more speech is the same utterance going on ("wait, ... stop"):
        # it pauses the agent at its first frame and adds to the speech that confirms a cut.
        follows_backchannel = self.since_backchannel <= self._repeat_window
        if self.pausing:
            self.pause_speech += bool(user_speech)
            if self.pause_speech >= self._need_speech + self._pause_frames:  # still talking: an interruption
                self.pausing, cut, self.holding = False, True, True
                self.barge_ins += 1
            elif self.user_quiet_run >= self._resume_quiet:  # it was short: a backchannel, go on
                self.pausing, self.since_backchannel = False, 0
                self.backchannels += 1
        elif c.barge_in and not self.holding and self.agent_talking and (
                self.user_speech_run >= self._need_speech or (follows_backchannel and user_speech)):
            if self._pause_frames > 0:
                self.pausing = True
                self.pause_speech = self.pause_speech + 1 if follows_backchannel else self.user_speech_run
            else:
                cut = True
                self.holding = True
                self.barge_ins += 1
        elif self.holding and self.user_quiet_run >= self._need_quiet:
            self.holding = False
        if self.requested_hold > 0:
            self.pausing = False  # a client's cancel wins over a pause: what was held back is dropped
            cut = cut or self._cut_requested
            self._cut_requested = False
            self.requested_hold -= 1
            return Decision(force_silence=True, cut=cut, mute_user=echo_active)
        if cut:  # the barge-in took this speech for the user's: it wants an answer, however soon it ended
            self.awaiting_answer = True
        unanswered = self.awaiting_answer and not self.holding and not self.pausing and not self.agent_talking
        speak_now = unanswered and self._answer_quiet > 0 and self.waited >= self._answer_quiet
        too_soon = self.waited < self._min_quiet
        wait = (c.wait_unfinished and user_unfinished or too_soon) and unanswered and not user_speech and not speak_now
        return Decision(force_silence=self.holding or wait, cut=cut, mute_user=echo_active, pause_audio=self.pausing,
                        speak_now=speak_now, wait=wait)

    def after_step(self, agent_rms: float, wrote_word: bool = False) -> None:
        """Record whether the agent's output this frame was audible, and whether its text slot wrote a word:
        either answers what the user said."""
        self.agent_talking = agent_rms >= self.config.agent_talking_rms
        self.since_agent_talked = 0 if self.agent_talking else self.since_agent_talked + 1
        if self.agent_talking or wrote_word:
            self.awaiting_answer = False
