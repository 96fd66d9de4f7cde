"""``duplex demo``: the web page. Press Start, talk, hear the agent answer, interrupt it.

One FastAPI app serves both the page (Gradio 6 Blocks mounted at ``/``) and the Realtime WebSocket
(``/v1/realtime``, :mod:`agent.server`); the page is just another client of that protocol. The live
audio path never goes through Gradio's own streaming components (their HLS output adds seconds):
a ``gr.HTML`` hosts an AudioWorklet client (``demo/static/client.js`` + ``worklet.js``) that captures
the microphone with the browser's echo cancellation on (and off, to send that while no echo is measured:
``echo_presence.js``), sends 32 ms PCM16 batches, and plays the
agent's audio through a bounded jitter buffer that is flushed at once when the agent is cut off.

Gradio components choose the model/adapter and the sampling; their change events run in the browser
only (``fn=None``) and reach the client through ``window.duplexPage.set(...)``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from agent.models import EMBEDDED_DEFAULT
from agent.server import REALTIME_PATH, RealtimeServer, create_app

STATIC = Path(__file__).parent / "static"

PAGE_HTML = """
<div class="dx-root" data-state="idle" data-output-level="0" data-output-peak="0" data-latency-events="0"
     data-frames="0" data-transcript-chars="0" data-turn-latencies="[]">
  <div class="dx-bar">
    <button class="dx-start">Start talking</button>
    <span class="dx-ind dx-user" title="you are speaking (server VAD)">● You</span>
    <meter class="dx-mic-meter" min="0" max="1" value="0"></meter>
    <span class="dx-ind dx-agent" title="agent audio is playing">● Agent</span>
    <meter class="dx-agent-meter" min="0" max="1" value="0"></meter>
    <button class="dx-download" disabled>Download conversation (WAV)</button>
  </div>
  <div class="dx-status">Press “Start talking” and allow the microphone. Headphones help; the page drops the browser's echo cancellation while it hears no echo of the agent.</div>
  <div class="dx-main">
    <div class="dx-transcript" aria-live="polite"></div>
    <div class="dx-latency">
      <div class="dx-h">Latency</div>
      <div class="dx-row"><span>End of your speech → agent audio</span><b class="dx-turn-last">–</b></div>
      <div class="dx-sub dx-turn-stats">no turn measured yet</div>
      <div class="dx-row"><span>Server turn latency</span><b class="dx-server-turn">–</b></div>
      <div class="dx-row"><span>Step per frame</span><b class="dx-step">–</b></div>
      <canvas class="dx-steps" width="340" height="70"></canvas>
      <div class="dx-sub">step time of the last 250 frames; dashed: the frame budget</div>
      <div class="dx-row"><span>Playback</span><b class="dx-buffer">–</b></div>
      <div class="dx-row"><span>Input</span><b class="dx-input">–</b></div>
    </div>
  </div>
</div>
"""

PAGE_CSS = """
.dx-root { font-family: system-ui, sans-serif; }
.dx-bar { display: flex; align-items: center; gap: 10px; flex-wrap: wrap; }
.dx-start { font-size: 1.05rem; padding: 8px 18px; border-radius: 8px; border: none; background: #2563eb; color: #fff; cursor: pointer; }
.dx-live .dx-start { background: #b91c1c; }
.dx-download { padding: 6px 12px; border-radius: 8px; border: 1px solid #999; background: transparent; cursor: pointer; }
.dx-download:disabled { opacity: .45; cursor: default; }
.dx-ind { color: #9ca3af; font-weight: 600; transition: color .08s; }
.dx-user.dx-on { color: #16a34a; }
.dx-agent.dx-on { color: #2563eb; }
.dx-bar meter { width: 90px; }
.dx-status { margin: 8px 0; color: #6b7280; font-size: .92rem; min-height: 1.2em; }
.dx-main { display: flex; gap: 14px; flex-wrap: wrap; }
.dx-transcript { flex: 2 1 380px; height: 340px; overflow-y: auto; border: 1px solid #e5e7eb; border-radius: 8px; padding: 8px; }
.dx-bubble { margin: 4px 0; padding: 6px 10px; border-radius: 8px; line-height: 1.35; }
.dx-agent-bubble { background: rgba(37, 99, 235, .10); }
.dx-user-bubble { background: rgba(22, 163, 74, .10); color: #4b5563; font-style: italic; }
.dx-cut { opacity: .7; }
.dx-cut .dx-text::after { content: " — interrupted"; color: #b91c1c; font-style: italic; }
.dx-who { font-weight: 600; margin-right: 6px; font-style: normal; }
.dx-latency { flex: 1 1 300px; border: 1px solid #e5e7eb; border-radius: 8px; padding: 8px 10px; font-size: .9rem; }
.dx-h { font-weight: 700; margin-bottom: 6px; }
.dx-row { display: flex; justify-content: space-between; gap: 8px; margin-top: 6px; }
.dx-row b { font-variant-numeric: tabular-nums; text-align: right; }
.dx-sub { color: #6b7280; font-size: .8rem; }
.dx-steps { width: 100%; height: 70px; margin-top: 4px; }
"""


def client_js(config: dict) -> str:
    """The page's JavaScript with its configuration and the worklet source filled in."""
    src = (STATIC / "client.js").read_text()
    worklet = (STATIC / "echo_presence.js").read_text() + "\n" + (STATIC / "worklet.js").read_text()
    return src.replace("__DUPLEX_CONFIG__", json.dumps(config)).replace("__DUPLEX_WORKLET__", json.dumps(worklet))


def page_config(server: RealtimeServer) -> dict:
    s = server.registry.session_config.sampling
    return {
        "wsPath": REALTIME_PATH, "model": server.registry.default, "rate": 24000, "batchMs": 32,
        "prebufferMs": 0, "maxBufferMs": 2000, "maxRecordSeconds": 600,
        "sampling": {"text_temperature": s.text_temperature, "audio_temperature": s.audio_temperature,
                     "pad_bias": s.pad_bias},
    }


def _model_note(server: RealtimeServer) -> str:
    entry = server.registry.entries[server.registry.default]
    path = str(entry.path or "")
    if "random" in Path(path).name:
        return ("**Note:** this is an *untrained random* model: it babbles instead of answering. "
                "The page, the audio path, barge-in and the latency panel are real.")
    if Path(path).resolve() == EMBEDDED_DEFAULT.resolve():
        return ("**Note:** the embedded default is a 4.9 M-parameter model trained on a CPU on synthetic dialogues: "
                "it listens, waits while you talk, takes its turn and stops when interrupted, but its words are "
                "not real answers yet (numbers in `demo/default_model/MODEL_CARD.md`).")
    return ""


def build_blocks(server: RealtimeServer):
    """The Gradio Blocks of the page."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    config = page_config(server)
    models = server.registry.names
    adapters = sorted({a for e in server.registry.entries.values() for a in e.adapters})
    with gr.Blocks(title="duplex-agent") as blocks:
        gr.Markdown("## duplex-agent — a full-duplex voice agent\nIt listens while it talks: speak any time, "
                    "interrupt it, and watch the transcript and the latency.")
        note = _model_note(server)
        if note:
            gr.Markdown(note)
        gr.HTML(value="", html_template=PAGE_HTML, css_template=PAGE_CSS, js_on_load=client_js(config),
                elem_id="duplex-client")
        with gr.Accordion("Model and sampling", open=False):
            with gr.Row():
                model = gr.Dropdown(models, value=models[0], label="Model", info="applies at the next Start")
                adapter = gr.Dropdown(["none", *adapters], value="none", label="Adapter (LoRA)",
                                      info="applies at the next Start", interactive=bool(adapters))
            with gr.Row():
                text_t = gr.Slider(0.0, 2.0, value=config["sampling"]["text_temperature"], step=0.05,
                                   label="Text temperature", info="0 = greedy; applies at once")
                audio_t = gr.Slider(0.0, 2.0, value=config["sampling"]["audio_temperature"], step=0.05,
                                    label="Audio temperature", info="0 = greedy; applies at once")
                pad_bias = gr.Slider(-6.0, 3.0, value=config["sampling"]["pad_bias"], step=0.25,
                                     label="Turn-taking bias",
                                     info="< 0: answers sooner and more often, but may cut into your pauses; applies at once")
                prebuffer = gr.Slider(0, 120, value=config["prebufferMs"], step=5, label="Minimum playback cushion (ms)",
                                      info="delay before agent audio plays; grows by itself on jitter")
            headphones = gr.Checkbox(False, label="I use headphones",
                                     info="turns the browser's echo canceller off from the start. With speakers it "
                                          "is needed, but it mutes your first few hundred ms whenever you talk over "
                                          "the agent; unticked, the page bypasses it once it measures no echo "
                                          "(after ~1.5 s of the agent's voice). Applies at the next Start")
        call = "(v) => { if (window.duplexPage) window.duplexPage.set(%s); return []; }"
        model.change(None, [model], None, js=call % "{model: v}")
        adapter.change(None, [adapter], None, js=call % "{adapter: v === 'none' ? null : v}")
        text_t.change(None, [text_t], None, js=call % "{sampling: {text_temperature: v}}")
        audio_t.change(None, [audio_t], None, js=call % "{sampling: {audio_temperature: v}}")
        pad_bias.change(None, [pad_bias], None, js=call % "{sampling: {pad_bias: v}}")
        prebuffer.change(None, [prebuffer], None, js=call % "{prebufferMs: v}")
        headphones.change(None, [headphones], None, js=call % "{headphones: v}")
        gr.Markdown(f"Protocol: `ws://<this host>{REALTIME_PATH}` speaks a subset of the OpenAI Realtime API "
                    "(see `docs/realtime-events.md`); the openai SDK and other clients can use it too.")
    return blocks


def create_demo_app(server: RealtimeServer):
    """FastAPI app: the Realtime route, /healthz, /v1/models, and the page at /."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    app = create_app(server)
    theme = gr.themes.Soft(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    return gr.mount_gradio_app(app, build_blocks(server), path="/", theme=theme, footer_links=[])
