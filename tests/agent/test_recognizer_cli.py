"""``duplex recognizer train|eval`` end to end at smoke scale (the hand-made dialogues of test_training)."""
from __future__ import annotations

import json

from listen.recognizer import load_recognizer
from tests.agent.test_training import dialogues  # noqa: F401  (the hand-made dialogue fixture)


def test_recognizer_trains_and_evaluates_from_the_cli(dialogues, run_cli, tmp_path):  # noqa: F811
    out = tmp_path / "rec"
    r = run_cli("recognizer", "train", "--data", dialogues, "--out", out, "--steps", "3", "--set", "eval_every=2",
                "--set", "model.dim=32", "-q")
    assert r.rc == 0, r.err
    final = json.loads((out / "final_metrics.json").read_text())
    assert final["steps"] == 3 and final["train_turns"] == 2 and 0.0 <= final["val"]["cer"] <= 1.5
    assert json.loads((out / "train_config.json").read_text())["device"] == "auto"
    assert json.loads((out / "train_config.json").read_text())["model"] == {"dim": 32}
    assert (out / "loss.png").is_file() and len((out / "metrics.jsonl").read_text().splitlines()) == 3
    best = load_recognizer(out / "best")
    assert best.cfg.dim == 32 and "capital" in best.lexicon  # the training turns' words
    assert "wer_lexicon" in final["val"] and 0.0 <= final["val"]["wer_beam"] <= 1.5
    lm, decode = best.word_lm  # the word LM of the training turns, its weights tuned on val
    assert lm.prob(("the", "capital"), "of") > lm.prob(("the", "capital"), "sky") and "lm_weight" in decode
    r = run_cli("recognizer", "eval", "--model", out / "last", "--data", dialogues, "--split", "val", "-q")
    assert r.rc == 0, r.err
    result = json.loads(r.out)
    assert result["turns"] == 1 and set(result) >= {"cer", "wer", "wer_beam", "examples"}
    (out / "last" / "lm.json").unlink()
    r = run_cli("recognizer", "lm", "--model", out / "last", "--data", dialogues, "--order", "2", "-q")
    assert r.rc == 0, r.err
    made = json.loads(r.out)
    assert made["order"] == 2 and made["train_turns"] == 2 and len(made["grid"]) == 8
    assert load_recognizer(out / "last").word_lm[0].order == 2


def test_recognizer_commands_name_a_missing_directory_in_one_sentence(run_cli, tmp_path):
    r = run_cli("recognizer", "train", "--data", tmp_path / "nothing", "--out", tmp_path / "rec", "-q")
    assert r.rc == 2 and "No dialogue directory" in r.err
    r = run_cli("recognizer", "eval", "--model", tmp_path / "none", "--data", tmp_path, "-q")
    assert r.rc == 2 and "No speech recogniser found" in r.err
    r = run_cli("recognizer", "lm", "--model", tmp_path / "none", "--data", tmp_path, "-q")
    assert r.rc == 2 and "No speech recogniser found" in r.err
    r = run_cli("recognizer", "train", "--data", tmp_path, "--set", "steps=0", "-q")
    assert r.rc == 2 and "steps must be an integer >= 1" in r.err
    for budget in ("nan", "-5"):  # nan ran the whole default step count; -5 stopped at step 0
        r = run_cli("recognizer", "train", "--data", tmp_path, "--max-seconds", budget, "-q")
        assert r.rc == 2 and "max_seconds must be a number of seconds >= 0" in r.err, r.err
    r = run_cli("recognizer", "train", "--data", tmp_path, "--set", "model.dim=abc", "-q")
    assert r.rc == 2 and "dim must be an integer >= 1" in r.err and "Traceback" not in r.err, r.err
    import torch

    if not torch.cuda.is_available():  # a GPU asked for where there is none: one sentence, before any work
        r = run_cli("recognizer", "train", "--data", tmp_path / "nothing", "--out", tmp_path / "rec2",
                    "--set", "device=cuda", "-q")
        assert r.rc == 2 and "torch sees no CUDA device" in r.err and not (tmp_path / "rec2").exists()


def test_cached_features_serve_any_network_shape_with_the_same_front_end(dialogues, tmp_path):  # noqa: F811
    from pathlib import Path

    from agent.recognizer_train import featurize, user_turns
    from listen.recognizer import RecognizerConfig, build_model

    turns = user_turns([Path(dialogues)], "train")
    cache = tmp_path / "features-train.npz"
    feats, texts = featurize(build_model(RecognizerConfig(dim=16)), turns, cache, progress=False)
    wider = build_model(RecognizerConfig(dim=24, rnn_layers=3))
    wider.features = None  # computing features again would fail: they must come from the cache
    again, texts2 = featurize(wider, turns, cache, progress=False)
    assert texts2 == texts and all((a == b).all() for a, b in zip(feats, again))
    other_front = build_model(RecognizerConfig(dim=16, n_mels=40))
    assert featurize(other_front, turns, cache, progress=False)[0][0].shape[1] == 40 * other_front.cfg.stack
