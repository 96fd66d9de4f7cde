"""Carry held-out dialogues to a GPU machine for `duplex eval --device cuda` (64 MiB per call), and unpack them.

    python docs/recipes/pack_eval_data.py pack DATA OUT [--split test] [--limit 20] [--max-mb 12]
    python docs/recipes/pack_eval_data.py unpack PACKED OUT

Packing keeps the first ``--limit`` dialogues of a split as `duplex eval` picks them
(``agent.evaluate.held_out_records``, so `duplex eval --limit N` here scores the same dialogues), each as its JSON and its two-channel
audio losslessly in FLAC (about half a WAV's size). Unpacking writes the WAVs `duplex eval` reads back.
Refuses to write more than --max-mb.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import soundfile as sf


def pack(src: Path, out: Path, split: str, limit: int, max_mb: float) -> int:
    from agent.evaluate import held_out_records

    picked = [wav.with_suffix(".json") for wav, _ in held_out_records(src, split, limit)]
    if not picked:
        print(f"no {split!r} dialogues in {src}", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    for p in picked:
        audio, rate = sf.read(str(p.with_suffix(".wav")), dtype="int16", always_2d=True)
        sf.write(str(out / f"{p.stem}.flac"), audio, rate, subtype="PCM_16")
        shutil.copyfile(p, out / p.name)
        total += (out / f"{p.stem}.flac").stat().st_size + p.stat().st_size
        if total > max_mb * 2**20:
            print(f"{len(picked)} dialogues exceed {max_mb} MiB; pack fewer (--limit)", file=sys.stderr)
            return 1
    print(f"packed {len(picked)} {split} dialogues into {out} ({total / 2**20:.1f} MiB)")
    return 0


def unpack(src: Path, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for p in sorted(src.glob("*.json")):
        audio, rate = sf.read(str(p.with_suffix(".flac")), dtype="int16", always_2d=True)
        sf.write(str(out / f"{p.stem}.wav"), audio, rate, subtype="PCM_16")
        shutil.copyfile(p, out / p.name)
        n += 1
    print(f"unpacked {n} dialogues into {out}")
    return 0 if n else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("data")
    p.add_argument("out")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--max-mb", type=float, default=12.0)
    u = sub.add_parser("unpack")
    u.add_argument("packed")
    u.add_argument("out")
    args = ap.parse_args(argv)
    if args.cmd == "pack":
        return pack(Path(args.data), Path(args.out), args.split, args.limit, args.max_mb)
    return unpack(Path(args.packed), Path(args.out))


if __name__ == "__main__":
    sys.exit(main())
