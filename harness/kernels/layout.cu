// Data-movement kernels of the training path (bf16), compiled to PTX by harness/build.rs (feature
// `cuda`); Rust side: harness/src/kernels/layout.rs, where each has its composite twin.
#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

// (B, X, Y, W) -> (B, Y, X, W) for rows of W bf16 that are a whole number of 16-byte chunks
// (w16 = W * 2 / 16 chunks per row): each thread moves one 16-byte chunk; writes are coalesced,
// reads are coalesced within each row.
extern "C" __global__ void swap_axes_16b(const uint4* src, uint4* dst, uint32_t B, uint32_t X, uint32_t Y, uint32_t w16) {
    uint64_t n = (uint64_t)B * X * Y * w16;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) {
        // destination index (b, y, x, c)
        uint32_t c = i % w16;
        uint64_t r = i / w16;
        uint32_t x = r % X;
        r /= X;
        uint32_t y = r % Y;
        uint64_t b = r / Y;
        dst[i] = src[((b * X + x) * Y + y) * w16 + c];
    }
}

// dst (M, D) = 0 except dst[rows[i]] = src[i] for i < N (rows distinct): the gradient of gathering
// N distinct rows. dst must be zero-filled by the caller; one block per source row.
extern "C" __global__ void scatter_rows_bf16(const bf16* src, const uint32_t* rows, bf16* dst, uint32_t N, uint32_t D) {
    for (uint32_t i = blockIdx.x; i < N; i += gridDim.x) {
        const bf16* s = src + (size_t)i * D;
        bf16* d = dst + (size_t)rows[i] * D;
        for (uint32_t j = threadIdx.x; j < D; j += blockDim.x) d[j] = s[j];
    }
}

// acc (M, D) f32 += src[i] at row rows[i], for i < N (rows may repeat: atomics): the gradient of an
// embedding lookup. One block per source row.
extern "C" __global__ void index_add_rows_f32(const bf16* src, const uint32_t* rows, float* acc, uint32_t N, uint32_t D) {
    for (uint32_t i = blockIdx.x; i < N; i += gridDim.x) {
        const bf16* s = src + (size_t)i * D;
        float* d = acc + (size_t)rows[i] * D;
        for (uint32_t j = threadIdx.x; j < D; j += blockDim.x) atomicAdd(d + j, __bfloat162float(s[j]));
    }
}
