"""`duplex train` from scratch under a wall-clock budget, for a GPU machine whose Python has torch and
transformers but not this project's CLI dependencies:

    python3 docs/recipes/lm_gpu_train.py SECONDS SHARDS OUT [key=value ...]

The defaults are the run behind the fsq default in demo/default_model/MODEL_CARD.md (tiny-fsq, 48 windows
of 78 frames, lr 2e-3, keep the best val weights); ``key=value`` overrides any TrainConfig field, a JSON value
for the others (e.g. continue the shipped default on the listening mix: ``model_preset=tiny
init=demo/default_model 'mix={"duplex": 0.65, "listen": 0.35}' lr=0.001``).
"""
import json
import sys

from agent.training.train import TrainConfig, train

budget, shards, out, *rest = sys.argv[1:]
kw = dict(shards=shards, out=out, model_preset="tiny-fsq", mode="scratch", window_frames=78, batch_size=48,
          steps=1000000, lr=2e-3, warmup=200, weight_decay=0.05, pad_weight=0.3, eval_every=250, eval_windows=128,
          save_every=10**9, keep_best=True, max_seconds=float(budget), device="auto", threads=4)
for item in rest:
    key, value = item.split("=", 1)
    if key in kw and not isinstance(kw[key], bool):
        kw[key] = type(kw[key])(value)
    else:
        try:
            kw[key] = json.loads(value)  # mix={...}, keep_best=false, lora_targets=[...]
        except json.JSONDecodeError:
            kw[key] = value  # init=DIR, text

print(json.dumps(train(TrainConfig(**kw), progress=False)), flush=True)
