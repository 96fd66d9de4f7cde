"""The page's echo score (``demo/static/echo_presence.js``, run in headless Chromium) is the daemon's
(``agent/daemon/echo_presence.py``): the same frame energies give the same scores and the same switches, for
an echo, a headset, double talk, and a headset taken off."""
from __future__ import annotations

import json

import numpy as np
import pytest

from agent.daemon.echo_presence import EchoPresence
from demo.app import STATIC
from tests.agent.daemon.test_echo_presence import echo_of, power_sum, talk
from tests.demo.test_page_browser import CHROMIUM_ARGS, _chromium

pytestmark = pytest.mark.timeout(120)


def cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    noise = -60.0 + np.random.default_rng(0).normal(0, 1, 3000)
    speaker = talk(30, 1)
    echo = echo_of(speaker, 8, -22.0)
    user = talk(30, 2, level_db=-25.0)
    taken_off = echo.copy()
    taken_off[:1500] = -90.0
    barge = user.copy()
    barge[::400] = -10.0  # loud clicks of double talk
    return {"echo": (speaker, power_sum(echo, noise)), "headset": (speaker, power_sum(user, noise)),
            "double talk": (speaker, power_sum(echo, barge, noise)), "taken off": (speaker, power_sum(taken_off, noise))}


def test_the_page_and_the_daemon_measure_the_same_echo():
    from playwright.sync_api import sync_playwright

    data = {k: (s.tolist(), m.tolist()) for k, (s, m) in cases().items()}
    source = (STATIC / "echo_presence.js").read_text()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_content("<html><body></body></html>")
            page.add_script_tag(content=source + "\nwindow.EchoPresence = EchoPresence;")
            js = page.evaluate("""(data) => {
                const out = {};
                for (const [k, [s, m]] of Object.entries(JSON.parse(data))) {
                    const p = new EchoPresence();
                    out[k] = s.map((v, i) => [p.update(v, m[i]), p.score, p.recentScore]);
                }
                return out;
            }""", json.dumps(data))
        finally:
            browser.close()
    switched = 0
    for k, (s, m) in data.items():
        py = EchoPresence()
        ours = [(py.update(a, b), py.score, py.recent_score) for a, b in zip(s, m)]
        assert [c for c, _, _ in ours] == [c for c, _, _ in js[k]], k
        np.testing.assert_allclose([x[1:] for x in ours], [x[1:] for x in js[k]], atol=1e-9, err_msg=k)
        switched += sum(a != b for a, b in zip([False] + [c for c, _, _ in ours], [c for c, _, _ in ours]))
    assert switched >= 3  # the cases do switch (clear, and back), so agreeing means something
