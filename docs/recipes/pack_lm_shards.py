"""Pack `duplex data tokenize` shards small enough to carry to a GPU machine (64 MiB per call), and unpack them.

    python docs/recipes/pack_lm_shards.py pack SHARDS OUT [--splits train,val] [--kinds shards,...] [--max-mb 40]
    python docs/recipes/pack_lm_shards.py unpack PACKED OUT

Packing keeps the chosen splits of the chosen kinds (``--kinds``: duplex ``shards``, ``align_shards``,
``text_shards``; all by default), stores ids as uint16 when the
layout's vocabulary allows it (every id < 65536; SmolLM2 + codec2: 57,349) and compresses each file. Unpacking
restores the int32 ids `duplex train` expects. Refuses to write more than --max-mb (say which splits to drop).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

KEYS = ("shards", "align_shards", "text_shards")


def pack(src: Path, out: Path, splits: set[str], max_mb: float, kinds: tuple[str, ...] = KEYS) -> int:
    index = json.loads((src / "shards.json").read_text())
    small = index["layout"]["vocab_size"] <= 65536
    out.mkdir(parents=True, exist_ok=True)
    kept = dict(index)
    for key in KEYS:
        kept[key] = [e for e in index.get(key, []) if e["split"] in splits and key in kinds]
        for e in kept[key]:
            z = dict(np.load(src / e["file"]))
            if small and z["ids"].size and int(z["ids"].max()) < 65536:
                z["ids"] = z["ids"].astype(np.uint16)
            np.savez_compressed(out / e["file"], **z)
    kept = {k: v for k, v in kept.items() if k in index or k not in KEYS}
    kept["totals"] = {s: t for s, t in index.get("totals", {}).items() if s in splits}
    (out / "shards.json").write_text(json.dumps(kept, indent=1) + "\n")
    mb = sum(p.stat().st_size for p in out.iterdir()) / 2**20
    print(f"packed {src} ({', '.join(sorted(splits))}) into {out}: {mb:.1f} MiB")
    if mb > max_mb:
        print(f"error: {mb:.1f} MiB is over --max-mb {max_mb}; pack fewer splits or shards.", file=sys.stderr)
        return 2
    return 0


def unpack(src: Path, out: Path) -> int:
    index = json.loads((src / "shards.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    for key in KEYS:
        for e in index.get(key, []):
            z = dict(np.load(src / e["file"]))
            z["ids"] = z["ids"].astype(np.int32)
            np.savez(out / e["file"], **z)
    (out / "shards.json").write_text((src / "shards.json").read_text())
    print(f"unpacked {src} into {out}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack")
    a.add_argument("src", type=Path)
    a.add_argument("out", type=Path)
    a.add_argument("--splits", default="train,val")
    a.add_argument("--kinds", default=",".join(KEYS), help="which shard kinds to keep (default: all)")
    a.add_argument("--max-mb", type=float, default=40.0)
    b = sub.add_parser("unpack")
    b.add_argument("src", type=Path)
    b.add_argument("out", type=Path)
    args = p.parse_args()
    if args.cmd == "pack":
        kinds = tuple(args.kinds.split(","))
        if set(kinds) - set(KEYS):
            p.error(f"--kinds takes {', '.join(KEYS)}; got {args.kinds}")
        return pack(args.src, args.out, set(args.splits.split(",")), args.max_mb, kinds)
    return unpack(args.src, args.out)


if __name__ == "__main__":
    sys.exit(main())
