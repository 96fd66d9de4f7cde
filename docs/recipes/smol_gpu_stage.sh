# Stage the SmolLM2 speech-base run for the GPU machine (see smol_gpu_run.sh): the installed GGUF (98 MB)
# split over .smol1/.smol2/.smol3 and the packed shards + the gguf wheel in .smol3, each stage sized so that
# the repo + .whl (wheels the device lacks, downloaded here once) + it stay under one call's 64 MiB. With
# EVAL_DATA (a `duplex data synth` directory), .smol3 also carries its first EVAL_N test dialogues (FLAC)
# and the pycodec2 wheel, for `duplex eval --device cuda` on the trained speech base there.
# Run from the repo root:
#   bash docs/recipes/smol_gpu_stage.sh SHARDS [EVAL_DATA [EVAL_N]]   # shards: `duplex data tokenize --model <smol init>`
set -eu
SHARDS=$1; EVAL_DATA=${2:-}; EVAL_N=${3:-20}
GGUF=$(python -c 'from think.base_llm import resolve_base; d, f = resolve_base("smollm2"); print(d / f)')
rm -rf .smol1 .smol2 .smol3 && mkdir -p .smol1 .smol2 .smol3
# The device's Python 3.12 lacks these (the GGUF reader and pycodec2 come in .smol3 below).
ls .whl/soxr-*.whl >/dev/null 2>&1 || pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any \
  -d .whl soundfile cffi pycparser soxr webrtcvad-wheels
repo=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
whl=$(du -cb .whl 2>/dev/null | tail -1 | cut -f1)
room=$(( (64 << 20) - repo - whl - (2 << 20) ))       # bytes one stage may hold
python docs/recipes/pack_lm_shards.py pack "$SHARDS" .smol3/shards --splits train,val,test --max-mb $(( room >> 20 ))
pip download -q --no-deps --only-binary=:all: -d .smol3 "gguf==$(python -c 'import importlib.metadata as m; print(m.version("gguf"))')"
if [ -n "$EVAL_DATA" ]; then  # the device runs Python 3.12 without pycodec2
  python docs/recipes/pack_eval_data.py pack "$EVAL_DATA" .smol3/eval --limit "$EVAL_N" --max-mb 12
  pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 -d .smol3 \
    "pycodec2==$(python -c 'import importlib.metadata as m; print(m.version("pycodec2"))')"
fi
left=$(( room - $(du -cb .smol3 | tail -1 | cut -f1) ))
size=$(stat -c %s "$GGUF")
(( size <= 2 * room + left )) || { echo "the GGUF does not fit in three calls beside these shards; pack fewer"; exit 1; }
part=$(( (size - left + 1) / 2 )); (( part < room )) || part=$room
head -c $part "$GGUF" > .smol1/gguf.part-a
tail -c +$((part + 1)) "$GGUF" | head -c $part > .smol2/gguf.part-b
tail -c +$((2 * part + 1)) "$GGUF" > .smol3/gguf.part-c
basename "$GGUF" > .smol3/gguf.name
(cd "$(dirname "$GGUF")" && sha256sum "$(basename "$GGUF")") > .smol3/gguf.sha256
touch .smol3/LAST
grep -qx '/.smol\*/' .git/info/exclude 2>/dev/null || echo '/.smol*/' >> .git/info/exclude
du -sh .smol1 .smol2 .smol3
