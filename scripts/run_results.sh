#!/usr/bin/env bash
# Run one results row and copy its record into results/<id>/.
# Usage: scripts/run_results.sh ID medclass train ... --name ID
# (run from the repository root with the venv active; runs go to runs/ID)
set -euo pipefail
id=$1; shift
mkdir -p results/$id
start=$(date -u +%Y-%m-%dT%H:%M:%SZ)
"$@" 2>&1 | tee results/$id/train.log
out=results/$id
cp runs/$id/config.yaml runs/$id/train_summary.json runs/$id/metrics.csv runs/$id/curves.png runs/$id/classes.json $out/
mkdir -p $out/eval-test
cp runs/$id/eval-test/metrics.json runs/$id/eval-test/confusion_matrix.png runs/$id/eval-test/roc.png $out/eval-test/
echo "$*" > $out/command.txt
python - "$out" "$start" <<'PY'
import json, os, platform, sys, torch
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
n = os.cpu_count()
json.dump({"summary": f"CPU, {n} cores", "cpu": cpu, "cores": n, "torch": torch.__version__,
           "python": platform.python_version(), "started_utc": sys.argv[2]}, open(os.path.join(sys.argv[1], "hardware.json"), "w"), indent=1)
PY
