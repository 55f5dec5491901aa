#!/bin/bash
# Issue 14 measurements, one after the other, nothing else timed at once.
cd /work/main && . .venv/bin/activate
set -x
R=runs/serve/chest-ct; IMG=../shared/data/chest-ct/test; OUT=benchmarks/results/serve_load
python benchmarks/quantize_int8.py $R --out benchmarks/results/quantize_int8_chest-ct.json
for c in 8 32 64; do
  n=$((c * 20)); [ $n -lt 400 ] && n=400
  for mb in 1 8; do
    python benchmarks/serve_load.py --run $R --images $IMG --clients $c --requests $n --max-batch $mb --out $OUT/torch-batch$mb-c$c.json
    python benchmarks/serve_load.py --run $R --images $IMG --clients $c --requests $n --max-batch $mb --backend onnx --out $OUT/onnx-fp32-batch$mb-c$c.json
    python benchmarks/serve_load.py --run $R --images $IMG --clients $c --requests $n --max-batch $mb --backend onnx --serve-file $R/export/model.int8.onnx --out $OUT/onnx-int8-batch$mb-c$c.json
  done
done
python benchmarks/serve_load.py --run $R --images $IMG --bombs 40 --out $OUT/bombs40-torch.json
python benchmarks/serve_load.py --run $R --images $IMG --bombs 40 --backend onnx --out $OUT/bombs40-onnx.json
echo CHAIN DONE
