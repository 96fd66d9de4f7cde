# The SmolLM2 speech base on the GPU machine (issue 8), in N calls made back to back: the machine keeps /tmp
# while it stays warm (~30 s), and one call carries at most 64 MiB with the repo. Stage here first:
#   FROM_DELTA=... RECOGNIZER=... bash docs/recipes/smol_gpu_stage.sh SHARDS [EVAL_DATA [EVAL_N]]  # -> .smol1 .. .smolN
# then, on the device, from the repo root: call i carries .smol<i> (the last one also .whl):
#   bash docs/recipes/smol_gpu_run.sh A_SECONDS B_SECONDS [E_SECONDS] [key=value ...]
# Calls before the last only stage their part; the last (its stage holds LAST) joins the parts, checks their
# sha256, unpacks, trains stage a for A_SECONDS and stage b for B_SECONDS (docs/recipes/smol_gpu_train.py; 0
# skips a stage; from the staged delta if there is one), returns the delta in 15 MB parts
# ($OUT/smol-delta.tgz.part*; here: cat them | tar xzf - -C DIR, and tar xzf smol-eval.tgz -C DIR; then
# `duplex model init --base smollm2 --delta`), and scores the speech base on the staged test dialogues (if
# any: `duplex eval --device cuda`, at most E_SECONDS; with the staged recogniser writing the heard text).
# The last call takes about A + B + E + 150 s (installs, unpacking, the merges, the delta, and the listening
# check of each stage, at most 60 s each; LISTEN_TURNS=0 skips it), under the 600 s a call may run.
# A tiny-model run staged beside it (LM_SHARDS=, LM_INIT=) trains on the same GPU at the same time
# (docs/recipes/lm_gpu_train.py for LM_SECONDS, default A + B, with LM_ARGS: key=value ...; from the staged
# checkpoint if any) and comes back as $OUT/lm-gpu.tgz.part*.
# One call brings back at most ~60 MiB (RETURN_MB): parts past that wait on the device, and one more call on the
# warm machine, `bash docs/recipes/smol_gpu_run.sh rest`, brings the next ~60 MiB of them.
set -u
S=/tmp/smol; mkdir -p "$S"
OUT=${OUT:-runs/smol-gpu-out}; mkdir -p "$OUT"
keep_returnable() {  # by file name: what fits in RETURN_MB goes to $OUT, the rest waits in $S/later
  local total=0 name size
  mkdir -p "$S/later" && mv "$OUT"/* "$S/later/" 2>/dev/null
  for name in $(ls "$S/later"); do
    size=$(stat -c %s "$S/later/$name")
    if [ $((total + size)) -le $((${RETURN_MB:-60} << 20)) ]; then total=$((total + size)); mv "$S/later/$name" "$OUT/"; fi
  done
  local left; left=$(ls "$S/later" | wc -l)
  [ "$left" -eq 0 ] || echo "$left parts wait on the device ($(ls "$S/later" | tr '\n' ' ')): call 'bash docs/recipes/smol_gpu_run.sh rest' now"
}
if [ "${1:-}" = rest ]; then keep_returnable; ls -la "$OUT"; exit 0; fi
A=${1:-150}; B=${2:-180}; E=90
shift $(( $# < 2 ? $# : 2 ))
case "${1:-}" in ''|*=*) ;; *) E=$1; shift ;; esac
for d in .smol[0-9]*/; do [ -d "$d" ] && cp -r "$d". "$S/"; done
if [ ! -f "$S/LAST" ]; then echo "staged: $(ls "$S" | tr '\n' ' ')"; exit 0; fi
[ "$(cat "$S"/part-* | sha256sum | cut -d' ' -f1)" = "$(cat "$S/payload.sha256")" ] ||
  { echo "the staged parts do not join into the payload (a call missing?): $(ls "$S" | tr '\n' ' ')"; exit 1; }
cat "$S"/part-* | tar xf - -C "$S" && rm -f "$S"/part-*
GGUF=$S/$(cat "$S/gguf.name")
python3 -c 'import soundfile, soxr, webrtcvad, gguf, pycodec2' 2>/dev/null || python3 -m pip install -q --no-index --no-deps \
  --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl "$S"/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 docs/recipes/pack_lm_shards.py unpack "$S/shards" "$S/shards-full" || exit 1
LM_PID=
if [ -d "$S/lm-shards" ]; then
  python3 docs/recipes/pack_lm_shards.py unpack "$S/lm-shards" "$S/lm-shards-full" >/dev/null || exit 1
  LM_INIT=(); [ -d "$S/lm-init" ] && LM_INIT=("init=$S/lm-init")
  # shellcheck disable=SC2086  # LM_ARGS: key=value words
  timeout $((${LM_SECONDS:-$((A + B))} + 60)) python3 docs/recipes/lm_gpu_train.py "${LM_SECONDS:-$((A + B))}" \
    "$S/lm-shards-full" runs/lm-gpu model_preset=tiny "${LM_INIT[@]}" ${LM_ARGS:-} > "$S/lm.log" 2>&1 &
  LM_PID=$!
fi
FROM=(); [ -d "$S/from-delta" ] && FROM=(--from-delta "$S/from-delta")
timeout $((A + B + 150)) python3 docs/recipes/smol_gpu_train.py "$GGUF" "$S/shards-full" runs/smol-gpu "$A" "$B" "${FROM[@]}" "$@" 2>&1 | tail -n 6
for d in a speech-base; do mkdir -p runs/smol-gpu/delta/$d && cp runs/smol-gpu/$d/{metrics.jsonl,loss.png,train_config.json,final_metrics.json} runs/smol-gpu/delta/$d/ 2>/dev/null; done
# The delta goes to $OUT before the eval: what is under $OUT comes back even if the call runs out of time.
(cd runs/smol-gpu/delta && tar czf - .) | split -b 15m - "$OUT/smol-delta.tgz.part"
if [ -n "$LM_PID" ]; then
  wait "$LM_PID"; echo "tiny model: $(tail -n 2 "$S/lm.log")"
  (cd runs/lm-gpu && tar czf - --exclude=last --exclude=init .) | split -b 15m - "$OUT/lm-gpu.tgz.part"
fi
# Does each stage hear? Transcripts of test turns, own vs another turn's audio (needs the test split packed).
mkdir -p runs/smol-gpu/delta/eval
for m in a speech-base; do
  [ "${LISTEN_TURNS:-40}" -gt 0 ] && [ -f runs/smol-gpu/$m/config.json ] && ls "$S"/shards-full/align-test-* >/dev/null 2>&1 &&
    timeout 60 python3 docs/diagnostics/speech_base_listening.py runs/smol-gpu/$m "$S/shards-full" "${LISTEN_TURNS:-40}" \
      > runs/smol-gpu/delta/eval/listening-$m.json 2>> "$S/listening.log" &&
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], 'hears:', d['real'], 'other turn:', d['other_turn'])" \
      runs/smol-gpu/delta/eval/listening-$m.json $m
done
tar czf "$OUT/smol-eval.tgz" -C runs/smol-gpu/delta eval  # again after the eval: this copy survives a time-out
if [ -d "$S/eval" ] && [ -f runs/smol-gpu/speech-base/config.json ]; then
  HEARD=(); [ -d "$S/recognizer" ] && HEARD=(--set heard.source=recognizer --set "heard.recognizer=$S/recognizer"
                                             --set "heard.during_agent_turn=${HEARD_DURING_AGENT_TURN:-true}")
  python3 docs/recipes/pack_eval_data.py unpack "$S/eval" "$S/eval-data" >/dev/null &&
  n=$(ls "$S"/eval-data/*.json | wc -l) &&
  # SIGINT, not timeout's SIGTERM: eval writes the dialogues it scored so far ("complete": false)
  timeout -s INT -k 20 "$E" python3 -m agent.cli eval --data "$S/eval-data" --model runs/smol-gpu/speech-base --device "${EVAL_DEVICE:-cuda}" \
    --limit "$n" --out runs/smol-gpu/delta/eval "${HEARD[@]}" -q > "$S/eval.log" 2>&1
  [ -f runs/smol-gpu/delta/eval/eval.json ] && tail -n 17 "$S/eval.log" || { echo "eval of $n dialogues scored none within $E s:"; tail -n 3 "$S/eval.log"; }
fi
tar czf "$OUT/smol-eval.tgz" -C runs/smol-gpu/delta eval
keep_returnable
ls -la "$OUT"
