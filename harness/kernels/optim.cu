// Multi-tensor optimizer kernels: one launch covers every parameter of the model.
// Tensor i of a list is the f32 buffer at ptrs[i] with sizes[i] elements; grid.y indexes tensors,
// grid.x strides over elements. Compiled to PTX by harness/build.rs (feature `cuda`).
#include <stdint.h>
#include <cuda_bf16.h>

// dst_i (bf16) = src_i (f32) · scale_i for every tensor i: the compute-dtype copies of the
// trainable tensors (LoRA's A and s·B) for one forward pass, in one launch. `table` holds four
// rows of n entries: source pointers, offsets (elements) of each copy in `dst`, sizes, and the
// scales' f32 bit patterns; it is the same every step, so it is uploaded once.
extern "C" __global__ void cast_scale_multi_bf16(const uint64_t* table, uint64_t n_tensors, __nv_bfloat16* dst) {
    const uint64_t t = blockIdx.y;
    const float* x = reinterpret_cast<const float*>(table[t]);
    __nv_bfloat16* y = dst + table[n_tensors + t];
    const uint64_t n = table[2 * n_tensors + t];
    const float s = __uint_as_float((unsigned int)table[3 * n_tensors + t]);
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x)
        y[i] = __float2bfloat16(x[i] * s);
}

// Σ x² over every tensor, accumulated into out[0] (zeroed by the caller).
extern "C" __global__ void sumsq_multi(const uint64_t* ptrs, const uint64_t* sizes, float* out) {
    const float* x = reinterpret_cast<const float*>(ptrs[blockIdx.y]);
    const uint64_t n = sizes[blockIdx.y];
    float acc = 0.f;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) {
        float v = x[i];
        acc += v * v;
    }
    // warp reduce, then one atomic per warp
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_down_sync(0xffffffff, acc, o);
    if ((threadIdx.x & 31) == 0 && acc != 0.f) atomicAdd(out, acc);
}

// AdamW (PyTorch's rule, decoupled weight decay) on f32 parameters p, moments m, v and
// gradients g scaled by gscale (gradient clipping), all in place.
extern "C" __global__ void adamw_multi(
    const uint64_t* p_ptrs, const uint64_t* m_ptrs, const uint64_t* v_ptrs, const uint64_t* g_ptrs,
    const uint64_t* sizes, float lr, float b1, float b2, float eps, float wd, float bc1, float bc2, float gscale) {
    float* p = reinterpret_cast<float*>(p_ptrs[blockIdx.y]);
    float* m = reinterpret_cast<float*>(m_ptrs[blockIdx.y]);
    float* v = reinterpret_cast<float*>(v_ptrs[blockIdx.y]);
    const float* g = reinterpret_cast<const float*>(g_ptrs[blockIdx.y]);
    const uint64_t n = sizes[blockIdx.y];
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) {
        float gi = g[i] * gscale;
        float mi = b1 * m[i] + (1.f - b1) * gi;
        float vi = b2 * v[i] + (1.f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float pi = p[i];
        if (wd > 0.f) pi = pi * (1.f - lr * wd);
        p[i] = pi - lr * ((mi / bc1) / (sqrtf(vi / bc2) + eps));
    }
}
