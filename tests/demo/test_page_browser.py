"""The web page end to end in a real browser: headless Chromium (Debian's, driven by Playwright; no
browser download) with a fake microphone fed from an espeak-ng WAV opens the page served by the
``duplex demo`` app on the embedded default model, presses Start, talks for a few turns, and checks
that agent audio was played (the level the page measures on its output), the transcript appeared,
latency marks arrived, barge-in flushed the playback, and the conversation downloads as a stereo WAV;
then "I use headphones" starts the microphone again without the browser's echo canceller.

It also records the page's own "end of user speech -> first agent audio" marks (the AudioWorklet's
audio clock: the last loud microphone block -> the first loud played block after it) and prints them
as JSON (also written to ``$DUPLEX_LATENCY_REPORT`` when set). Numbers are reported, not asserted.
``$DUPLEX_PAGE_WAV`` keeps the downloaded conversation (what the page heard and played) for offline study;
``$DUPLEX_PAGE_MODEL`` serves another checkpoint directory instead of the embedded default (to compare).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytestmark = pytest.mark.timeout(120)

TURNS = ["Hello there, can you hear me?", "What is the weather like today?", "Please tell me a short story.",
         "Wait, I have another question.", "How far away is the moon?", "Okay, thanks a lot."]
# The page's Turn-taking bias for the run: the default (0); $DUPLEX_PAGE_PAD_BIAS measures another setting.
PAD_BIAS = float(os.environ.get("DUPLEX_PAGE_PAD_BIAS", "0"))
CHROMIUM_ARGS = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 "--autoplay-policy=no-user-gesture-required", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 "--disable-dev-shm-usage"]


def _need(ok: bool, what: str) -> None:
    if not ok:  # core tests never skip: a missing piece is a failure that says what to install
        pytest.fail(what)


def _chromium() -> str:
    path = os.environ.get("DUPLEX_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    _need(Path(path).is_file(), "Chromium is not installed: apt-get install -y chromium (Playwright drives Debian's "
          "browser; no browser download)")
    return path


@pytest.fixture(scope="module")
def mic_wav(tmp_path_factory) -> Path:
    """The fake microphone: 1 s of silence, then each turn's sentence and 2.2 s of silence (48 kHz, PCM16)."""
    import soxr

    _need(shutil.which("espeak-ng") is not None, "espeak-ng is not installed")
    d = tmp_path_factory.mktemp("mic")
    parts = [np.zeros(48000, np.float32)]
    for i, text in enumerate(TURNS):
        path = d / f"turn{i}.wav"
        subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True, timeout=60)
        x, rate = sf.read(str(path), dtype="float32")
        parts += [soxr.resample(x, rate, 48000).astype(np.float32), np.zeros(int(48000 * 2.2), np.float32)]
    out = d / "mic.wav"
    sf.write(str(out), np.concatenate(parts), 48000, subtype="PCM_16")
    return out


@pytest.fixture(scope="module")
def page_server(tmp_path_factory):
    """``duplex demo`` with no flags (the embedded default model), on a free loopback port."""
    from agent.server import BackgroundServer, ServerConfig, build_server
    from demo.app import create_demo_app

    old = os.environ.get("DUPLEX_CACHE")
    os.environ["DUPLEX_CACHE"] = str(tmp_path_factory.getbasetemp() / "duplex-cache")
    try:
        cfg = ServerConfig(port=0)
        other = os.environ.get("DUPLEX_PAGE_MODEL")
        server = build_server([other] if other else None, cfg)
        with BackgroundServer(create_demo_app(server), cfg) as srv:
            srv.realtime = server
            yield srv
    finally:
        if old is None:
            os.environ.pop("DUPLEX_CACHE", None)
        else:
            os.environ["DUPLEX_CACHE"] = old


def test_page_talks_plays_transcribes_and_measures_latency(page_server, mic_wav, tmp_path):
    from playwright.sync_api import sync_playwright

    chromium = _chromium()
    data: dict = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=CHROMIUM_ARGS + [f"--use-file-for-fake-audio-capture={mic_wav}"])
        try:
            context = browser.new_context(accept_downloads=True)
            context.grant_permissions(["microphone"])
            outside: list[str] = []

            def only_local(route):  # the page must work offline: nothing leaves the machine
                url = route.request.url
                if url.startswith(page_server.http_url) or url.startswith(("data:", "blob:")):
                    route.continue_()
                else:
                    outside.append(url)
                    route.abort()

            context.route("**/*", only_local)
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(page_server.http_url + "/", wait_until="domcontentloaded")
            page.wait_for_selector(".dx-root .dx-start", timeout=30000)
            page.click(".dx-start")
            page.wait_for_function("document.querySelector('.dx-root').dataset.state === 'live'", timeout=20000)
            assert len(page_server.realtime.connections) == 1
            conn = next(iter(page_server.realtime.connections))
            track = "window.duplexPage.stream.getAudioTracks()[0].getSettings().echoCancellation"
            echo_cancelled = page.evaluate(track)
            # A Gradio slider reaches the live session through the page (session.update x_duplex.sampling).
            # The run measures PAD_BIAS (the default, 0, unless set); to prove the slider path even then, it
            # first sets a nearby value (within the mic file's leading second of silence), then PAD_BIAS.
            page.get_by_text("Model and sampling").click()
            box = page.get_by_label("number input for Turn-taking bias")
            box.wait_for(state="visible", timeout=20000)
            for value in (PAD_BIAS + 0.25, PAD_BIAS):
                applied = lambda: conn.session is not None and conn.session.model.sampling.pad_bias == value
                # A slow machine can still be mounting the accordion's slider when the first value lands (the
                # mount resets it to the configured value), so the test types again until the session has it,
                # as a person would who saw the slider jump back.
                for _ in range(4):
                    box.fill(str(value))
                    box.press("Enter")
                    deadline = time.monotonic() + 5
                    while time.monotonic() < deadline and not applied():
                        page.wait_for_timeout(100)
                    if applied():
                        break
                assert applied(), ("the slider never reached the session", value, box.input_value(),
                                   page.evaluate("window.duplexPage && window.duplexPage.settings.sampling"),
                                   conn.session.model.sampling if conn.session else None)
            # Talk through the turns; stop early once enough turns were measured.
            deadline = time.monotonic() + 1.0 + len(TURNS) * 4.2
            while time.monotonic() < deadline:
                page.wait_for_timeout(1000)
                n = len(json.loads(page.get_attribute(".dx-root", "data-turn-latencies") or "[]"))
                if n >= len(TURNS):
                    break
            data = page.evaluate("Object.assign({}, document.querySelector('.dx-root').dataset)")
            transcript = page.inner_text(".dx-transcript")
            cut_bubbles = page.locator(".dx-cut").count()
            panel = page.inner_text(".dx-latency")
            server_summary = conn.session.latency.summary()
            truncated = dict(conn.truncated)
            clock = {"waits": conn.clock.waits, "advances": conn.clock.advances, "shift_ms": round(conn.clock.shift * 1e3, 1)}
            with page.expect_download(timeout=20000) as dl:
                page.click(".dx-download")
            wav = Path(dl.value.path()).read_bytes()
            if os.environ.get("DUPLEX_PAGE_WAV"):
                Path(os.environ["DUPLEX_PAGE_WAV"]).write_bytes(wav)
            page.click(".dx-start")  # stop
            # The fake microphone never hears the agent: the page measured no echo and bypassed the canceller.
            assert data.get("echo") == "clear" and int(data.get("echoClearMs", 0)) > 1000, data
            # "I use headphones" reaches the microphone at the next Start: the browser's echo canceller is off.
            page.get_by_label("I use headphones").check()
            page.wait_for_function("window.duplexPage.settings.headphones === true", timeout=10000)
            page.click(".dx-start")
            page.wait_for_function("document.querySelector('.dx-root').dataset.state === 'live'", timeout=20000)
            with_headphones = page.evaluate(track)
            page.click(".dx-start")
            assert (echo_cancelled, with_headphones) == (True, False)
            assert not errors, errors
            assert not outside, f"the page tried to reach the network: {outside[:3]}"
        finally:
            browser.close()

    # Agent audio was played: the page's analyser saw it on the output.
    assert float(data["outputPeak"]) > 0.01, data
    assert int(data["agentSamplesPlayed"]) > 24000, data
    # The transcript appeared, latency marks and frames arrived, the server heard the fake mic.
    assert int(data["transcriptChars"]) > 0 and "Agent" in transcript, data
    assert int(data["latencyEvents"]) > 50 and int(data["frames"]) > 50, data
    assert "ms" in panel and "p95" in panel, panel
    assert int(data.get("speechEvents", 0)) >= 2, data
    # When the user talked over the agent, barge-in cut it and the page marked (and flushed) that response.
    # (The untrained default babbles, so this happens every turn; a trained one may simply wait.)
    assert cut_bubbles >= min(1, int(data.get("bargeIns", 0))), data
    # ...and told the server how much of it was heard (conversation.item.truncate after the flush).
    assert len(truncated) >= min(1, int(data.get("bargeIns", 0))), (truncated, data)
    assert int(data.get("errors", 0)) == 0, data  # the server accepted every event the page sent
    # Page-side turn marks arrived.
    turns = json.loads(data["turnLatencies"])
    assert len(turns) >= 2 and all(0 < t < 5000 for t in turns), data
    # The download is a stereo WAV: microphone left, agent right.
    audio, rate = sf.read(io.BytesIO(wav), dtype="float32", always_2d=True)
    assert audio.shape[1] == 2 and rate == 24000 and len(audio) > 5 * rate
    rms = np.sqrt(np.mean(np.square(audio), axis=0))
    assert rms[0] > 0.01 and rms[1] > 0.003, rms
    # The page closed its socket: the server is idle again.
    deadline = time.monotonic() + 10
    while page_server.realtime.connections and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not page_server.realtime.connections

    t = np.asarray(turns)
    report = {
        "what": "end of user speech -> first agent audio played, measured in the page (AudioWorklet audio clock)",
        "model": page_server.realtime.registry.default, "pad_bias": PAD_BIAS, "turns": len(t), "turn_latencies_ms": t.tolist(),
        "median_ms": round(float(np.median(t)), 1), "p95_ms": round(float(np.percentile(t, 95)), 1),
        "turns_not_measured": int(data.get("turnsSkipped", 0)),
        "server_turn_latency_ms": server_summary["turn_latency_ms"], "server_step_ms": server_summary["frame_total_ms"],
        "frames_late": server_summary["frames_late"], "barge_ins": int(data.get("bargeIns", 0)), "clock": clock,
        "playback_starves": int(data.get("starves", 0)), "cushion_ms_at_end": float(data.get("cushionMs", 0)),
    }
    print("\nDUPLEX_PAGE_LATENCY " + json.dumps(report))
    if os.environ.get("DUPLEX_LATENCY_REPORT"):
        Path(os.environ["DUPLEX_LATENCY_REPORT"]).write_text(json.dumps(report, indent=1) + "\n")
