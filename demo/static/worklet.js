// duplex-io: one AudioWorklet processor for both directions, so the microphone and the agent's
// playback share one clock (the audio render thread) and the recording stays aligned.
//
// - input 0: the microphone (echo-cancelled by the browser). Blocks of 128 samples are batched into
//   `batchMs` and posted to the page, which sends them as input_audio_buffer.append events.
// - input 1 (optional, `echoSwitch`): the same microphone without echo cancellation. EchoPresence
//   (echo_presence.js) compares its loudness with the agent's, 10 ms at a time; while no echo is measured (a
//   headset), it is what gets sent: the browser's canceller mutes the user's first few hundred ms whenever
//   the agent plays, echo or not, and a barge-in would come late. Back to input 0 at the first echo.
// - output 0: the agent. A bounded ring buffer (drop-oldest beyond `maxBufferMs`), emptied at once on
//   {type: "flush"}. Adaptive jitter cushion: playback starts `cushion` ms after audio arrives in an
//   empty buffer; the cushion starts at `prebufferMs`, grows by 10 ms each time the buffer runs dry
//   mid-response (up to 120 ms) and shrinks back by 5 ms per second without one, so it costs latency
//   only when the server or network is jittery.
// - page-side turn timing on the audio clock: the end of the user's speech (mic level, with a
//   hangover) -> the first played block of agent audio after it.
class DuplexIO extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = options.processorOptions || {};
    this.cap = Math.max(128, Math.round(((o.maxBufferMs || 2000) * sampleRate) / 1000));
    this.minCushion = Math.round(((o.prebufferMs ?? 0) * sampleRate) / 1000);
    this.cushion = this.minCushion;
    this.maxCushion = Math.round((120 * sampleRate) / 1000);
    this.armTime = null;
    this.lastStarve = -1e9;
    this.lastDecay = 0;
    this.batch = Math.max(1, Math.round(((o.batchMs || 32) * sampleRate) / 1000 / 128)) * 128;
    this.micThr = o.micThreshold || 0.02;
    this.outThr = o.outThreshold || 0.005;
    this.hang = (o.hangoverMs || 400) / 1000;
    this.ring = new Float32Array(this.cap);
    this.r = 0;
    this.size = 0;
    this.playing = false;
    this.expect = false;
    this.mic = new Float32Array(this.batch);
    this.out = new Float32Array(this.batch);
    this.n = 0;
    this.t0 = 0;
    this.micPeak = 0;
    this.outPeak = 0;
    this.stats = { played: 0, starves: 0, overflow: 0, flushed: 0, echo: o.echoSwitch ? "echo" : "off", echoScore: null,
                   clearMs: 0 };
    this.presence = o.echoSwitch ? new EchoPresence() : null;
    this.echoFrame = Math.round(sampleRate / 100);
    this.echoAcc = { mic: 0, out: 0, n: 0 };
    // turn timing
    this.micLoud = false;
    this.lastMicLoud = -1;
    this.lastOutLoud = -1;
    this.pendingEnd = null;
    this.overlapAtEnd = false;
    this.onsetAfterEnd = null;
    this.armed = null;
    this.port.onmessage = (e) => this.onMessage(e.data);
  }

  onMessage(m) {
    if (m.type === "push") this.push(m.pcm);
    else if (m.type === "flush") {
      const dropped = this.size;
      this.size = 0;
      this.r = 0;
      this.playing = false;
      this.armTime = null;
      this.stats.flushed += dropped;
      this.port.postMessage({ type: "flushed", dropped, id: m.id });
    } else if (m.type === "expect") this.expect = !!m.on;
    else if (m.type === "config") {
      if (m.prebufferMs != null) {
        this.minCushion = Math.round((m.prebufferMs * sampleRate) / 1000);
        this.cushion = Math.max(this.cushion, this.minCushion);
      }
    }
  }

  push(x) {
    let n = x.length;
    if (n >= this.cap) {
      this.stats.overflow += this.size + n - this.cap;
      x = x.subarray(n - this.cap);
      n = this.cap;
      this.size = 0;
      this.r = 0;
    }
    const excess = this.size + n - this.cap;
    if (excess > 0) {
      this.r = (this.r + excess) % this.cap;
      this.size -= excess;
      this.stats.overflow += excess;
    }
    const w = (this.r + this.size) % this.cap;
    const first = Math.min(n, this.cap - w);
    this.ring.set(x.subarray(0, first), w);
    if (n > first) this.ring.set(x.subarray(first), 0);
    this.size += n;
    if (!this.playing && this.armTime === null) this.armTime = currentTime;
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    const N = out.length;
    const t = currentTime;
    let take = 0;
    if (!this.playing && this.size > 0 &&
        (t - this.armTime >= this.cushion / sampleRate || this.size >= this.cap / 2)) {
      this.playing = true;
      this.armTime = null;
    }
    if (this.playing) {
      take = Math.min(N, this.size);
      const first = Math.min(take, this.cap - this.r);
      out.set(this.ring.subarray(this.r, this.r + first), 0);
      if (take > first) out.set(this.ring.subarray(0, take - first), first);
      this.r = (this.r + take) % this.cap;
      this.size -= take;
      if (this.size === 0) {
        this.playing = false; // build the cushion again before playing more
        if (this.expect) {
          this.stats.starves++;
          this.cushion = Math.min(this.maxCushion, this.cushion + Math.round(0.01 * sampleRate));
          this.lastStarve = t;
        }
      }
    }
    if (t - this.lastStarve > 3 && t - this.lastDecay > 1 && this.cushion > this.minCushion) {
      this.cushion = Math.max(this.minCushion, this.cushion - Math.round(0.005 * sampleRate));
      this.lastDecay = t;
    }
    this.stats.cushionMs = (this.cushion * 1000) / sampleRate;
    out.fill(0, take);
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    this.stats.played += take;

    const plain = this.presence && inputs[1] && inputs[1][0];
    if (plain) this.measureEcho(plain, out);
    const cancelled = inputs[0] && inputs[0][0];
    const input = plain && this.presence.clear ? plain : cancelled;
    let micE = 0;
    let outE = 0;
    for (let i = 0; i < N; i++) {
      const m = input ? input[i] : 0;
      micE += m * m;
      outE += out[i] * out[i];
    }
    const micRms = Math.sqrt(micE / N);
    const outRms = Math.sqrt(outE / N);
    this.micPeak = Math.max(this.micPeak, micRms);
    this.outPeak = Math.max(this.outPeak, outRms);
    this.timeTurn(t, N / sampleRate, micRms > this.micThr, outRms > this.outThr);

    if (this.n === 0) this.t0 = t;
    if (input) this.mic.set(input, this.n);
    else this.mic.fill(0, this.n, this.n + N);
    this.out.set(out, this.n);
    this.n += N;
    if (this.n >= this.batch) {
      this.port.postMessage(
        { type: "io", t: this.t0, mic: this.mic, out: this.out, micPeak: this.micPeak, outPeak: this.outPeak,
          buffered: this.size, stats: this.stats },
        [this.mic.buffer, this.out.buffer],
      );
      this.mic = new Float32Array(this.batch);
      this.out = new Float32Array(this.batch);
      this.n = 0;
      this.micPeak = 0;
      this.outPeak = 0;
    }
    return true;
  }

  // Per 10 ms: the played agent's energy and the uncancelled microphone's, in dB, into EchoPresence.
  measureEcho(mic, out) {
    const a = this.echoAcc;
    const db = (e) => Math.max(-70, 10 * Math.log10(e / this.echoFrame + 1e-12));
    for (let i = 0; i < mic.length; i++) {
      a.mic += mic[i] * mic[i];
      a.out += out[i] * out[i];
      if (++a.n === this.echoFrame) {
        this.presence.update(db(a.out), db(a.mic));
        a.mic = 0;
        a.out = 0;
        a.n = 0;
      }
    }
    this.stats.echo = this.presence.clear ? "clear" : "echo";
    this.stats.echoScore = Math.round(this.presence.score * 1000) / 1000;
    if (this.presence.clear) this.stats.clearMs += (mic.length * 1000) / sampleRate;
  }

  // End of user speech -> first agent audio played, both on the audio clock. A turn counts only if
  // the agent was silent when the user stopped (otherwise it is an overlap, reported as such).
  timeTurn(t, dt, micLoud, outLoud) {
    const onset = outLoud && t - this.lastOutLoud > 0.1;
    if (micLoud) {
      if (!this.micLoud) this.port.postMessage({ type: "mic", speaking: true, t });
      this.micLoud = true;
      this.lastMicLoud = t + dt;
      this.overlapAtEnd = t - this.lastOutLoud < 0.1 || outLoud;
      this.pendingEnd = null;
      this.onsetAfterEnd = null;
      if (this.armed !== null) {
        this.port.postMessage({ type: "turn", end: this.armed, noReply: true });
        this.armed = null;
      }
    } else {
      if (this.micLoud) {
        this.micLoud = false;
        this.pendingEnd = this.lastMicLoud;
      }
      if (this.pendingEnd !== null) {
        if (onset && this.onsetAfterEnd === null) this.onsetAfterEnd = t;
        if (t - this.pendingEnd >= this.hang) {
          const end = this.pendingEnd;
          this.pendingEnd = null;
          this.port.postMessage({ type: "mic", speaking: false, t: end });
          if (this.overlapAtEnd) this.port.postMessage({ type: "turn", end, overlap: true });
          else if (this.onsetAfterEnd !== null)
            this.port.postMessage({ type: "turn", end, latencyMs: (this.onsetAfterEnd - end) * 1000 });
          else this.armed = end;
          this.onsetAfterEnd = null;
        }
      } else if (this.armed !== null && onset) {
        this.port.postMessage({ type: "turn", end: this.armed, latencyMs: (t - this.armed) * 1000 });
        this.armed = null;
      }
    }
    if (outLoud) this.lastOutLoud = t + dt;
  }
}

registerProcessor("duplex-io", DuplexIO);
