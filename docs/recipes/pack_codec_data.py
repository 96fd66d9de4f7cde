"""Pack a random part of a codec speech set small enough to carry to a leased GPU machine (64 MiB there).

    python docs/recipes/pack_codec_data.py runs/codec-data .codecgpu/data --fraction 0.45 --max-mb 45.5

Training clips become 16 kHz Ogg/Opus (libsndfile compression level 0.75: 28 % of the WAV size; log-mel L1
to the original 0.08, a tenth of what the codec itself loses); held-out and real clips stay lossless FLAC.
8 kHz sources are resampled to 16 kHz here, so the GPU machine needs no resampler for them. All real
recordings are kept; training clips are dropped at random until the set fits ``--max-mb``.
This is how the shipped fsq weights' data was made (streaming/codecs/assets/fsq/CODEC_CARD.md).
"""
from __future__ import annotations

import argparse
import json
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr


def _pack(job: tuple[str, str, dict]) -> dict:
    src, dst, row = job
    x, sr = sf.read(Path(src) / row["path"], dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    if sr != 16000:
        x, sr = soxr.resample(x, sr, 16000), 16000
    stem = Path(row["path"]).stem
    if row["split"] == "train":
        name = f"wav/{stem}.ogg"
        sf.write(Path(dst) / name, x, sr, format="OGG", subtype="OPUS", compression_level=0.75)
    else:
        name = f"wav/{stem}.flac"
        sf.write(Path(dst) / name, x, sr, format="FLAC", subtype="PCM_16")
    return dict(row, path=name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", help="speech set directory (manifest.jsonl), e.g. runs/codec-data")
    ap.add_argument("dst", help="packed copy to write")
    ap.add_argument("--fraction", type=float, default=0.45, help="share of the synthetic training clips to keep")
    ap.add_argument("--max-mb", type=float, default=45.5, help="largest total size in MiB")
    ap.add_argument("--seed", type=int, default=7, help="seed of the keep draw")
    ap.add_argument("--drop-seed", type=int, default=3, help="seed of the order in which clips are dropped to fit")
    args = ap.parse_args()
    src, dst = Path(args.src), Path(args.dst)
    (dst / "wav").mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in (src / "manifest.jsonl").read_text().splitlines() if line.strip()]
    rng = np.random.default_rng(args.seed)
    keep = [r for r in rows if r["split"] != "train" or r["voice"].startswith("real") or rng.random() < args.fraction]
    with ProcessPoolExecutor() as ex:
        packed = list(ex.map(_pack, [(str(src), str(dst), r) for r in keep], chunksize=16))
    total = sum((dst / r["path"]).stat().st_size for r in packed)
    droppable = [r for r in packed if r["split"] == "train" and not r["voice"].startswith("real")]
    np.random.default_rng(args.drop_seed).shuffle(droppable)
    dropped = set()
    for r in droppable:
        if total <= args.max_mb * 2**20:
            break
        total -= (dst / r["path"]).stat().st_size
        (dst / r["path"]).unlink()
        dropped.add(r["path"])
    packed = [r for r in packed if r["path"] not in dropped]
    (dst / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in packed))
    if (src / "voices.json").is_file():
        shutil.copy(src / "voices.json", dst / "voices.json")
    hours = sum(r["seconds"] for r in packed if r["split"] == "train") / 3600
    print(f"{len(packed)} clips, {hours:.2f} h of training speech, {total / 2**20:.1f} MiB in {dst}")


if __name__ == "__main__":
    main()
