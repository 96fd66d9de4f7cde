"""Is there an echo to cancel? The speaker's level against the microphone's, 10 ms at a time.

Why: WebRTC's canceller (AEC3, as livekit ships it) suppresses the microphone whenever the speaker plays,
echo or not. With a headset, or a speaker too far away to be heard, there is nothing to cancel, yet the
user's first 300-700 ms of barging in come out 30-70 dB down, and the barge-in hears them too late
(measured on the test dialogues without echo: 3 of 6 interruptions stopped within 400 ms through the
daemon's processing, against 16 of 17 with echo). AEC3's own "transparent mode" is meant for this and does
not engage in that build. So the daemon (``agent/daemon/echo.py``) and the page
(``demo/static/echo_presence.js``, a port of this file) measure it: an echo makes the microphone's loudness
follow the speaker's a fixed delay later, syllable by syllable, and speech in a room that does not hear the
speaker does not.

The measure: the Pearson correlation between the speaker's log energy ``d`` frames ago and the microphone's
log energy now (after noise suppression, so a steady noise floor does not hide a quiet echo), for every
lag ``d`` up to ``max_lag_ms``, over the frames where the speaker was audible, in an exponentially weighted
window of ``window_s`` seconds of speaker audio, leaving out the frames where the user talks over the speaker
(far louder than the fit says). Its maximum over the lags is the echo score. On the 80 synthetic test
dialogues (echo 12-30 dB below the agent, 23-111 ms late, reverberant), streamed whole: the 50 with an echo
end at 0.26-0.93 and all but one (30 dB down) never measure clear; the 30 without end at -0.07-0.28 and all
measure clear, 3.7-15.5 s in.

Decision, with hysteresis: "clear" (nothing to cancel) once ``min_audible_s`` of speaker audio has been
measured and the score is below ``clear_below``; back to "echo" as soon as it reaches ``echo_above``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class EchoPresenceConfig:
    """Attributes:
        frame_ms: the frame both energies are measured over.
        max_lag_ms: the longest speaker-to-microphone delay looked for (playback + capture + room).
        window_s: how much speaker audio the correlation remembers for saying "clear" (long: one
            double-talk stretch, uncorrelated by nature, must not make an echo look gone).
        recent_s: a second, short window that brings the echo back quickly (a headset taken off). It takes every
            frame, so the user talking over the speaker moves it too: it must say "echo" for
            ``recent_persist_s`` of speaker audio in a row before it counts.
        recent_persist_s: see ``recent_s``.
        min_audible_s: speaker audio needed before "clear" may be said.
        clear_below / echo_above: the score thresholds (hysteresis).
        double_talk_db: a microphone frame this much (or 3 residual sd) above what the long window's fit predicts
            from the speaker is the user talking over it, and stays out of that window.
        floor_db: energies are clipped here (digital silence must not dominate the correlation).
        audible_db: the speaker's frame level above which it counts as audible (-50 dBFS = RMS 0.003).
    """

    frame_ms: float = 10.0
    max_lag_ms: float = 500.0
    window_s: float = 20.0
    recent_s: float = 1.0
    recent_persist_s: float = 0.3
    min_audible_s: float = 1.5
    clear_below: float = 0.2
    echo_above: float = 0.3
    floor_db: float = -70.0
    double_talk_db: float = 10.0
    audible_db: float = -50.0


def power_db(power: float, floor_db: float = -70.0) -> float:
    """A mean square (full scale 1) in dB, clipped at ``floor_db``."""
    return max(floor_db, 10.0 * np.log10(power + 1e-12))


def frame_db(x: np.ndarray, floor_db: float = -70.0) -> float:
    """Energy of one frame ``(n,)`` in dB full scale, clipped at ``floor_db``."""
    return power_db(float(np.mean(np.square(x, dtype=np.float64))) if len(x) else 0.0, floor_db)


class EchoPresence:
    """Streaming echo score of one speaker/microphone pair. Call :meth:`update` once per microphone frame with
    the speaker's and the microphone's frame energies (dB); read :attr:`clear` and :attr:`score`."""

    def __init__(self, config: EchoPresenceConfig | None = None) -> None:
        self.config = c = config or EchoPresenceConfig()
        self.lags = int(round(c.max_lag_ms / c.frame_ms)) + 1
        # one decay per window: [long, recent]
        self._decay = np.array([1.0 - c.frame_ms / (1000.0 * w) for w in (c.window_s, c.recent_s)])[:, None]
        audible = c.min_audible_s * 1000.0 / c.frame_ms
        long_decay = float(self._decay[0, 0])
        self._min_count = (1.0 - long_decay ** audible) / (1.0 - long_decay)  # the weighted count after that many
        self.reset()

    def reset(self) -> None:
        self._ref = np.full(self.lags, self.config.floor_db)  # _ref[d]: the speaker's energy d frames ago
        self._audible = np.zeros(self.lags, bool)
        # exponentially weighted sums per window and lag: count, x, y, xx, yy, xy (x: speaker d ago, y: mic now)
        self._sums = np.zeros((6, 2, self.lags))
        self.audible_frames = 0
        self.score = 0.0  # the long window's
        self.recent_score = 0.0
        self._recent_echo = 0  # audible frames in a row with the recent window at echo_above or more
        self._fit: tuple | None = None  # the long window's best-lag fit, for telling double talk
        self.clear = False

    def update(self, speaker_db: float, mic_db: float) -> bool:
        """One frame: the speaker's energy (what was played during it) and the microphone's. Returns :attr:`clear`."""
        c = self.config
        self._ref[1:] = self._ref[:-1]
        self._audible[1:] = self._audible[:-1]
        self._ref[0] = max(c.floor_db, speaker_db)
        self._audible[0] = speaker_db >= c.audible_db
        self.audible_frames += int(self._audible[0])
        m = self._audible
        if not m.any():
            return self.clear
        x, y = self._ref[m], max(c.floor_db, mic_db)
        new = np.stack([np.ones_like(x), x, np.full_like(x, y), x * x, np.full_like(x, y * y), x * y])  # (6, audible)
        s = self._sums
        # The user talking over the speaker is far louder than the long window's fit says: leave it out of that
        # window (one backchannel would otherwise swamp a quiet echo's correlation); the recent one takes all.
        if self._double_talk(y):
            s[:, 1, m] = s[:, 1, m] * self._decay[1] + new
        else:
            s[:, :, m] = s[:, :, m] * self._decay[None] + new[:, None]
        (self.score, self._fit), (self.recent_score, _) = self._best_correlations()
        self._recent_echo = self._recent_echo + 1 if self.recent_score >= c.echo_above else 0
        echo = self.score >= c.echo_above or self._recent_echo * c.frame_ms >= 1000.0 * c.recent_persist_s
        if self.clear and echo:
            self.clear = False
            if self.score < c.clear_below:  # the setup changed (a headset taken off): the long window starts over
                s[:, 0] = 0.0
                self._fit = None
        elif (not self.clear and self.score < c.clear_below and self.recent_score < c.echo_above
              and s[0, 0].max() >= self._min_count):
            self.clear = True
        return self.clear

    def _double_talk(self, y: float) -> bool:
        if self._fit is None:
            return False
        lag, slope, mean_x, mean_y, resid_sd = self._fit
        predicted = mean_y + slope * (self._ref[lag] - mean_x)
        return y - predicted > max(self.config.double_talk_db, 3.0 * resid_sd)

    def _best_correlations(self) -> list[tuple[float, tuple | None]]:
        """Per window [long, recent]: the best lag's correlation, and its linear fit (lag, slope, mean x, mean y,
        residual sd); ``(0.0, None)`` for a window with no lag trusted yet."""
        n, sx, sy, sxx, syy, sxy = self._sums  # each (2, lags)
        ok = n >= 50  # half a second of speaker audio at that lag before it is trusted
        with np.errstate(divide="ignore", invalid="ignore"):
            cov = sxy / n - sx * sy / n ** 2
            var_x, var_y = sxx / n - (sx / n) ** 2, syy / n - (sy / n) ** 2
            # a microphone (or speaker) that never changes level follows nothing: no echo there
            r = np.where(var_x * var_y > 1e-6, cov / np.sqrt(np.maximum(var_x * var_y, 1e-12)), 0.0)
        r = np.where(ok, r, -np.inf)
        out: list[tuple[float, tuple | None]] = []
        for w in range(2):
            if not ok[w].any():
                out.append((0.0, None))
                continue
            i = int(r[w].argmax())
            slope = cov[w, i] / var_x[w, i] if var_x[w, i] > 1e-6 else 0.0
            resid_sd = float(np.sqrt(max(0.0, var_y[w, i] * (1.0 - r[w, i] ** 2))))
            out.append((float(r[w, i]), (i, float(slope), sx[w, i] / n[w, i], sy[w, i] / n[w, i], resid_sd)))
        return out
