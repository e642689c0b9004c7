#!/usr/bin/env bash
# Source this to build `harness` with the `cuda` feature on a machine without a system CUDA toolkit
# (and without a GPU): it installs the CUDA 13.0 compiler, headers and link-time libraries from
# NVIDIA's PyPI wheels into a virtualenv, makes the unversioned .so names the linker wants, and a
# link-only libcuda.so stub (at run time the GPU machine's driver provides libcuda.so.1).
#
#   source scripts/cuda-toolchain.sh && cargo build --release -p harness --features cuda
#
# Env: CUDA_VENV (default ~/.cache/ddm-sft-cuda13), CUDA_COMPUTE_CAP (default 90: H100/H200).
# nvcc is pinned to 13.0.x: the target driver (580.x) speaks CUDA 13.0, and candle 0.11 links the
# CUDA 13 user-space libraries (cudarc 0.19) dynamically, so the binary must be built against 13.
# Run `cargo fetch` first so the stub covers every driver symbol cudarc binds.
set -e
CUDA_VENV=${CUDA_VENV:-$HOME/.cache/ddm-sft-cuda13}
[ -x "$CUDA_VENV/bin/python" ] || python3 -m venv "$CUDA_VENV"
_site=$("$CUDA_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
_cu=$_site/nvidia/cu13
if [ ! -x "$_cu/bin/nvcc" ]; then
  "$CUDA_VENV/bin/pip" install -q --no-deps \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96 \
    nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 nvidia-cublas==13.1.0.3 nvidia-curand==10.4.0.35
fi
# NCCL=1: NCCL for data-parallel training (the `nccl` feature links libnccl.so.2)
if [ -n "${NCCL:-}" ] && ! ls "$_cu/lib/libnccl.so.2" >/dev/null 2>&1; then
  "$CUDA_VENV/bin/pip" install -q --no-deps nvidia-nccl-cu13==2.28.9
  _nccl=$(ls -d "$_site"/nvidia/nccl/lib 2>/dev/null || ls -d "$_site"/nvidia/cu13/lib)
  [ -e "$_nccl/libnccl.so.2" ] && ln -sf "$_nccl/libnccl.so.2" "$_cu/lib/libnccl.so.2" && ln -sf "$_nccl/libnccl.so.2" "$_cu/lib/libnccl.so"
fi
if [ ! -e "$_cu/lib/stubs/libcuda.so" ] || [ -n "${CUDA_STUB_REBUILD:-}" ]; then
  (
    cd "$_cu/lib"
    for l in cublas cublasLt nvrtc cudart; do ln -sf "lib$l.so.13" "lib$l.so"; done
    ln -sf libcurand.so.10 libcurand.so
    mkdir -p stubs
    {
      # driver API names declared by cuda.h, in every API-version variant
      for def in "" -DCUDA_API_PER_THREAD_DEFAULT_STREAM -D__CUDA_API_VERSION_INTERNAL; do
        gcc -E -P $def -I"$_cu/include" "$_cu/include/cuda.h" | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | tr -d '( \t'
      done
      # and every name cudarc's bindings load
      cat "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-*/src/driver/sys/*.rs 2>/dev/null |
        grep -ohE 'pub (unsafe )?fn cu[A-Z][A-Za-z0-9_]*' | awk '{print $NF}'
    } | sort -u | awk '{printf "int %s(void){return 999;}\n", $1}' > stubs/stub.c
    gcc -shared -fPIC -O0 -Wl,-soname,libcuda.so.1 -o stubs/libcuda.so stubs/stub.c
    rm -f stubs/stub.c
  )
fi
export PATH=$_cu/bin:$PATH CUDA_HOME=$_cu CUDA_PATH=$_cu CUDA_ROOT=$_cu
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90} CUDARC_CUDA_VERSION=13000
export CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-$(nproc)}
export LIBRARY_PATH=$_cu/lib:$_cu/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}
set +e
