"""The echo score (``agent/daemon/echo_presence.py``) on frame energies: a speaker that talks in syllables and
pauses, a microphone that hears it (an echo some frames later, far quieter) or does not (a headset), and a
user who talks over it."""
from __future__ import annotations

import numpy as np

from agent.daemon.echo_presence import EchoPresence, EchoPresenceConfig

FRAME_S = 0.01


def talk(seconds: float, seed: int, level_db: float = -20.0) -> np.ndarray:
    """Frame energies (dB) of speech-like audio: 80-250 ms syllables (a rise and fall, and 10 ms frames that
    differ by a few dB, as phones do), short gaps, and a pause of 0.4-1.2 s after every few syllables."""
    rng = np.random.default_rng(seed)
    out: list[float] = []
    n = int(seconds / FRAME_S)
    while len(out) < n:
        for _ in range(rng.integers(3, 8)):
            k = int(rng.integers(8, 25))
            shape = 12.0 * np.sin(np.linspace(0.15, np.pi - 0.15, k)) - 12.0
            out += list(level_db + rng.normal(0, 4) + shape + rng.normal(0, 3, k))
            out += [-90.0] * int(rng.integers(2, 8))
        out += [-90.0] * int(rng.integers(40, 120))
    return np.asarray(out[:n])


def power_sum(*dbs: np.ndarray) -> np.ndarray:
    return 10.0 * np.log10(sum(np.power(10.0, d / 10.0) for d in dbs))


def echo_of(speaker: np.ndarray, delay_frames: int, gain_db: float) -> np.ndarray:
    return np.concatenate([np.full(delay_frames, -90.0), speaker[:-delay_frames]]) + gain_db


def run(presence: EchoPresence, speaker: np.ndarray, mic: np.ndarray) -> list[bool]:
    return [presence.update(float(s), float(m)) for s, m in zip(speaker, mic)]


NOISE = np.full(3000, -60.0)


def test_an_echo_that_follows_the_speaker_is_never_called_clear():
    speaker = talk(30, 0)
    mic = power_sum(echo_of(speaker, 7, -25.0), NOISE[:1] + np.random.default_rng(1).normal(0, 1, len(speaker)))
    p = EchoPresence()
    assert not any(run(p, speaker, mic))
    assert p.score > 0.5


def test_a_microphone_that_does_not_hear_the_speaker_is_clear_after_enough_speaker_audio():
    speaker, user = talk(30, 2), talk(30, 3, level_db=-25.0)
    mic = power_sum(user, -60.0 + np.random.default_rng(4).normal(0, 1, len(speaker)))
    p = EchoPresence()
    states = run(p, speaker, mic)
    first = states.index(True)
    audible_before = int(np.sum(speaker[:first] >= p.config.audible_db))
    assert audible_before * FRAME_S >= p.config.min_audible_s  # not before the evidence is in
    assert first * FRAME_S < 15.0
    assert states[-1] and p.score < p.config.clear_below


def test_the_user_talking_over_an_echo_does_not_make_it_look_gone():
    speaker = talk(40, 5)
    user = np.full(len(speaker), -90.0)
    for start in range(300, len(speaker) - 80, 300):  # a 0.6 s "yeah, right" every 3 s, loud
        user[start:start + 60] = -15.0
    mic = power_sum(echo_of(speaker, 5, -28.0), user, np.full(len(speaker), -65.0))
    p = EchoPresence()
    assert not any(run(p, speaker, mic))


def test_an_echo_that_appears_turns_the_bypass_off_within_a_second_of_speaker_audio():
    speaker = talk(30, 6)
    half = len(speaker) // 2
    noise = -60.0 + np.random.default_rng(7).normal(0, 1, len(speaker))
    echo = echo_of(speaker, 9, -20.0)
    echo[:half] = -90.0  # a headset for the first 15 s, then the speaker
    p = EchoPresence()
    states = run(p, speaker, power_sum(echo, noise))
    assert states[half - 1], "no echo for 15 s should have been measured as clear"
    back = states.index(False, half)
    audible = int(np.sum(speaker[half:back] >= p.config.audible_db))
    assert audible * FRAME_S <= 1.0, f"took {audible * FRAME_S:.2f} s of speaker audio to hear the echo"


def test_the_user_barging_in_over_a_headset_keeps_the_bypass():
    speaker, user = talk(20, 8), talk(20, 9, level_db=-18.0)
    user[:1200] = -90.0  # the user first speaks at 12 s, over the agent
    noise = -60.0 + np.random.default_rng(10).normal(0, 1, len(speaker))
    speaker[1200:1260] = -20.0  # the agent is talking when the user starts
    p = EchoPresence()
    states = run(p, speaker, power_sum(user, noise))
    assert states[1199]
    assert all(states[1200:1260]), "the user's own speech over the agent turned the canceller back on"


def test_a_speaker_that_never_plays_is_no_evidence():
    p = EchoPresence()
    user = talk(20, 11)
    assert not any(run(p, np.full(len(user), -90.0), user))


def test_thresholds_come_from_the_config():
    p = EchoPresence(EchoPresenceConfig(min_audible_s=10.0))
    speaker, user = talk(12, 12), talk(12, 13, level_db=-25.0)
    # 12 s of talk holds well under 10 s of audible speaker: never enough evidence
    assert not any(run(p, speaker, power_sum(user, np.full(len(user), -60.0))))
