"""The embedded default (demo/default_model) is a trained model, shipped with its card."""
from __future__ import annotations

import json

import numpy as np

from agent.models import EMBEDDED_DEFAULT, init_model
from tests.agent.conftest import read_stereo
from think.checkpoint import load_checkpoint


def test_the_embedded_default_is_a_small_trained_tiny_model_with_a_card():
    loaded = load_checkpoint(EMBEDDED_DEFAULT)
    assert loaded.layout.codec.name == "codec2" and loaded.layout.slot_size == 13
    assert sum(f.stat().st_size for f in EMBEDDED_DEFAULT.iterdir()) < 25e6
    trained = json.loads((EMBEDDED_DEFAULT / "final_metrics.json").read_text())
    assert trained["step"] > 0 and trained["val_loss"] < 2.0  # untrained: ~6.6 nats per id
    card = (EMBEDDED_DEFAULT / "MODEL_CARD.md").read_text()
    for needed in ("duplex data synth", "duplex train --preset tiny", "duplex eval", "cannot do"):
        assert needed in card


def _agent_loud_while_user_speaks(wav) -> float:
    audio, rate = read_stereo(wav)
    hop = rate * 80 // 1000
    n = len(audio) // hop
    rms = np.sqrt(np.mean(audio[: n * hop].reshape(n, hop, 2) ** 2, axis=1))
    user = rms[:, 0] > 0.02
    return float(np.mean(rms[user, 1] > 0.02))


QUESTIONS = ["can you tell me how far away the moon is from the earth",
             "what would be a good name for a small brown dog",
             "please remind me to call my sister tomorrow after lunch"]


def _questions_wav(tmp_path) -> "Path":
    """Three one-clause questions (no full stop inside: nothing invites an answer mid-way), 3 s apart."""
    import soundfile as sf
    import soxr

    from tests.agent.conftest import espeak

    parts = [np.zeros(8000, np.float32)]
    for i, text in enumerate(QUESTIONS):
        x, rate = sf.read(str(espeak(tmp_path / f"q{i}.wav", text)), dtype="float32")
        parts += [soxr.resample(x, rate, 16000).astype(np.float32), np.zeros(48000, np.float32)]
    out = tmp_path / "questions.wav"
    sf.write(str(out), np.concatenate(parts), 16000, subtype="PCM_16")
    return out


def test_the_default_learned_to_listen_while_the_user_speaks(run_cli, tmp_path):
    """With the barge-in safety net off, only what the model learned keeps it quiet over the user:
    the trained default talks over far fewer of the user's frames than the same shape untrained."""
    wav = _questions_wav(tmp_path)
    random_tiny = init_model(tmp_path / "random", preset="tiny", codec="codec2")
    loud = {}
    for name, model in (("trained", EMBEDDED_DEFAULT), ("random", random_tiny)):
        out = tmp_path / f"{name}.wav"
        r = run_cli("chat", "--in", wav, "--out", out, "--tail", "2", "--no-barge-in", "--model", model)
        assert r.rc == 0, r.err
        loud[name] = _agent_loud_while_user_speaks(out)
    assert loud["trained"] < 0.2 and loud["random"] > 0.3, loud
