// The page's Realtime client (runs as gr.HTML js_on_load, with `element` in scope).
// Microphone -> AudioWorklet -> input_audio_buffer.append (PCM16 base64, 32 ms batches) over the
// same WebSocket protocol as every other client (docs/realtime-events.md); agent audio deltas ->
// the worklet's bounded jitter buffer, flushed at once on barge-in. CONFIG and WORKLET_SOURCE are
// filled in by demo/app.py.
const CONFIG = __DUPLEX_CONFIG__;
const WORKLET_SOURCE = __DUPLEX_WORKLET__;
const SETUP_EVENT = "page_setup"; // event_id of the page's first session.update: its error ends the start

function b64FromInt16(a) {
  const bytes = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

function float32FromB64(b64) {
  const bin = atob(b64);
  const n = bin.length >> 1;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    let v = bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8);
    if (v >= 0x8000) v -= 0x10000;
    out[i] = v / 32768;
  }
  return out;
}

function int16FromFloat32(x) {
  const out = new Int16Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const v = Math.max(-1, Math.min(1, x[i]));
    out[i] = v < 0 ? Math.round(v * 32768) : Math.round(v * 32767);
  }
  return out;
}

function percentile(values, p) {
  if (!values.length) return null;
  const s = [...values].sort((a, b) => a - b);
  const k = (s.length - 1) * p;
  const lo = Math.floor(k);
  const hi = Math.ceil(k);
  return s[lo] + (s[hi] - s[lo]) * (k - lo);
}

const fmt = (v, d = 0) => (v == null || Number.isNaN(v) ? "–" : v.toFixed(d));

class DuplexPage {
  constructor(root) {
    this.root = root;
    this.$ = (sel) => root.querySelector(sel);
    this.settings = {
      model: CONFIG.model,
      adapter: null,
      sampling: { ...CONFIG.sampling },
      prebufferMs: CONFIG.prebufferMs,
      headphones: false,
    };
    this.state = "idle";
    this.steps = [];
    this.turns = [];
    this.serverTurns = [];
    this.counts = { latency: 0, frames: 0, responses: 0, bargeIns: 0, errors: 0, transcriptChars: 0, speech: 0 };
    this.rec = { mic: [], out: [], samples: 0, full: false };
    this.outPeak = 0;
    this.$(".dx-start").addEventListener("click", () => (this.state === "live" || this.state === "connecting" ? this.stop() : this.start()));
    this.$(".dx-download").addEventListener("click", () => this.download());
    this.render();
  }

  set(update) {
    if (update.sampling) {
      Object.assign(this.settings.sampling, update.sampling);
      this.send({ type: "session.update", session: { x_duplex: { sampling: update.sampling } } });
    }
    if (update.prebufferMs != null) {
      this.settings.prebufferMs = update.prebufferMs;
      if (this.node) this.node.port.postMessage({ type: "config", prebufferMs: update.prebufferMs });
    }
    for (const key of ["model", "adapter", "headphones"]) {
      if (key in update && update[key] !== this.settings[key]) {
        this.settings[key] = update[key];
        if (this.state === "live") this.status(`${key} changes apply when you start again`);
      }
    }
  }

  status(text) {
    this.$(".dx-status").textContent = text;
  }

  setState(s) {
    this.state = s;
    this.root.dataset.state = s;
    this.$(".dx-start").textContent = s === "live" || s === "connecting" ? "Stop" : "Start talking";
    this.root.classList.toggle("dx-live", s === "live");
  }

  async start() {
    this.setState("connecting");
    this.status("starting audio…");
    try {
      this.ctx = new AudioContext({ sampleRate: CONFIG.rate, latencyHint: "interactive" });
      const url = URL.createObjectURL(new Blob([WORKLET_SOURCE], { type: "application/javascript" }));
      await this.ctx.audioWorklet.addModule(url);
      const mic = (echoCancellation) => navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation, noiseSuppression: true, autoGainControl: false, channelCount: 1 },
      });
      // With headphones nothing echoes: the browser's canceller would only mute the user's barge-in.
      this.stream = await mic(!this.settings.headphones);
      // Without the box ticked, the same microphone uncancelled too: the worklet sends it while it measures
      // no echo (worklet.js). A browser that cannot open both keeps the cancelled one throughout.
      this.plainStream = null;
      if (!this.settings.headphones) {
        try {
          this.plainStream = await mic(false);
        } catch (e) {
          console.warn("no second, uncancelled microphone stream; the echo-cancelled one is used throughout", e);
        }
        // A browser with one processing setting per device may give both streams the same one: then the
        // switch has nothing to switch to (both cancelled), or worse, the first stream lost its canceller.
        const ec = (st) => st.getAudioTracks()[0].getSettings().echoCancellation;
        if (this.plainStream && (ec(this.plainStream) !== false || ec(this.stream) === false)) {
          console.warn("this browser cannot keep a cancelled and an uncancelled microphone at once; using the cancelled one");
          this.plainStream.getTracks().forEach((t) => t.stop());
          this.plainStream = null;
          if (ec(this.stream) === false) {
            this.stream.getTracks().forEach((t) => t.stop());
            this.stream = await mic(true);
          }
        }
      }
    } catch (e) {
      this.fail(`Cannot use the microphone or audio output: ${e.message || e}`);
      return;
    }
    const rate = this.ctx.sampleRate;
    this.rate = rate;
    const src = this.ctx.createMediaStreamSource(this.stream);
    this.node = new AudioWorkletNode(this.ctx, "duplex-io", {
      numberOfInputs: 2, numberOfOutputs: 1, outputChannelCount: [1],
      processorOptions: { prebufferMs: this.settings.prebufferMs, maxBufferMs: CONFIG.maxBufferMs, batchMs: CONFIG.batchMs,
                          echoSwitch: !!this.plainStream },
    });
    if (this.plainStream) this.ctx.createMediaStreamSource(this.plainStream).connect(this.node, 0, 1);
    this.analyser = this.ctx.createAnalyser();
    this.analyser.fftSize = 2048;
    this.levelBuf = new Float32Array(this.analyser.fftSize);
    src.connect(this.node, 0, 0);
    this.node.connect(this.analyser);
    this.analyser.connect(this.ctx.destination);
    this.node.port.onmessage = (e) => this.onWorklet(e.data);
    await this.ctx.resume();
    this.rec = { mic: [], out: [], samples: 0, full: false };
    this.levelTimer = setInterval(() => this.meter(), 50);

    const q = new URLSearchParams({ model: this.settings.model });
    const token = new URLSearchParams(location.search).get("token");
    if (token) q.set("token", token);
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    this.status("connecting…");
    this.ws = new WebSocket(`${proto}//${location.host}${CONFIG.wsPath}?${q}`);
    this.ws.onmessage = (m) => {
      try {
        this.onEvent(JSON.parse(m.data));
      } catch (e) {
        console.error("duplex: bad server event", e);
      }
    };
    this.ws.onclose = (e) => {
      if (this.state !== "idle") this.fail(`Disconnected (${e.code}${e.reason ? ": " + e.reason : ""}).`, false);
    };
  }

  stop() {
    this.ready = false;
    this.current = null;
    this.flushes = new Map();
    this.setState("idle");
    this.status("stopped");
    if (this.ws) this.ws.close(1000);
    this.ws = null;
    for (const st of [this.stream, this.plainStream]) if (st) st.getTracks().forEach((t) => t.stop());
    if (this.ctx) this.ctx.close();
    this.ctx = this.node = null;
    clearInterval(this.levelTimer);
    this.light(".dx-user", false);
    this.light(".dx-agent", false);
    this.render();
  }

  fail(text, isError = true) {
    const rec = this.rec;
    this.stop();
    this.rec = rec;
    this.setState(isError ? "error" : "closed");
    this.status(text);
  }

  send(event) {
    if (this.ws && this.ws.readyState === 1) this.ws.send(JSON.stringify(event));
  }

  // ---- audio from the worklet --------------------------------------------------------------
  onWorklet(m) {
    if (m.type === "io") {
      if (this.ready) this.send({ type: "input_audio_buffer.append", audio: b64FromInt16(int16FromFloat32(m.mic)) });
      this.record(m.mic, m.out);
      this.micPeak = m.micPeak;
      this.buffered = m.buffered;
      this.wstats = m.stats;
      this.outPeak = Math.max(this.outPeak, m.outPeak);
      this.root.dataset.agentSamplesPlayed = m.stats.played;
      this.root.dataset.starves = m.stats.starves;
      this.root.dataset.cushionMs = m.stats.cushionMs;
      this.root.dataset.echo = m.stats.echo;
      this.root.dataset.echoClearMs = Math.round(m.stats.clearMs);
    } else if (m.type === "turn") {
      if (m.latencyMs != null) {
        this.turns.push(m.latencyMs);
        this.root.dataset.turnLatencies = JSON.stringify(this.turns.map((v) => Math.round(v * 10) / 10));
      } else {
        this.root.dataset.turnsSkipped = (+(this.root.dataset.turnsSkipped || 0) + 1).toString();
      }
      this.render();
    } else if (m.type === "flushed") {
      const r = this.flushes && this.flushes.get(m.id);
      if (this.flushes) this.flushes.delete(m.id);
      if (r && r.item) {
        const heard = Math.max(0, r.pushed - m.dropped);
        this.send({ type: "conversation.item.truncate", item_id: r.item, content_index: 0,
                    audio_end_ms: Math.floor((heard * 1000) / this.rate) });
      }
    }
  }

  record(mic, out) {
    const r = this.rec;
    if (r.full) return;
    if (r.samples + mic.length > CONFIG.maxRecordSeconds * this.rate) {
      r.full = true;
      this.status(`recording stopped after ${CONFIG.maxRecordSeconds} s (the conversation goes on)`);
      return;
    }
    r.mic.push(int16FromFloat32(mic));
    r.out.push(int16FromFloat32(out));
    r.samples += mic.length;
  }

  meter() {
    if (!this.analyser) return;
    this.analyser.getFloatTimeDomainData(this.levelBuf);
    let e = 0;
    for (const v of this.levelBuf) e += v * v;
    const level = Math.sqrt(e / this.levelBuf.length);
    this.root.dataset.outputLevel = level.toFixed(4);
    const peak = Math.max(+(this.root.dataset.outputPeak || 0), level);
    this.root.dataset.outputPeak = peak.toFixed(4);
    this.light(".dx-agent", level > 0.005);
    this.$(".dx-agent-meter").value = Math.min(1, level * 4);
    this.$(".dx-mic-meter").value = Math.min(1, (this.micPeak || 0) * 4);
  }

  light(sel, on) {
    this.$(sel).classList.toggle("dx-on", !!on);
  }

  // ---- server events -----------------------------------------------------------------------
  onEvent(e) {
    switch (e.type) {
      case "session.created": {
        const s = this.settings;
        const x = { sampling: s.sampling };
        if (s.adapter) x.adapter = s.adapter;
        this.send({ type: "session.update", event_id: SETUP_EVENT, session: {
          audio: { input: { format: { type: "audio/pcm", rate: this.rate } },
                   output: { format: { type: "audio/pcm", rate: this.rate } } },
          x_duplex: x } });
        break;
      }
      case "session.updated": {
        const x = e.session.x_duplex || {};
        if (!this.ready) {
          this.ready = true;
          this.frameMs = x.frame_ms;
          this.setState("live");
          this.status(`live · ${e.session.model} · ${x.codec} ${x.frame_ms} ms frames · talk any time`);
        }
        break;
      }
      case "response.created":
        this.counts.responses++;
        this.root.dataset.responses = this.counts.responses;
        this.current = { id: e.response.id, item: null, pushed: 0, bubble: this.bubble("agent", "") };
        if (this.node) this.node.port.postMessage({ type: "expect", on: true });
        break;
      case "response.output_audio.delta": {
        const pcm = float32FromB64(e.delta);
        if (this.current && this.current.id === e.response_id) {
          this.current.item = e.item_id;
          this.current.pushed += pcm.length;
        }
        if (this.node) this.node.port.postMessage({ type: "push", pcm }, [pcm.buffer]);
        break;
      }
      case "response.output_audio_transcript.delta":
        if (this.current && this.current.id === e.response_id) {
          this.current.bubble.querySelector(".dx-text").textContent += e.delta;
          this.counts.transcriptChars += e.delta.length;
          this.root.dataset.transcriptChars = this.counts.transcriptChars;
          this.scroll();
        }
        break;
      case "x_duplex.barge_in":
        this.counts.bargeIns++;
        this.root.dataset.bargeIns = this.counts.bargeIns;
        this.flush();
        break;
      case "response.done": {
        const r = e.response;
        if (r.status === "cancelled") {
          this.flush();
          if (this.current && this.current.id === r.id) this.current.bubble.classList.add("dx-cut");
        }
        if (this.current && this.current.id === r.id) {
          if (!this.current.bubble.querySelector(".dx-text").textContent) this.current.bubble.querySelector(".dx-text").textContent = "(sound)";
          this.current = null;
        }
        if (this.node) this.node.port.postMessage({ type: "expect", on: false });
        break;
      }
      case "input_audio_buffer.speech_started":
        this.counts.speech++;
        this.root.dataset.speechEvents = this.counts.speech;
        this.light(".dx-user", true);
        this.userBubble = this.bubble("user", "speaking…");
        this.userStart = e.audio_start_ms;
        // a heard-text model writes down what it hears: keep the bubble findable by its item
        this.userBubbles = this.userBubbles || new Map();
        this.userBubbles.set(e.item_id, this.userBubble);
        while (this.userBubbles.size > 50) this.userBubbles.delete(this.userBubbles.keys().next().value);
        break;
      case "input_audio_buffer.speech_stopped":
        this.light(".dx-user", false);
        if (this.userBubble) {
          const secs = (e.audio_end_ms - this.userStart) / 1000;
          if (!this.userBubble.dataset.heard) this.userBubble.querySelector(".dx-text").textContent = `(you spoke ${secs.toFixed(1)} s)`;
          this.userBubble = null;
        }
        break;
      case "conversation.item.input_audio_transcription.delta": {
        const b = this.userBubbles && this.userBubbles.get(e.item_id);
        if (b && typeof e.delta === "string") {
          const text = b.querySelector(".dx-text");
          text.textContent = b.dataset.heard ? text.textContent + e.delta : e.delta.trimStart();
          b.dataset.heard = "1";
          this.scroll();
        }
        break;
      }
      case "x_duplex.latency":
        this.counts.latency++;
        this.root.dataset.latencyEvents = this.counts.latency;
        this.steps.push(e.step_ms);
        if (this.steps.length > 250) this.steps.shift();
        this.late = e.marks.late_by_ms;
        this.underruns = e.marks.user_underruns;
        this.dropped = e.marks.dropped_frames;
        if (e.marks.turn_latency_ms != null) this.serverTurns.push(e.marks.turn_latency_ms);
        if (this.counts.latency % 5 === 0) this.render();
        break;
      case "x_duplex.frame":
        this.counts.frames++;
        this.root.dataset.frames = this.counts.frames;
        break;
      case "error":
        this.counts.errors++;
        this.root.dataset.errors = this.counts.errors;
        // The page's own setup was refused (say, an adapter the server cannot load): stop rather than
        // hold the microphone in "connecting" for ever.
        if (!this.ready && e.error.event_id === SETUP_EVENT) this.fail(`server: ${e.error.code}: ${e.error.message}`);
        else this.status(`server: ${e.error.code}: ${e.error.message}`);
        break;
    }
  }

  // Drop the agent audio still queued in the worklet (the agent was cut off); once the worklet says
  // how much it dropped, tell the server how much of the item was heard.
  flush() {
    if (!this.node) return;
    const r = this.current;
    if (r && r.flushed) return; // barge_in and the response.done that follows: flush once
    if (r) r.flushed = true;
    const id = (this.flushSeq = (this.flushSeq || 0) + 1);
    this.flushes = this.flushes || new Map();
    this.flushes.set(id, r ? { item: r.item, pushed: r.pushed } : { item: null });
    this.node.port.postMessage({ type: "flush", id });
  }

  bubble(who, text) {
    const div = document.createElement("div");
    div.className = `dx-bubble dx-${who}-bubble`;
    const label = document.createElement("span");
    label.className = "dx-who";
    label.textContent = who === "agent" ? "Agent" : "You";
    const body = document.createElement("span");
    body.className = "dx-text";
    body.textContent = text;
    div.append(label, body);
    const list = this.$(".dx-transcript");
    list.append(div);
    while (list.children.length > 200) list.firstChild.remove();
    this.scroll();
    return div;
  }

  scroll() {
    const list = this.$(".dx-transcript");
    list.scrollTop = list.scrollHeight;
  }

  // ---- latency panel -----------------------------------------------------------------------
  render() {
    const set = (sel, v) => (this.$(sel).textContent = v);
    const t = this.turns;
    set(".dx-turn-last", t.length ? `${fmt(t[t.length - 1])} ms` : "–");
    set(".dx-turn-stats", t.length ? `median ${fmt(percentile(t, 0.5))} · p95 ${fmt(percentile(t, 0.95))} · ${t.length} turns` : "no turn measured yet");
    const st = this.serverTurns;
    set(".dx-server-turn", st.length ? `${fmt(st[st.length - 1])} ms (median ${fmt(percentile(st, 0.5))})` : "–");
    const s = this.steps;
    const budget = this.frameMs || 80;
    set(".dx-step", s.length ? `${fmt(s[s.length - 1], 1)} ms · p50 ${fmt(percentile(s, 0.5), 1)} · p95 ${fmt(percentile(s, 0.95), 1)} of ${budget} ms` : "–");
    const w = this.wstats;
    set(".dx-buffer", w ? `${fmt((this.buffered * 1000) / this.rate)} ms queued · cushion ${fmt(w.cushionMs)} ms · ${w.starves} starves` : "–");
    const canceller = !w ? "" : { off: this.settings.headphones ? " · echo canceller off (headphones)" : "",
      echo: " · echo canceller on", clear: " · no echo measured: canceller bypassed" }[w.echo];
    set(".dx-input", this.underruns != null ? `${this.underruns} late mic frames · ${this.dropped} dropped · clock late ${fmt(this.late, 1)} ms${canceller}` : "–");
    this.$(".dx-download").disabled = !this.rec.samples;
    this.plot(budget);
  }

  plot(budget) {
    const c = this.$(".dx-steps");
    const g = c.getContext("2d");
    const W = c.width;
    const H = c.height;
    g.clearRect(0, 0, W, H);
    const top = Math.max(budget * 1.25, ...this.steps);
    const y = (v) => H - (v / top) * H;
    g.strokeStyle = "#d33";
    g.setLineDash([4, 3]);
    g.beginPath();
    g.moveTo(0, y(budget));
    g.lineTo(W, y(budget));
    g.stroke();
    g.setLineDash([]);
    g.strokeStyle = "#2a6";
    g.beginPath();
    this.steps.forEach((v, i) => {
      const x = (i / 249) * W;
      if (i === 0) g.moveTo(x, y(v));
      else g.lineTo(x, y(v));
    });
    g.stroke();
  }

  // ---- download ----------------------------------------------------------------------------
  wavBlob() {
    const r = this.rec;
    const n = r.samples;
    const buf = new ArrayBuffer(44 + n * 4);
    const v = new DataView(buf);
    const str = (o, s) => [...s].forEach((ch, i) => v.setUint8(o + i, ch.charCodeAt(0)));
    str(0, "RIFF");
    v.setUint32(4, 36 + n * 4, true);
    str(8, "WAVE");
    str(12, "fmt ");
    v.setUint32(16, 16, true);
    v.setUint16(20, 1, true);
    v.setUint16(22, 2, true);
    v.setUint32(24, this.rate, true);
    v.setUint32(28, this.rate * 4, true);
    v.setUint16(32, 4, true);
    v.setUint16(34, 16, true);
    str(36, "data");
    v.setUint32(40, n * 4, true);
    const pcm = new Int16Array(buf, 44);
    let k = 0;
    for (let c = 0; c < r.mic.length; c++) {
      const L = r.mic[c];
      const R = r.out[c];
      for (let i = 0; i < L.length; i++) {
        pcm[k++] = L[i];
        pcm[k++] = R[i];
      }
    }
    return new Blob([buf], { type: "audio/wav" });
  }

  download() {
    if (!this.rec.samples) return;
    const a = document.createElement("a");
    a.href = URL.createObjectURL(this.wavBlob());
    a.download = `duplex-conversation-${new Date().toISOString().replace(/[:.]/g, "-")}.wav`;
    document.body.append(a);
    a.click();
    setTimeout(() => {
      URL.revokeObjectURL(a.href);
      a.remove();
    }, 1000);
  }
}

const dxRoot = element.querySelector(".dx-root");
if (dxRoot && !dxRoot.dataset.bound) {
  dxRoot.dataset.bound = "1";
  window.duplexPage = new DuplexPage(dxRoot);
}
