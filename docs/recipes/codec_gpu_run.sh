# The GPU run behind the shipped fsq weights: four `codec-gpu` variants side by side on one GPU for $1
# seconds each (430 for the shipped run), from the repo root, with .codecgpu/data made by
# docs/recipes/pack_codec_data.py and wheels of soundfile, cffi, pycparser in .whl/ (see the codec card).
# g3 (6 ids per 80 ms, no adversarial stage) is what ships; each variant comes back as $OUT/NAME.tgz.
B=${1:-430}
python3 -c 'import soundfile' 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-runs/codec-gpu-out}; mkdir -p "$OUT"
python3 docs/recipes/codec_gpu_train_one.py g2 $B model.groups=2 > $OUT/g2.log 2>&1 &
python3 docs/recipes/codec_gpu_train_one.py g2adv $B model.groups=2 adversarial=true > $OUT/g2adv.log 2>&1 &
python3 docs/recipes/codec_gpu_train_one.py g3 $B > $OUT/g3.log 2>&1 &
python3 docs/recipes/codec_gpu_train_one.py g3adv $B adversarial=true > $OUT/g3adv.log 2>&1 &
wait
for n in g2 g2adv g3 g3adv; do
  tail -n 1 $OUT/$n.log
  [ -d runs/$n/best ] && tar czf $OUT/$n.tgz -C runs/$n best history.jsonl config.yaml losses.png
done
