#!/usr/bin/env bash
# Pack what a GPU machine without Rust needs into .gpu/ (git-ignored): the CUDA binary
# (stripped, xz), the commit it was built from, PubMedQA, and the default model in parts small
# enough to send (< 50 MB each).   bash scripts/gpu-pack.sh [BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/cuda/release/harness}
mkdir -p .gpu
tmp=$(mktemp); cp "$bin" "$tmp"; strip "$tmp" 2>/dev/null || true
xz -T0 -6 -c "$tmp" > .gpu/harness.xz; rm -f "$tmp"
# dirty: uncommitted changes to what the binary and the runs are made of (results/ and the
# notebooks are neither)
dirty=0; [ -n "$(git status --porcelain -- . ':(exclude)results' ':(exclude)notebooks' 2>/dev/null)" ] && dirty=1
echo "$(git rev-parse HEAD) $dirty" > .gpu/commit
if [ -d ../shared/data/pubmedqa ]; then rm -rf .gpu/data; mkdir -p .gpu/data; cp -r ../shared/data/pubmedqa .gpu/data/; fi
m=models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -f "$m" ] && [ ! -f .gpu/model.part-00 ]; then split -b 48M -d "$m" .gpu/model.part-; fi
du -ah .gpu | sort -h | tail
