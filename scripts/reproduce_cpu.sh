#!/usr/bin/env bash
# Regenerates docs/results.md, docs/results/ and docs/figures/results_*.png: the paper's findings measured on
# a 2-core CPU (about 1.5 h) on Fashion-MNIST and cluttered-fashion. Interrupted? Run it again: finished
# runs are kept and skipped. OUT=... JOBS=... override the run folder and the commands run at once.
#   bash scripts/reproduce_cpu.sh                 # the full reproduction
#   OUT=/tmp/smoke bash scripts/reproduce_cpu.sh --scale 0.01 --seeds 1 --docs /tmp/smoke-docs   # a smoke run
set -euo pipefail
cd "$(dirname "$0")/.."
make venv
OUT=${OUT:-runs/reproduce_cpu}
JOBS=${JOBS:-2}
mkdir -p "$OUT"
for stage in train eval report; do
  # the runner's progress lines also go to $OUT/reproduce.log, where the report reads the wall time
  .venv/bin/python scripts/reproduce_cpu.py "$stage" --out "$OUT" --jobs "$JOBS" "$@" 2>&1 | tee -a "$OUT/reproduce.log"
done
