# One GPU call: a duplex model trained on carried shards for $1 seconds; the checkpoint comes back in
# 15 MB parts ($OUT/NAME.tgz.part*; `cat NAME.tgz.part* | tar xzf - -C DIR` here). From the repo root, with
# the shards in .lmgpu/shards (train + val, <= ~45 MB with the repo) and wheels of soundfile, cffi, pycparser,
# soxr and webrtcvad-wheels for python 3.12 in .whl/ (the GPU image lacks them). Extra args: key=value (see
# lm_gpu_train.py; e.g. continue the shipped default on the listening mix). Note: data-v2's train + val shards
# with their listening sequences pack to 58 MiB (pack_lm_shards.py), more than one call carries with the repo.
# CONTROL='key=value ...': a second run beside the first on the same GPU and shards (its args replace the
# first run's extra args), e.g. the same run without the one setting under test; it comes back as lm-control.
B=${1:-230}
python3 -c 'import soundfile, soxr, webrtcvad' 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-runs/lm-gpu-out}; mkdir -p "$OUT"
if [ -n "${CONTROL:-}" ]; then
  # shellcheck disable=SC2086  # CONTROL is a list of key=value words
  timeout $((B + 45)) python3 docs/recipes/lm_gpu_train.py $B .lmgpu/shards runs/lm-control $CONTROL > control.log 2>&1 &
fi
timeout $((B + 45)) python3 docs/recipes/lm_gpu_train.py $B .lmgpu/shards runs/lm-gpu "${@:2}" 2>&1 | tail -n 5
wait
[ -n "${CONTROL:-}" ] && tail -n 5 control.log
for run in lm-gpu lm-control; do
  [ -d "runs/$run" ] && (cd "runs/$run" && tar czf - --exclude=last --exclude=init . | split -b 15m - "$OUT/$run.tgz.part")
done
ls -la "$OUT"
