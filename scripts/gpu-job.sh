#!/usr/bin/env bash
# Run harness jobs on a GPU machine that has no Rust (the device machines): the CUDA binary built
# here (`make cuda`) travels xz-compressed in .gpu/, the CUDA 13 user-space libraries come from the
# machine's PyTorch wheels, and the driver provides libcuda.so.1.
#   bash scripts/gpu-job.sh selfcheck|bench|ops|study NAME [NAME...]|shell CMD...
# Results go to $OUT (the folder that comes back) as tarballs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
BIN=/tmp/harness
if [ ! -x "$BIN" ]; then
  if command -v xz >/dev/null; then xz -dc .gpu/harness.xz > "$BIN"
  else python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],"wb"))' .gpu/harness.xz "$BIN"; fi
  chmod +x "$BIN"
fi
# the Python that has PyTorch (and with it the CUDA 13 wheels)
PY=python3
for p in python3 /opt/torch/.venv/bin/python3; do
  if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import torch' 2>/dev/null; then PY=$p; break; fi
done
export PYTHON=$PY
libs=""
for so in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libcupti.so.13 libnccl.so.2; do
  d=$("$PY" - "$so" <<'PY'
import os, sys, site
name = sys.argv[1]
roots = site.getsitepackages() + [site.getusersitepackages()]
for r in roots:
    for base, _, files in os.walk(os.path.join(r, "nvidia")):
        if name in files:
            print(base); sys.exit(0)
PY
)
  [ -n "$d" ] && case ":$libs:" in *":$d:"*) ;; *) libs=${libs:+$libs:}$d;; esac
done
export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export CUDA_CACHE_MAXSIZE=2147483648 RUST_BACKTRACE=1
# no .git travels: the commit this tree was packed from (scripts/gpu-pack.sh writes it)
if [ -f .gpu/commit ]; then export DDM_GIT_COMMIT=$(cut -d' ' -f1 .gpu/commit) DDM_GIT_DIRTY=$(cut -d' ' -f2 .gpu/commit); fi
# the studies read PubMedQA from ../shared/data/pubmedqa, as on the development machines
if [ -d .gpu/data/pubmedqa ] && [ ! -d ../shared/data/pubmedqa ]; then mkdir -p ../shared/data && cp -r .gpu/data/pubmedqa ../shared/data/; fi
# the default model, assembled from its parts by an earlier call
if [ -f /root/stage/model.gguf ] && [ ! -f models/SmolLM2-135M-Instruct.Q4_1.gguf ]; then mkdir -p models && ln -sf /root/stage/model.gguf models/SmolLM2-135M-Instruct.Q4_1.gguf; fi
job=${1:-selfcheck}; shift || true
case "$job" in
  selfcheck) "$BIN" selfcheck --out "$OUT/selfcheck.json" 2>&1 | tee "$OUT/selfcheck.txt" ;;
  bench)
    dir=results/bench/$(date -u +%Y%m%d-%H%M%S)-$( (cut -c1-7 .gpu/commit || git rev-parse --short HEAD) 2>/dev/null || echo nogit)
    bash bench/run.sh "$BIN" "$dir"
    tar czf "$OUT/bench.tgz" "$dir" ;;
  ops) "$BIN" bench --ops --out "$OUT/ops" 2>&1 | tee "$OUT/ops.txt" | tail -150 ;;
  study)
    for s in "$@"; do "$BIN" study "$s" 2>&1 | tail -60; done
    tar czf "$OUT/results.tgz" results ;;
  shell) "$@" ;;
  *) echo "unknown job $job" >&2; exit 2 ;;
esac
