"""Train on several `duplex data tokenize` outputs at once: one shard directory that links them all.

    python docs/recipes/merge_shards.py OUT SRC [SRC ...]

Each SRC's shards are linked into OUT (named ``p<i>-<file>``) and listed in one ``shards.json``; every SRC must
share the first one's layout. A SRC without ``shards.json`` (a tokenizing run stopped early) contributes its
finished ``.npz`` shards. Used for the embedded default's v11 (its card, *Reproduce*).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np


def finished_shards(src: Path) -> list[dict]:
    """The index entries of the duplex shards a stopped run finished (``<split>-NNNN.npz``)."""
    out = []
    for f in sorted(src.glob("*.npz")):
        split = f.name.split("-")[0]
        if split in ("train", "val", "test"):
            z = np.load(f)
            out.append({"file": f.name, "split": split, "dialogues": int(len(z["frames"])), "ids": int(len(z["ids"])),
                        "frames": int(z["frames"].sum())})
    return out


def main(out: Path, srcs: list[Path]) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    merged = None
    for i, src in enumerate(srcs):
        path = src / "shards.json"
        index = json.loads(path.read_text()) if path.is_file() else {"shards": finished_shards(src), "mic_paths": []}
        if merged is None:
            if "layout" not in index:
                raise SystemExit(f"{src} has no shards.json: list a complete shard directory first (for the layout).")
            merged = {"layout": index["layout"], "source": [], "mic_paths": [], "shards": [], "align_shards": [],
                      "text_shards": [], "totals": {}}
        elif index.get("layout", merged["layout"]) != merged["layout"]:
            raise SystemExit(f"{src} was tokenized for another layout than {srcs[0]}.")
        merged["source"].append(str(src))
        merged["mic_paths"] += [p for p in index.get("mic_paths", []) if p not in merged["mic_paths"]]
        for key in ("shards", "align_shards", "text_shards"):
            for e in index.get(key, []):
                name = f"p{i}-{e['file']}"
                if not (out / name).exists():
                    os.symlink((src / e["file"]).resolve(), out / name)
                merged[key].append({**e, "file": name})
                if key == "shards":
                    t = merged["totals"].setdefault(e["split"], {"dialogues": 0, "frames": 0, "ids": 0})
                    for k in t:
                        t[k] += int(e.get(k, 0))
    (out / "shards.json").write_text(json.dumps(merged, indent=1) + "\n")
    return merged["totals"]


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    print(main(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]))
