#!/usr/bin/env bash
# Run the benchmarks on the same machine, one after the other, into one folder, then render the
# side-by-side tables (table.md): candle (`harness bench`: candle.jsonl, decode.jsonl), the torch
# training references (bench/torch_reference.py: eager HF + peft and torch.compile, torch.jsonl) and
# the torch decoding references (bench/torch_decode.py: torch_decode.jsonl).
# Usage: bash bench/run.sh [BIN] [OUTDIR] [--quick]
# Env knobs (a GPU call can run a subset; the torch side never fails the script):
#   SKIP_CANDLE=1        no candle bench (e.g. torch rows only, into a folder that has candle's)
#   CANDLE_ARGS="..."    extra arguments to `harness bench` (e.g. "--no-decode --steps 5")
#   TORCH_GRID='[["ddm",16,64,512],["ddm",16,64,160]]'   torch training rows [objective, rank, batch, seq]
#   SKIP_TORCH_EAGER=1 / SKIP_TORCH_COMPILE=1            one torch training impl only
#   SKIP_TORCH=1         no torch training rows;  SKIP_TORCH_DECODE=1   no torch decode rows
#   TORCH_ARGS="..."     extra arguments to torch_reference.py (e.g. "--steps 5")
#   DECODE_BATCHES=1,16,64  batch sizes of torch_decode.py;  PYTHON=python3
#   ARCH=smollm2-1.7b|llama2-7b   model shape of both sides (`harness bench --arch`, torch_reference.py
#                        --arch; default smollm2-135m): ddm, LoRA 16, seq 1024 at batch 1, 2, 4, ... until
#                        a step runs out of memory, on each side; no decode rows (torch_decode.py is skipped)
#   MAX_BATCH=64         the largest batch that search tries (--max-batch on both sides)
#   e.g. ARCH=llama2-7b bash bench/run.sh target/release/harness results/bench/7b
set -euo pipefail
BIN=${1:-target/release/harness}; OUT=${2:-}; QUICK=${3:-}
if [ -z "$OUT" ]; then OUT=results/bench/$(date -u +%Y%m%d-%H%M%S)-$(git rev-parse --short HEAD 2>/dev/null || echo nogit); fi
mkdir -p "$OUT"
PY=${PYTHON:-python3}
ARCHARG=(); if [ -n "${ARCH:-}" ]; then ARCHARG=(--arch "$ARCH"); fi
if [ -n "${MAX_BATCH:-}" ]; then ARCHARG+=(--max-batch "$MAX_BATCH"); fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>/dev/null || echo cpu > "$OUT/gpu.txt"
if [ -z "${SKIP_CANDLE:-}" ]; then
  # shellcheck disable=SC2086
  "$BIN" bench --out "$OUT" $QUICK "${ARCHARG[@]}" ${CANDLE_ARGS:-} 2>&1 | tee "$OUT/candle.log"
fi
if [ -z "${SKIP_TORCH:-}" ]; then
  ONLY=()
  if [ -n "${SKIP_TORCH_EAGER:-}" ] && [ -n "${SKIP_TORCH_COMPILE:-}" ]; then ONLY=(skip)
  elif [ -n "${SKIP_TORCH_EAGER:-}" ]; then ONLY=(--only compile)
  elif [ -n "${SKIP_TORCH_COMPILE:-}" ]; then ONLY=(--only eager); fi
  if [ "${ONLY[*]:-}" != skip ]; then
    GRIDARG=(); if [ -n "${TORCH_GRID:-}" ]; then GRIDARG=(--grid "$TORCH_GRID"); fi
    # shellcheck disable=SC2086
    "$PY" bench/torch_reference.py $QUICK "${ONLY[@]}" "${GRIDARG[@]}" "${ARCHARG[@]}" ${TORCH_ARGS:-} >> "$OUT/torch.jsonl" 2>> "$OUT/torch.log" \
      || { echo "torch training side failed, see $OUT/torch.log"; tail -5 "$OUT/torch.log"; }
  fi
fi
if [ -n "${ARCH:-}" ] && [ "$ARCH" != smollm2-135m ]; then SKIP_TORCH_DECODE=1; fi  # decoding is measured at SmolLM2-135M only
if [ -z "${SKIP_TORCH_DECODE:-}" ]; then
  "$PY" bench/torch_decode.py $QUICK ${DECODE_BATCHES:+--batches "$DECODE_BATCHES"} >> "$OUT/torch_decode.jsonl" 2>> "$OUT/torch_decode.log" \
    || { echo "torch decode side failed, see $OUT/torch_decode.log"; tail -5 "$OUT/torch_decode.log"; }
fi
if [ -x "$BIN" ] || command -v "$BIN" >/dev/null 2>&1; then "$BIN" bench-table "$OUT"
else echo "no harness binary at $BIN: render later with 'harness bench-table $OUT'"; fi
