// Is there an echo for the browser's canceller to cancel? A port of agent/daemon/echo_presence.py (read its
// docstring for why and how) for the page's AudioWorklet, with the same defaults; the page test runs both on
// the same energies and requires the same answers. Per 10 ms frame: update(speakerDb, micDb) with the played
// agent's energy and the energy of the microphone taken *without* echo cancellation; `clear` says "no echo".
class EchoPresence {
  constructor(config = {}) {
    this.c = Object.assign({
      frameMs: 10, maxLagMs: 500, windowS: 20, recentS: 1, recentPersistS: 0.3, minAudibleS: 1.5,
      clearBelow: 0.2, echoAbove: 0.3, floorDb: -70, doubleTalkDb: 10, audibleDb: -50,
    }, config);
    const c = this.c;
    this.lags = Math.round(c.maxLagMs / c.frameMs) + 1;
    this.decay = [1 - c.frameMs / (1000 * c.windowS), 1 - c.frameMs / (1000 * c.recentS)];
    const audible = (c.minAudibleS * 1000) / c.frameMs;
    this.minCount = (1 - Math.pow(this.decay[0], audible)) / (1 - this.decay[0]);
    this.reset();
  }

  reset() {
    this.ref = new Float64Array(this.lags).fill(this.c.floorDb); // ref[d]: the speaker's energy d frames ago
    this.audible = new Uint8Array(this.lags);
    // per window [long, recent]: count, x, y, xx, yy, xy per lag
    this.sums = [0, 1].map(() => Array.from({ length: 6 }, () => new Float64Array(this.lags)));
    this.audibleFrames = 0;
    this.score = 0;
    this.recentScore = 0;
    this.recentEcho = 0;
    this.fit = null;
    this.clear = false;
  }

  update(speakerDb, micDb) {
    const c = this.c;
    this.ref.copyWithin(1, 0, this.lags - 1);
    this.audible.copyWithin(1, 0, this.lags - 1);
    this.ref[0] = Math.max(c.floorDb, speakerDb);
    this.audible[0] = speakerDb >= c.audibleDb ? 1 : 0;
    this.audibleFrames += this.audible[0];
    if (!this.audible.some((a) => a)) return this.clear;
    const y = Math.max(c.floorDb, micDb);
    const windows = this.doubleTalk(y) ? [1] : [0, 1];
    for (const w of windows) {
      const s = this.sums[w];
      const k = this.decay[w];
      for (let d = 0; d < this.lags; d++) {
        if (!this.audible[d]) continue;
        const x = this.ref[d];
        s[0][d] = s[0][d] * k + 1;
        s[1][d] = s[1][d] * k + x;
        s[2][d] = s[2][d] * k + y;
        s[3][d] = s[3][d] * k + x * x;
        s[4][d] = s[4][d] * k + y * y;
        s[5][d] = s[5][d] * k + x * y;
      }
    }
    [this.score, this.fit] = this.best(0);
    this.recentScore = this.best(1)[0];
    this.recentEcho = this.recentScore >= c.echoAbove ? this.recentEcho + 1 : 0;
    const echo = this.score >= c.echoAbove || this.recentEcho * c.frameMs >= 1000 * c.recentPersistS;
    if (this.clear && echo) {
      this.clear = false;
      if (this.score < c.clearBelow) {
        this.sums[0].forEach((a) => a.fill(0));
        this.fit = null;
      }
    } else if (!this.clear && this.score < c.clearBelow && this.recentScore < c.echoAbove &&
               Math.max(...this.sums[0][0]) >= this.minCount) {
      this.clear = true;
    }
    return this.clear;
  }

  doubleTalk(y) {
    if (this.fit === null) return false;
    const [lag, slope, mx, my, residSd] = this.fit;
    return y - (my + slope * (this.ref[lag] - mx)) > Math.max(this.c.doubleTalkDb, 3 * residSd);
  }

  best(w) {
    const [n, sx, sy, sxx, syy, sxy] = this.sums[w];
    let r = -Infinity;
    let fit = null;
    for (let d = 0; d < this.lags; d++) {
      if (n[d] < 50) continue;
      const cov = sxy[d] / n[d] - (sx[d] * sy[d]) / (n[d] * n[d]);
      const vx = sxx[d] / n[d] - (sx[d] / n[d]) ** 2;
      const vy = syy[d] / n[d] - (sy[d] / n[d]) ** 2;
      const rd = vx * vy > 1e-6 ? cov / Math.sqrt(Math.max(vx * vy, 1e-12)) : 0;
      if (rd > r) {
        r = rd;
        const slope = vx > 1e-6 ? cov / vx : 0;
        fit = [d, slope, sx[d] / n[d], sy[d] / n[d], Math.sqrt(Math.max(0, vy * (1 - rd * rd)))];
      }
    }
    return fit === null ? [0, null] : [r, fit];
  }
}
