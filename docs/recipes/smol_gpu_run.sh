# The SmolLM2 speech base on the GPU machine (issue 8), in three calls made back to back: the machine keeps
# /tmp while it stays warm (~30 s), and one call carries at most 64 MiB with the repo. Stage here first:
#   bash docs/recipes/smol_gpu_stage.sh runs/smol/shards-v2          # -> .smol1 .smol2 .smol3 (git-ignored)
# then, on the device, from the repo root: call 1 carries .smol1, call 2 .smol2, call 3 .smol3 (+ .whl):
#   bash docs/recipes/smol_gpu_run.sh A_SECONDS B_SECONDS [key=value ...]
# Calls 1 and 2 only stage their part; call 3 (its stage holds LAST) joins the GGUF, checks its sha256, trains
# stage a for A_SECONDS and stage b for B_SECONDS and returns the delta in 15 MB parts
# ($OUT/smol-delta.tgz.part*; here: cat them | tar xzf - -C DIR, then `duplex model init --base smollm2 --delta`).
set -u
A=${1:-240}; B=${2:-240}
S=/tmp/smol; mkdir -p "$S"
for d in .smol*/; do [ -d "$d" ] && cp -r "$d". "$S/"; done
if [ ! -f "$S/LAST" ]; then echo "staged: $(ls "$S" | tr '\n' ' ')"; exit 0; fi
GGUF=$S/$(cat "$S/gguf.name")
cat "$S"/gguf.part-* > "$GGUF"
(cd "$S" && sha256sum -c gguf.sha256) || { echo "the GGUF parts do not join into the staged file"; exit 1; }
python3 -c 'import soundfile, soxr, webrtcvad, gguf' 2>/dev/null || python3 -m pip install -q --no-index --no-deps \
  --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl "$S"/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 docs/recipes/pack_lm_shards.py unpack "$S/shards" "$S/shards-full" || exit 1
OUT=${OUT:-runs/smol-gpu-out}; mkdir -p "$OUT"
timeout $((A + B + 240)) python3 docs/recipes/smol_gpu_train.py "$GGUF" "$S/shards-full" runs/smol-gpu "$A" "$B" "${@:3}" 2>&1 | tail -n 6
for d in a speech-base; do mkdir -p runs/smol-gpu/delta/$d && cp runs/smol-gpu/$d/{metrics.jsonl,loss.png,train_config.json,final_metrics.json} runs/smol-gpu/delta/$d/ 2>/dev/null; done
(cd runs/smol-gpu/delta && tar czf - .) | split -b 15m - "$OUT/smol-delta.tgz.part"
ls -la "$OUT"
