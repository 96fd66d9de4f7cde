"""The SmolLM2 speech base on a GPU machine whose Python has torch, transformers and peft but not this
project's CLI dependencies (issue 8): init from the GGUF, stage a, stage b, and the shippable delta.

    python3 docs/recipes/smol_gpu_train.py GGUF SHARDS OUT A_SECONDS B_SECONDS [--from-delta DIR] [key=value ...]

The stages are `duplex train --preset speech-align` then `speech-duplex` (agent/presets), each under a
wall-clock budget (``max_seconds``); a stage with budget 0 is skipped. ``key=value`` overrides a TrainConfig
field of both stages, ``a.key=value`` / ``b.key=value`` of one (the GPU defaults below: batch 32, cuda).
The layout comes from the shards' index, so no codec is loaded here.

``--from-delta DIR`` starts from an earlier speech base (`duplex model delta`) instead of the bare base,
rebuilt on the GGUF; if the shards are heard-text shards and it is not, its heard range is added first
(``think.checkpoint.add_heard_text``: heard rows = text twin + one shared vector).
Writes OUT/init, OUT/a, OUT/speech-base and OUT/delta (`duplex model delta`: what comes back and ships).
"""
import json
import sys
from pathlib import Path

from agent.config import from_dict, load_yaml
from agent.training.tokenize import shard_layout
from agent.training.train import TrainConfig, train
from think.checkpoint import add_heard_text, init_from_base, load_checkpoint
from think.delta import make_delta, rebuild

gguf, shards, out, budget_a, budget_b, *rest = sys.argv[1:]
out = Path(out)
layout = shard_layout(shards)
from_delta = None
if rest[:1] == ["--from-delta"]:
    from_delta, rest = rest[1], rest[2:]


def layout_for(text_vocab: int):
    if text_vocab != layout.text_vocab_size:
        raise SystemExit(f"{shards} was tokenized for {layout.text_vocab_size} text ids, the base has {text_vocab}.")
    return layout


if from_delta:
    rebuild(from_delta, out / "prev", gguf)
    if layout.heard_text and not load_checkpoint(out / "prev").layout.heard_text:
        add_heard_text(out / "prev", out / "init")
    else:
        (out / "prev").rename(out / "init")
else:
    init_from_base(out / "init", layout_for, gguf)
gpu = dict(batch_size=32, device="auto", threads=4, steps=1000000, save_every=10**9)
extra = [item.split("=", 1) for item in rest]
results = {}
init = out / "init"
for stage, name, preset, budget in (("a", "a", "train-speech-align", budget_a),
                                    ("b", "speech-base", "train-speech-duplex", budget_b)):
    if float(budget) <= 0:
        continue
    data = {**load_yaml(preset), **gpu, "shards": str(shards), "out": str(out / name), "init": str(init),
            "max_seconds": float(budget)}
    for key, value in extra:
        only, _, field = key.rpartition(".")
        if only and only != stage:
            continue
        kind = type(data.get(field, getattr(TrainConfig, field, "")))
        data[field] = kind(value) if kind in (int, float, str) else json.loads(value)
    try:
        results[name] = train(from_dict(TrainConfig, data), progress=False)
    except Exception as exc:  # a failed stage b still returns stage a's delta: device time is scarce
        if name == "a" or not results:
            raise
        print(f"stage {name} failed ({type(exc).__name__}: {exc}); the delta is stage a's", flush=True)
        break
    init = out / name
    print(json.dumps({name: results[name]}), flush=True)
index = make_delta(init, out / "delta", gguf)
print(json.dumps({"delta_bytes": index["bytes"], "max_rank": index["max_rank"], "check": index["check"]}), flush=True)
