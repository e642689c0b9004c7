#!/usr/bin/env bash
# Run both benchmarks on the same machine, one after the other, into one folder, then render the
# side-by-side table (table.md). Usage: bash bench/run.sh [BIN] [OUTDIR] [--quick]
set -euo pipefail
BIN=${1:-target/release/harness}; OUT=${2:-}; QUICK=${3:-}
if [ -z "$OUT" ]; then OUT=results/bench/$(date -u +%Y%m%d-%H%M%S)-$(git rev-parse --short HEAD 2>/dev/null || echo nogit); fi
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>/dev/null || echo cpu > "$OUT/gpu.txt"
"$BIN" bench --out "$OUT" $QUICK 2>&1 | tee "$OUT/candle.log"
${PYTHON:-python3} bench/torch_reference.py $QUICK > "$OUT/torch.jsonl" 2> "$OUT/torch.log" || { echo "torch side failed, see $OUT/torch.log"; tail -5 "$OUT/torch.log"; }
"$BIN" bench-table "$OUT"
