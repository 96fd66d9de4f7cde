"""The SmolLM2 speech base on a GPU machine whose Python has torch, transformers and peft but not this
project's CLI dependencies (issue 8): init from the GGUF, stage a, stage b, and the shippable delta.

    python3 docs/recipes/smol_gpu_train.py GGUF SHARDS OUT A_SECONDS B_SECONDS [key=value ...]

The stages are `duplex train --preset speech-align` then `speech-duplex` (agent/presets), each under a
wall-clock budget (``max_seconds``); ``key=value`` overrides any TrainConfig field of both stages (the
GPU defaults below: batch 32, cuda). The layout comes from the shards' index, so no codec is loaded here.
Writes OUT/init, OUT/a, OUT/speech-base and OUT/delta (`duplex model delta`: what comes back and ships).
"""
import json
import sys
from pathlib import Path

from agent.config import from_dict, load_yaml
from agent.training.tokenize import shard_layout
from agent.training.train import TrainConfig, train
from think.checkpoint import init_from_base
from think.delta import make_delta

gguf, shards, out, budget_a, budget_b, *rest = sys.argv[1:]
out = Path(out)
layout = shard_layout(shards)


def layout_for(text_vocab: int):
    if text_vocab != layout.text_vocab_size:
        raise SystemExit(f"{shards} was tokenized for {layout.text_vocab_size} text ids, the base has {text_vocab}.")
    return layout


init_from_base(out / "init", layout_for, gguf)
gpu = dict(batch_size=32, device="auto", threads=4, steps=1000000, save_every=10**9)
extra = dict(item.split("=", 1) for item in rest)
results = {}
for name, preset, init, budget in (("a", "train-speech-align", out / "init", budget_a),
                                   ("speech-base", "train-speech-duplex", out / "a", budget_b)):
    data = {**load_yaml(preset), **gpu, "shards": str(shards), "out": str(out / name), "init": str(init),
            "max_seconds": float(budget)}
    for key, value in extra.items():
        kind = type(data.get(key, getattr(TrainConfig, key, "")))
        data[key] = kind(value) if kind in (int, float, str) else json.loads(value)
    try:
        results[name] = train(from_dict(TrainConfig, data), progress=False)
    except Exception as exc:  # a failed stage b still returns stage a's delta: device time is scarce
        if name == "a":
            raise
        print(f"stage {name} failed ({type(exc).__name__}: {exc}); the delta is stage a's", flush=True)
        break
    print(json.dumps({name: results[name]}), flush=True)
index = make_delta(out / ("speech-base" if "speech-base" in results else "a"), out / "delta", gguf)
print(json.dumps({"delta_bytes": index["bytes"], "max_rank": index["max_rank"], "check": index["check"]}), flush=True)
