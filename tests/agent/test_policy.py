"""The turn policy on its own: barge-in timing, release, echo guard."""
from __future__ import annotations

import math

import pytest

from agent.policy import PolicyConfig, TurnPolicy


def run(policy: TurnPolicy, user_speech: list[bool], agent_rms: float = 0.2, unfinished: list[bool] | None = None):
    """Step the policy over the user's VAD flags (and the turn detector's verdicts, when given)."""
    decisions = []
    for i, speech in enumerate(user_speech):
        d = policy.before_step(speech, user_unfinished=bool(unfinished and unfinished[i]))
        decisions.append(d)
        policy.after_step(0.0 if d.force_silence else agent_rms)
    return decisions


def test_barge_in_cuts_after_the_configured_sustained_speech():
    cfg = PolicyConfig(barge_in_min_speech_ms=240)
    policy = TurnPolicy(cfg, frame_ms=80)
    policy.after_step(0.2)  # the agent is talking
    decisions = run(policy, [False, True, True, True, True])
    cut_at = [i for i, d in enumerate(decisions) if d.cut]
    assert cut_at == [1 + math.ceil(240 / 80) - 1]  # third speech frame
    assert all(d.force_silence for d in decisions[cut_at[0]:])


def test_short_user_blip_does_not_cut_the_agent():
    policy = TurnPolicy(PolicyConfig(barge_in_min_speech_ms=240), frame_ms=80)
    policy.after_step(0.2)
    decisions = run(policy, [True, True, False, True, False, False])
    assert not any(d.cut or d.force_silence for d in decisions)


def test_user_speech_while_agent_is_silent_is_not_a_barge_in():
    policy = TurnPolicy(PolicyConfig(), frame_ms=80)
    decisions = run(policy, [True] * 10, agent_rms=0.0)
    assert not any(d.cut for d in decisions)


def test_cut_agent_is_released_after_user_goes_quiet():
    cfg = PolicyConfig(barge_in_min_speech_ms=160, release_after_ms=320)
    policy = TurnPolicy(cfg, frame_ms=80)
    policy.after_step(0.2)
    decisions = run(policy, [True, True, True, False, False, False, False, False])
    forced = [d.force_silence for d in decisions]
    assert forced[1] and forced[2]  # cut at the 2nd speech frame, held while the user talks
    assert forced[3:6] == [True, True, True]  # and through 3 quiet frames (< 320 ms)
    assert forced[6] is False  # 4 quiet frames = 320 ms: the model may answer


def test_barge_in_can_be_disabled():
    policy = TurnPolicy(PolicyConfig(barge_in=False), frame_ms=80)
    policy.after_step(0.2)
    assert not any(d.cut for d in run(policy, [True] * 10))


def test_echo_guard_mutes_user_while_agent_talks_and_for_the_tail():
    cfg = PolicyConfig(echo_guard=True, echo_tail_ms=160)
    policy = TurnPolicy(cfg, frame_ms=80)
    policy.after_step(0.2)
    d = policy.before_step(True)
    assert d.mute_user and not d.cut
    policy.after_step(0.0)  # agent stops
    assert policy.before_step(True).mute_user  # tail frame 1
    policy.after_step(0.0)
    assert policy.before_step(True).mute_user  # tail frame 2 (160 ms)
    policy.after_step(0.0)
    assert not policy.before_step(True).mute_user


def test_a_requested_hold_cuts_at_once_and_forces_silence_for_its_length():
    policy = TurnPolicy(PolicyConfig(), frame_ms=80)
    policy.after_step(0.2)
    policy.request_hold(3)
    decisions = run(policy, [False] * 5)
    assert decisions[0].cut and not any(d.cut for d in decisions[1:])
    assert [d.force_silence for d in decisions] == [True, True, True, False, False]


def test_a_short_utterance_only_pauses_the_agent_and_it_goes_on():
    policy = TurnPolicy(PolicyConfig(barge_in_min_speech_ms=240, pause_before_cut_ms=400, resume_after_ms=160),
                        frame_ms=80)
    policy.after_step(0.2)
    decisions = run(policy, [True, True, True, True, False, False, False, False])  # a 320 ms "mm-hmm"
    assert [d.pause_audio for d in decisions] == [False, False, True, True, True, False, False, False]
    assert not any(d.cut or d.force_silence for d in decisions)
    assert policy.backchannels == 1 and policy.barge_ins == 0


def test_a_long_utterance_pauses_the_agent_then_cuts_it():
    policy = TurnPolicy(PolicyConfig(barge_in_min_speech_ms=240, pause_before_cut_ms=320), frame_ms=80)
    policy.after_step(0.2)
    decisions = run(policy, [True] * 10)
    # silent from the third speech frame on, as without the pause; cut (the held audio dropped) 320 ms later
    assert decisions[2].pause_audio and not decisions[1].pause_audio
    assert [i for i, d in enumerate(decisions) if d.cut] == [2 + 4]
    assert all(d.force_silence and not d.pause_audio for d in decisions[6:])
    assert policy.barge_ins == 1 and policy.backchannels == 0


def test_speech_soon_after_a_backchannel_pauses_at_once_and_adds_up_to_a_cut():
    policy = TurnPolicy(PolicyConfig(barge_in_min_speech_ms=240, pause_before_cut_ms=400, resume_after_ms=240),
                        frame_ms=80)
    policy.after_step(0.2)
    # "wait," (3 frames), a 240 ms gap (the pause ends as a backchannel), "stop, I have a question"
    decisions = run(policy, [True, True, True, False, False, False] + [True] * 6)
    assert policy.backchannels == 1
    assert decisions[6].pause_audio  # the first frame of speech again: paused at once, not after 240 ms
    # 3 speech frames before the gap + 5 after = 240 + 400 ms of the one utterance: cut
    assert [i for i, d in enumerate(decisions) if d.cut] == [10]


def test_a_user_left_waiting_is_answered_after_answer_after_ms_of_silence():
    policy = TurnPolicy(PolicyConfig(answer_after_ms=800), frame_ms=80)
    decisions = run(policy, [True] * 6 + [False] * 14, agent_rms=0.0)  # the model stays silent
    prompted = [i for i, d in enumerate(decisions) if d.speak_now]
    assert prompted[0] == 6 + 800 // 80 - 1  # the 10th quiet frame: 800 ms after the user stopped
    assert prompted == list(range(prompted[0], 20))  # and on every frame until the agent answers


def test_the_answer_prompt_ends_once_the_agent_writes_a_word_or_talks():
    policy = TurnPolicy(PolicyConfig(answer_after_ms=160), frame_ms=80)
    run(policy, [True] * 4, agent_rms=0.0)
    assert not policy.before_step(False).speak_now
    policy.after_step(0.0)
    assert policy.before_step(False).speak_now
    policy.after_step(0.0, wrote_word=True)  # the model starts its answer (audio follows its text)
    decisions = run(policy, [False] * 10, agent_rms=0.0)
    assert not any(d.speak_now for d in decisions)
    run(policy, [True] * 4, agent_rms=0.0)  # the user says something new: waiting again
    decisions = run(policy, [False] * 3, agent_rms=0.0)
    assert [d.speak_now for d in decisions] == [False, True, True]
    decisions = run(policy, [False] * 3, agent_rms=0.2)  # audible from now on: answered
    assert [d.speak_now for d in decisions] == [True, False, False]


def test_no_answer_prompt_when_off_after_a_blip_or_while_a_cut_agent_is_held():
    assert PolicyConfig().answer_after_ms == 1600  # on by default
    off = TurnPolicy(PolicyConfig(answer_after_ms=0), 80)
    assert not any(d.speak_now for d in run(off, [True] * 6 + [False] * 40, 0.0))
    policy = TurnPolicy(PolicyConfig(answer_after_ms=160), frame_ms=80)
    # blips shorter than barge_in_min_speech_ms (160 ms: two frames) are noise, not something to answer
    assert not any(d.speak_now for d in run(policy, [True, False] * 4 + [False] * 20, 0.0))
    policy = TurnPolicy(PolicyConfig(answer_after_ms=160, barge_in_min_speech_ms=240), frame_ms=80)
    assert not any(d.speak_now for d in run(policy, [True, True, False] * 3 + [False] * 20, 0.0))
    cfg = PolicyConfig(answer_after_ms=160, barge_in_min_speech_ms=160, release_after_ms=480)
    policy = TurnPolicy(cfg, frame_ms=80)
    policy.after_step(0.2)
    decisions = run(policy, [True] * 6) + run(policy, [False] * 8, agent_rms=0.0)  # cut, held for 480 ms of quiet
    assert [d.force_silence for d in decisions] == [False] + [True] * 10 + [False] * 3
    assert [d.speak_now for d in decisions] == [False] * 11 + [True] * 3  # then, silent still, it must answer


def test_answer_after_ms_out_of_range_is_refused():
    with pytest.raises(ValueError, match="answer_after_ms"):
        PolicyConfig(answer_after_ms=-1)


def test_the_agents_own_echo_after_it_stops_does_not_arm_the_answer_prompt():
    cfg = PolicyConfig(answer_after_ms=160, echo_tail_ms=240)
    policy = TurnPolicy(cfg, frame_ms=80)
    policy.after_step(0.2)  # the agent talked, and stops now
    decisions = run(policy, [True] * 3 + [False] * 10, agent_rms=0.0)  # 240 ms of its echo, then quiet
    assert not any(d.speak_now for d in decisions)
    decisions = run(policy, [True] * 3 + [False] * 3, agent_rms=0.0)  # the user, later: answered
    assert [d.speak_now for d in decisions] == [False] * 4 + [True] * 2


def test_a_one_frame_vad_blip_does_not_restart_the_wait_and_a_short_interruption_still_gets_an_answer():
    policy = TurnPolicy(PolicyConfig(answer_after_ms=480), frame_ms=80)
    decisions = run(policy, [True] * 4 + [False] * 3 + [True] + [False] * 3, agent_rms=0.0)
    assert [d.speak_now for d in decisions[4:]] == [False] * 5 + [True] * 2  # 6 frames of quiet, the blip counted
    # "wait-" over the talking agent: cut at its third frame, and the user falls silent with the cut
    policy = TurnPolicy(PolicyConfig(answer_after_ms=480, release_after_ms=320, barge_in_min_speech_ms=240), frame_ms=80)
    policy.after_step(0.2)
    decisions = run(policy, [True] * 3) + run(policy, [False] * 7, agent_rms=0.0)
    assert decisions[2].cut and [d.speak_now for d in decisions[3:]] == [False] * 5 + [True] * 2


def run_heard(policy: TurnPolicy, frames: list[tuple[bool, bool]], agent_rms: float = 0.2):
    """``run`` over ``(user_speech, user_unfinished)`` pairs."""
    return run(policy, [f[0] for f in frames], agent_rms, [f[1] for f in frames])


def test_the_agent_waits_through_a_pause_the_detector_calls_unfinished_then_may_answer():
    policy = TurnPolicy(PolicyConfig(answer_after_ms=800), frame_ms=80)
    heard = [(True, False)] * 5 + [(False, True)] * 4 + [(False, False)] * 3
    decisions = run_heard(policy, heard, agent_rms=0.0)
    assert [d.wait for d in decisions] == [False] * 5 + [True] * 4 + [False] * 3
    assert all(d.force_silence for d in decisions if d.wait)  # the slot is forced silent: no start
    assert not any(d.force_silence for d in decisions[9:])  # finished: the model may take the turn


def test_the_wait_never_outlasts_the_answer_prompt():
    policy = TurnPolicy(PolicyConfig(answer_after_ms=400), frame_ms=80)
    decisions = run_heard(policy, [(True, False)] * 5 + [(False, True)] * 8, agent_rms=0.0)
    assert [d.wait for d in decisions[5:]] == [True] * 4 + [False] * 4
    assert [d.speak_now for d in decisions[5:]] == [False] * 4 + [True] * 4  # 400 ms: it must answer now


def test_no_wait_while_the_user_talks_the_agent_talks_before_anything_was_said_or_when_off():
    policy = TurnPolicy(PolicyConfig(), frame_ms=80)
    assert not any(d.wait for d in run_heard(policy, [(False, True)] * 5, agent_rms=0.0))  # nothing said yet
    assert not any(d.wait for d in run_heard(policy, [(True, True)] * 5, agent_rms=0.0))  # the user talks
    policy.after_step(0.2)  # the agent has started: the wait does not cut it
    assert not any(d.wait or d.force_silence for d in run_heard(policy, [(False, True)] * 3, agent_rms=0.2))
    off = TurnPolicy(PolicyConfig(wait_unfinished=False), frame_ms=80)
    assert not any(d.wait for d in run_heard(off, [(True, False)] * 5 + [(False, True)] * 5, agent_rms=0.0))


def test_unfinished_below_out_of_range_is_refused():
    with pytest.raises(ValueError, match="unfinished_below"):
        PolicyConfig(unfinished_below=1.0)


def test_min_silence_holds_the_agent_until_the_user_has_been_quiet_that_long_whatever_the_detector_says():
    policy = TurnPolicy(PolicyConfig(min_silence_ms=320), frame_ms=80)
    decisions = run_heard(policy, [(True, False)] * 5 + [(False, False)] * 5, agent_rms=0.0)
    assert [d.wait and d.force_silence for d in decisions] == [False] * 5 + [True] * 3 + [False] * 2
    # a pause shorter than it, then more speech: held all through; the agent talking is never held
    policy = TurnPolicy(PolicyConfig(min_silence_ms=320), frame_ms=80)
    decisions = run_heard(policy, [(True, False)] * 3 + [(False, False)] * 2 + [(True, False)] * 3, agent_rms=0.0)
    assert [d.wait for d in decisions[3:5]] == [True, True] and not any(d.wait for d in decisions[5:])
    policy.after_step(0.2)
    assert not any(d.force_silence for d in run_heard(policy, [(False, False)] * 3, agent_rms=0.2))
    with pytest.raises(ValueError, match="min_silence_ms"):
        PolicyConfig(min_silence_ms=-1)
