from agent.latency import FrameMark, LatencyRecorder


def _mark(frame: int, user_speech: bool, agent_rms: float) -> FrameMark:
    return FrameMark(frame=frame, listen_ms=1.0, think_ms=2.0, speak_ms=1.0, total_ms=4.0, late_by_ms=0.0,
                     forced=False, rebased=False, text_id=0, agent_rms=agent_rms, user_speech=user_speech)


def _turns(recorder: LatencyRecorder, n: int) -> None:
    frame = 0
    for _ in range(n):  # user speaks, one silent frame, the agent answers
        for speech, rms in ((True, 0.0), (False, 0.0), (False, 0.5)):
            recorder.add(_mark(frame, speech, rms))
            frame += 1


def test_live_session_memory_stays_bounded_over_many_turns_while_counts_cover_all():
    recorder = LatencyRecorder(80.0, keep_frames=100)
    _turns(recorder, LatencyRecorder.EVENT_WINDOW + 500)
    for i in range(LatencyRecorder.EVENT_WINDOW + 7):
        recorder.add_barge_in(i)
    summary = recorder.summary()
    assert summary["turns_measured"] == LatencyRecorder.EVENT_WINDOW + 500
    assert len(recorder.turn_latencies_ms) == LatencyRecorder.EVENT_WINDOW
    assert summary["turn_latency_ms"]["p50"] == 84.0  # one 80 ms frame + that frame's 4 ms compute
    assert summary["barge_ins"] == LatencyRecorder.EVENT_WINDOW + 7
    assert len(summary["barge_in_frames"]) == LatencyRecorder.EVENT_WINDOW
    assert summary["barge_in_frames"][-1] == LatencyRecorder.EVENT_WINDOW + 6
    assert len(recorder.frames) == 100


def test_chat_report_keeps_every_turn():
    recorder = LatencyRecorder(80.0)
    _turns(recorder, LatencyRecorder.EVENT_WINDOW + 5)
    assert len(recorder.summary()["turn_latencies_ms"]) == LatencyRecorder.EVENT_WINDOW + 5
