# The SmolLM2 speech base on the GPU machine (issue 8), in three calls made back to back: the machine keeps
# /tmp while it stays warm (~30 s), and one call carries at most 64 MiB with the repo. Stage here first:
#   bash docs/recipes/smol_gpu_stage.sh runs/smol/shards-v2          # -> .smol1 .smol2 .smol3 (git-ignored)
# then, on the device, from the repo root: call 1 carries .smol1, call 2 .smol2, call 3 .smol3 (+ .whl):
#   bash docs/recipes/smol_gpu_run.sh A_SECONDS B_SECONDS [key=value ...]
# Calls 1 and 2 only stage their part; call 3 (its stage holds LAST) joins the GGUF, checks its sha256, trains
# stage a for A_SECONDS and stage b for B_SECONDS, scores the speech base on the staged test dialogues
# (if any: `duplex eval --device cuda`, at most E_SECONDS) and returns the delta in 15 MB parts
# ($OUT/smol-delta.tgz.part*; here: cat them | tar xzf - -C DIR, and tar xzf smol-eval.tgz -C DIR; then
# `duplex model init --base smollm2 --delta`; score the tiny default here on the same dialogues with
# `duplex eval --data runs/data-v2 --limit N` for the side-by-side table).
#   bash docs/recipes/smol_gpu_run.sh A_SECONDS B_SECONDS [E_SECONDS] [key=value ...]
# The defaults fit a 15-minute device budget (the machine's start, ~3 min, and calls 1 and 2 included): call 3
# takes about A + B + E + 150 s (installs, unpacking, the merges, the delta, and the listening check of both
# stages, at most 60 s each), under the 600 s a call may run.
set -u
A=${1:-150}; B=${2:-180}; E=90
shift $(( $# < 2 ? $# : 2 ))
case "${1:-}" in ''|*=*) ;; *) E=$1; shift ;; esac
S=/tmp/smol; mkdir -p "$S"
for d in .smol*/; do [ -d "$d" ] && cp -r "$d". "$S/"; done
if [ ! -f "$S/LAST" ]; then echo "staged: $(ls "$S" | tr '\n' ' ')"; exit 0; fi
GGUF=$S/$(cat "$S/gguf.name")
cat "$S"/gguf.part-* > "$GGUF"
(cd "$S" && sha256sum -c gguf.sha256) || { echo "the GGUF parts do not join into the staged file"; exit 1; }
python3 -c 'import soundfile, soxr, webrtcvad, gguf, pycodec2' 2>/dev/null || python3 -m pip install -q --no-index --no-deps \
  --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl "$S"/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 docs/recipes/pack_lm_shards.py unpack "$S/shards" "$S/shards-full" || exit 1
OUT=${OUT:-runs/smol-gpu-out}; mkdir -p "$OUT"
timeout $((A + B + 150)) python3 docs/recipes/smol_gpu_train.py "$GGUF" "$S/shards-full" runs/smol-gpu "$A" "$B" "$@" 2>&1 | tail -n 6
for d in a speech-base; do mkdir -p runs/smol-gpu/delta/$d && cp runs/smol-gpu/$d/{metrics.jsonl,loss.png,train_config.json,final_metrics.json} runs/smol-gpu/delta/$d/ 2>/dev/null; done
# The delta goes to $OUT before the eval: what is under $OUT comes back even if the call runs out of time.
(cd runs/smol-gpu/delta && tar czf - .) | split -b 15m - "$OUT/smol-delta.tgz.part"
# Does each stage hear? Transcripts of 40 test turns, own vs another turn's audio (needs the test split packed).
mkdir -p runs/smol-gpu/delta/eval
for m in a speech-base; do
  [ -f runs/smol-gpu/$m/config.json ] && ls "$S"/shards-full/align-test-* >/dev/null 2>&1 &&
    timeout 60 python3 docs/diagnostics/speech_base_listening.py runs/smol-gpu/$m "$S/shards-full" "${LISTEN_TURNS:-40}" \
      > runs/smol-gpu/delta/eval/listening-$m.json 2>> "$S/listening.log" &&
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], 'hears:', d['real'], 'other turn:', d['other_turn'])" \
      runs/smol-gpu/delta/eval/listening-$m.json $m
done
tar czf "$OUT/smol-eval.tgz" -C runs/smol-gpu/delta eval  # again after the eval: this copy survives a time-out
if [ -d "$S/eval" ] && [ -f runs/smol-gpu/speech-base/config.json ]; then
  python3 docs/recipes/pack_eval_data.py unpack "$S/eval" "$S/eval-data" >/dev/null &&
  n=$(ls "$S"/eval-data/*.json | wc -l) &&
  # SIGINT, not timeout's SIGTERM: eval writes the dialogues it scored so far ("complete": false)
  timeout -s INT -k 20 "$E" python3 -m agent.cli eval --data "$S/eval-data" --model runs/smol-gpu/speech-base --device "${EVAL_DEVICE:-cuda}" \
    --limit "$n" --out runs/smol-gpu/delta/eval -q > "$S/eval.log" 2>&1
  [ -f runs/smol-gpu/delta/eval/eval.json ] && tail -n 17 "$S/eval.log" || { echo "eval of $n dialogues scored none within $E s:"; tail -n 3 "$S/eval.log"; }
fi
tar czf "$OUT/smol-eval.tgz" -C runs/smol-gpu/delta eval
ls -la "$OUT"
