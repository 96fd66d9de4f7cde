"""One `duplex codec train --preset gpu` variant, for a GPU machine whose Python has torch but not this
project's CLI dependencies: ``python3 docs/recipes/codec_gpu_train_one.py NAME SECONDS [key=value ...]``."""
import json
import sys

from agent.codec_train import resolve_config, train

name, budget, *overrides = sys.argv[1:]
cfg = resolve_config("gpu", ["data.dir=.codecgpu/data", f"out=runs/{name}", f"max_seconds={budget}", *overrides])
print(json.dumps(train(cfg, resume=False, progress=False)), flush=True)
