"""Causal pitch and loudness per hop, relative to the speaker: the turn detector's voice-independent front end.

Why it exists: a finished request ends on a final fall; a speaker who holds the floor stops on a level or
rising pitch. On real recordings (``docs/diagnostics/real_speech_turns.py``) the last voiced 50 ms before a
mid-sentence pause sit a median +3.7 semitones above the speaker's median pitch, and before a finished
utterance -4.1. A log-mel detector trained on synthetic voices learned their spectra instead, and heard every
real pause as finished (AUC 0.53). These features carry only the pitch and loudness contour, each relative to
the speaker so far, so a voice's timbre, level and channel cannot be the cue.

Per 10 ms hop (a window of ``win`` samples ending at the hop's end, as :func:`causal_log_mel` frames it):

0. pitch in semitones above the speaker's running mean pitch, / 12 (0 where unvoiced)
1. periodicity: the normalised autocorrelation at the best lag in 60-400 Hz (0..1)
2. voiced: 1 where periodicity >= ``VOICED`` and the hop is not silent
3. loudness in dB relative to the speaker's running mean over voiced hops, / 20, floored at -3 (-60 dB)

Pitch is the first autocorrelation peak near the highest (so not a multiple of the period), parabolically
interpolated, computed by FFT for a whole batch of hops. It
is written here rather than taken from a library because it must run inside the detector's torch module,
stream with explicit state, and give training exactly what a session computes; the pitch trackers at hand
(Praat's, librosa's YIN, torchaudio's) take whole signals. The running means start from a prior (``PRIOR_*``,
worth ``PRIOR_HOPS`` voiced hops), so the first syllables of a session are judged against a typical voice.
"""
from __future__ import annotations

import math

FEATURES = 4
VOICED = 0.6            # periodicity at or above which a hop is voiced (agrees with Praat on 85 % of real hops)
SILENT_DB = -55.0       # a hop quieter than this (dBFS RMS) is never voiced
FMIN, FMAX = 60.0, 400.0
OCTAVE_TOLERANCE = 0.9   # a shorter lag within this share of the highest peak wins (no octave-down errors)
PRIOR_ST = 5.0          # semitones above 100 Hz (~133 Hz): between a typical male and female voice
PRIOR_DB = -26.0
PRIOR_HOPS = 8.0        # the pitch prior's weight; the loudness prior weighs one hop (a level is no cue)


def zero_state(batch: int, win: int, hop: int, like):
    """State for a new stream: the samples before the first hop (silence) and the running sums."""
    torch = _torch()
    sums = torch.tensor([PRIOR_ST * PRIOR_HOPS, PRIOR_HOPS, PRIOR_DB, 1.0], dtype=like.dtype, device=like.device)
    return {"ctx": like.new_zeros(batch, win - hop), "sums": sums.expand(batch, 4).clone()}


def causal_prosody(pcm, state, rate: int, win: int, hop: int):
    """PCM ``(B, n*hop)`` at ``rate`` -> features ``(B, n, FEATURES)`` and the next state; chunked calls give
    what one call gives."""
    torch = _torch()
    if state is None:
        state = zero_state(pcm.shape[0], win, hop, pcm)
    x = torch.cat([state["ctx"], pcm], dim=-1)
    frames = x.unfold(-1, win, hop)                                    # (B, n, win)
    frames = frames - frames.mean(dim=-1, keepdim=True)
    spec = torch.fft.rfft(frames, n=2 * win)
    ac = torch.fft.irfft(spec.real ** 2 + spec.imag ** 2, n=2 * win)[..., :win]
    lo, hi = max(2, int(rate / FMAX)), min(win - 2, int(math.ceil(rate / FMIN)))
    lags = torch.arange(win, device=pcm.device, dtype=pcm.dtype)
    nccf = ac / (ac[..., :1] + 1e-9) * (win / (win - lags)).clamp(max=4.0)  # undo the overlap's shrinking
    band = nccf[..., lo:hi + 1]
    # the shortest lag that peaks within OCTAVE_TOLERANCE of the highest: a period's multiples peak as high
    local = torch.zeros_like(band, dtype=torch.bool)  # interior peaks only: a band edge is no period
    local[..., 1:-1] = (band[..., 1:-1] >= band[..., :-2]) & (band[..., 1:-1] >= band[..., 2:])
    peaks = torch.where(local, band, torch.zeros_like(band))
    ok = local & (peaks >= OCTAVE_TOLERANCE * peaks.amax(dim=-1, keepdim=True))
    best = ok.to(torch.uint8).argmax(dim=-1, keepdim=True)             # (B, n, 1): the first such lag
    k = (best + lo).clamp(lo + 1, hi - 1)
    y0, y1, y2 = (nccf.gather(-1, k + d).squeeze(-1) for d in (-1, 0, 1))
    den = y0 - 2 * y1 + y2
    delta = torch.where(den.abs() > 1e-9, 0.5 * (y0 - y2) / den, torch.zeros_like(den)).clamp(-0.5, 0.5)
    period = k.squeeze(-1).to(pcm.dtype) + delta
    periodicity = peaks.gather(-1, best).squeeze(-1).clamp(0.0, 1.0)  # 0 where no peak
    db = 10.0 * torch.log10(frames.pow(2).mean(dim=-1) + 1e-10)
    voiced = ((periodicity >= VOICED) & (db > SILENT_DB)).to(pcm.dtype)
    st = 12.0 * torch.log2(rate / period / 100.0)
    # running means over voiced hops, this hop included
    sums = state["sums"]
    n_voiced = torch.cumsum(voiced, dim=-1)
    cum = [sums[:, 0:1] + torch.cumsum(voiced * st, dim=-1), sums[:, 1:2] + n_voiced,
           sums[:, 2:3] + torch.cumsum(voiced * db, dim=-1), sums[:, 3:4] + n_voiced]
    rel_st = voiced * (st - cum[0] / cum[1]) / 12.0
    rel_db = ((db - cum[2] / cum[3]) / 20.0).clamp(min=-3.0)
    feats = torch.stack([rel_st, periodicity, voiced, rel_db], dim=-1)
    new = {"ctx": x[:, -(win - hop):], "sums": torch.stack([c[:, -1] for c in cum], dim=-1)}
    return feats, new


def _torch():
    import torch

    return torch
