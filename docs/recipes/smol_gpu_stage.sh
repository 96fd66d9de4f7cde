# Stage the SmolLM2 speech-base run for the GPU machine (see smol_gpu_run.sh). One payload (the installed GGUF,
# 98 MB; the packed shards; the gguf wheel; optionally held-out test dialogues + the pycodec2 wheel, an earlier
# speech base's delta and a recogniser) is written as one tar, split over .smol1 .. .smolN so that each part +
# the repo + .whl (wheels the device lacks, downloaded here once) stays under one call's 64 MiB. The last
# stage holds LAST and the tar's sha256. Run from the repo root:
#   bash docs/recipes/smol_gpu_stage.sh SHARDS [EVAL_DATA [EVAL_N]]   # shards: `duplex data tokenize --model <smol init>`
# Environment: FROM_DELTA=DIR (an earlier `duplex model delta`, to train on from there: smol_gpu_train.py
# --from-delta), RECOGNIZER=DIR (`duplex recognizer train`: the device's eval writes the heard text with it),
# LM_SHARDS=DIR and LM_INIT=DIR (tiny-model shards, their train + val duplex windows only, and a checkpoint to
# continue: smol_gpu_run.sh trains it beside the speech base on the same GPU, LM_SECONDS / LM_ARGS there).
set -eu
SHARDS=$1; EVAL_DATA=${2:-}; EVAL_N=${3:-20}
GGUF=$(python -c 'from think.base_llm import resolve_base; d, f = resolve_base("smollm2"); print(d / f)')
P=.smol-payload
rm -rf .smol[0-9]* "$P" && mkdir -p "$P"
# The device's Python 3.12 lacks these (the GGUF reader and pycodec2 come in the payload).
ls .whl/soxr-*.whl >/dev/null 2>&1 || pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any \
  -d .whl soundfile cffi pycparser soxr webrtcvad-wheels
repo=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
whl=$(du -cb .whl 2>/dev/null | tail -1 | cut -f1)
room=$(( (64 << 20) - repo - whl - (2 << 20) ))       # bytes one stage may hold
ln -s "$(realpath "$GGUF")" "$P/$(basename "$GGUF")" && basename "$GGUF" > "$P/gguf.name"
python docs/recipes/pack_lm_shards.py pack "$SHARDS" "$P/shards" --splits train,val,test --max-mb 64
pip download -q --no-deps --only-binary=:all: -d "$P" "gguf==$(python -c 'import importlib.metadata as m; print(m.version("gguf"))')"
if [ -n "$EVAL_DATA" ]; then  # the device runs Python 3.12 without pycodec2
  python docs/recipes/pack_eval_data.py pack "$EVAL_DATA" "$P/eval" --limit "$EVAL_N" --max-mb 12
  pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 -d "$P" \
    "pycodec2==$(python -c 'import importlib.metadata as m; print(m.version("pycodec2"))')"
fi
if [ -n "${FROM_DELTA:-}" ]; then  # the delta's own files, not the evaluations kept beside it
  mkdir -p "$P/from-delta"
  for f in "$FROM_DELTA"/*; do if [ -f "$f" ]; then ln -s "$(realpath "$f")" "$P/from-delta/"; fi; done
fi
if [ -n "${LM_SHARDS:-}" ]; then
  python docs/recipes/pack_lm_shards.py pack "$LM_SHARDS" "$P/lm-shards" --splits train,val --kinds shards --max-mb 64
fi
if [ -n "${LM_INIT:-}" ]; then
  mkdir -p "$P/lm-init"
  for f in "$LM_INIT"/*; do if [ -f "$f" ]; then ln -s "$(realpath "$f")" "$P/lm-init/"; fi; done
fi
if [ -n "${RECOGNIZER:-}" ]; then cp -r "$RECOGNIZER" "$P/recognizer"; fi
mkdir -p .smol-parts && rm -f .smol-parts/*
tar cf - -h -C "$P" . | split -b "$room" -a 2 - .smol-parts/part-
cat .smol-parts/part-* | sha256sum | cut -d' ' -f1 > .smol-parts/sha256
i=0
for part in .smol-parts/part-*; do i=$((i + 1)); mkdir -p ".smol$i" && mv "$part" ".smol$i/"; done
mv .smol-parts/sha256 ".smol$i/payload.sha256" && touch ".smol$i/LAST" && rmdir .smol-parts
grep -qx '/.smol\*/' .git/info/exclude 2>/dev/null || echo '/.smol*/' >> .git/info/exclude
du -sh "$P" -L; du -sh .smol[0-9]*
echo "$i device calls: carry .smol1 .. .smol$i in turn (the last one with .whl)"
