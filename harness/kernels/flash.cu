// FlashAttention-2-style attention for head width 64, bf16 in/out with f32 accumulation, on the
// tensor cores (mma.sync m16n8k16 bf16, operands fed by ldmatrix from swizzled shared memory).
// Compiled to PTX by harness/build.rs (feature `cuda`); Rust side: harness/src/kernels/flash.rs,
// whose module doc describes the algorithm. No (B, H, L, T) matrix is ever written.
//
// Layouts (all row-major, contiguous):
//   q     (B, H, L, 64)       k, v   (B, Hkv, T, 64)       bias (B | 1, 1, L, T) or null
//   o     (B, L, H, 64)       lse    (B, H, L) float2 = (m, log ℓ): row max of s·scale + bias
//                                   and the log of the row's sum of exp(x − m)
//   do    (B, L, H, 64)       dsum   (B, H, L) f32 = rowsum(dO ⊙ O)
//   dq_acc(B, L, H, 64) f32   dq     (B, L, H, 64)      dk, dv (B, T, Hkv, 64)
// Query head h uses kv head h / (H / Hkv).
//
// Fragment layouts of mma.m16n8k16 (PTX ISA "Matrix Fragments for mma.m16n8k16"), with
// g = lane / 4 and c = lane % 4:
//   A (16 × 16, row): a0 = (g, 2c..2c+1), a1 = (g+8, 2c..), a2 = (g, 2c+8..), a3 = (g+8, 2c+8..)
//   B (16 × 8, col):  b0 = (k 2c..2c+1, n g), b1 = (k 2c+8..2c+9, n g)
//   C (16 × 8, f32):  c0, c1 = (g, 2c), (g, 2c+1); c2, c3 = (g+8, 2c), (g+8, 2c+1)
// so the C fragments of two adjacent n-tiles are, packed to bf16, the A fragment of one k-chunk.
#define DH 64       // head width
#define BR 64       // query rows per tile
#define BC 64       // keys per tile
#define NTHREADS 128  // 4 warps; each owns 16 rows (queries in forward, keys in backward)
#define LOG2E 1.4426950408889634f

#ifdef FLASH_EMU
// CPU emulation of the CUDA primitives below (one OS thread per CUDA thread), for testing the
// kernels' indexing without a GPU: harness/kernels/flash_emu/ (run.sh).
#include "flash_emu/emu.h"
#else
// The CUDA primitives: async copies, ldmatrix, mma, bf16 packing, exp2.
#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ uint32_t smem_u32(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

// 16 bytes global → shared, asynchronous; zero-filled when !valid (gmem must still be a valid address).
__device__ __forceinline__ void cp_async16(bf16* smem, const bf16* gmem, bool valid) {
    int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem)), "l"(gmem), "r"(n) : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

// Four 8×8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i, which lands in r_i:
// lane l holds (row l/4, columns 2(l%4), 2(l%4)+1) of each matrix (of its transpose with _t).
__device__ __forceinline__ void ldsm_x4(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3, const bf16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(smem_u32(p))
                 : "memory");
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3, const bf16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(smem_u32(p))
                 : "memory");
}

// c (16×8 f32) += a (16×16 bf16) · b (16×8 bf16)
__device__ __forceinline__ void mma(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats → bf16x2, `lo` in the low half (the lower column index of a fragment pair).
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

__device__ __forceinline__ float ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}
#endif  // FLASH_EMU

// Offset (in bf16 elements) of (row r, column col) in a 64-column tile whose 16-byte chunks are
// XOR-swizzled: chunk col/8 of row r sits at chunk (col/8) ^ (r % 8), so the eight row addresses
// of one ldmatrix (same column, eight consecutive rows) fall in eight different bank groups.
__device__ __forceinline__ int swz(int r, int col) { return r * DH + ((((col >> 3) ^ (r & 7))) << 3) + (col & 7); }

// The score of one (query, key) pair, written once so forward and backward round alike.
__device__ __forceinline__ float score(float s, float scale, float bias) { return fmaf(s, scale, bias); }

// Load a 64 × 64 bf16 tile (rows `row0..row0+63` of a matrix with `stride` elements between rows,
// `nrows` rows valid) into swizzled shared memory; rows past the end are zero.
__device__ __forceinline__ void load_tile(bf16* s, const bf16* g, int row0, int nrows, size_t stride, int tid) {
#pragma unroll
    for (int c = tid; c < 64 * 8; c += NTHREADS) {
        int r = c >> 3, ch = c & 7;
        int gr = row0 + r;
        bool ok = gr < nrows;
        cp_async16(&s[swz(r, ch * 8)], g + (size_t)(ok ? gr : 0) * stride + ch * 8, ok);
    }
}

// ---------------------------------------------------------------------------------------------
// Forward. Grid (ceil(L/64), H, B), 128 threads. Warp w owns query rows i0 + 16w .. +15 and keeps
// its Q fragments, O accumulator (16 × 64 f32), running max m and partial sum ℓ in registers; the
// block walks the key tiles of its kv head: S = Q Kᵀ, x = S·scale + bias (−inf past T),
// m' = max(m, rowmax x), O ← O·e^(m−m') + e^(x−m') V, ℓ ← ℓ·e^(m−m') + Σ e^(x−m').
// Output O / ℓ and (m, log ℓ). A row whose keys are all masked by a finite bias (−1e9) has
// x ≈ −1e9 everywhere and comes out as the uniform average, like the composite softmax.
extern "C" __global__ void __launch_bounds__(NTHREADS) flash_fwd_bf16(
    const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v, const bf16* __restrict__ bias,
    bf16* __restrict__ o, float2* __restrict__ lse, uint32_t H, uint32_t Hkv, uint32_t L, uint32_t T,
    uint32_t bias_batched, float scale) {
    __shared__ __align__(128) bf16 sQ[BR * DH];
    __shared__ __align__(128) bf16 sK[BC * DH];
    __shared__ __align__(128) bf16 sV[BC * DH];
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, c4 = lane & 3;
    const int i0 = blockIdx.x * BR;
    const int h = blockIdx.y, b = blockIdx.z;
    const int hk = h / (H / Hkv);
    const int iL = (int)L, iT = (int)T;
    const bf16* qh = q + (size_t)(b * H + h) * L * DH;
    const bf16* kh = k + (size_t)(b * Hkv + hk) * T * DH;
    const bf16* vh = v + (size_t)(b * Hkv + hk) * T * DH;
    const bf16* bb = bias ? bias + (size_t)(bias_batched ? b : 0) * L * T : nullptr;

    load_tile(sQ, qh, i0, iL, DH, tid);
    cp_async_wait_all();
    __syncthreads();
    // ldmatrix lane roles: lane l addresses row (l & 7) of matrix l >> 3
    const int mi = lane >> 3, mr = lane & 7;
    uint32_t qa[4][4];  // A fragments of Q (16 rows × 64), one per 16-wide k-chunk
#pragma unroll
    for (int kk = 0; kk < 4; kk++)
        ldsm_x4(qa[kk][0], qa[kk][1], qa[kk][2], qa[kk][3], &sQ[swz(warp * 16 + (mi & 1) * 8 + mr, kk * 16 + (mi >> 1) * 8)]);

    const int rowA = i0 + warp * 16 + g, rowB = rowA + 8;  // the two query rows of this thread
    const bool inA = rowA < iL, inB = rowB < iL;
    float m_run[2] = {-INFINITY, -INFINITY};
    float l_run[2] = {0.f, 0.f};  // this thread's share of ℓ (its 16 columns of each tile)
    float acc[8][4];
#pragma unroll
    for (int n = 0; n < 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) acc[n][e] = 0.f;

    const int nkb = (iT + BC - 1) / BC;
    for (int kb = 0; kb < nkb; kb++) {
        const int j0 = kb * BC;
        __syncthreads();  // every warp is done with the previous K, V tiles
        load_tile(sK, kh, j0, iT, DH, tid);
        load_tile(sV, vh, j0, iT, DH, tid);
        cp_async_wait_all();
        __syncthreads();

        // S = Q Kᵀ: 16 × 64, n-tile nt = keys j0 + 8nt .. +7
        float s[8][4];
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
#pragma unroll
            for (int e = 0; e < 4; e++) s[nt][e] = 0.f;
#pragma unroll
            for (int kp = 0; kp < 2; kp++) {
                uint32_t b0, b1, b2, b3;  // B of k-chunks 2kp (b0, b1) and 2kp+1 (b2, b3)
                ldsm_x4(b0, b1, b2, b3, &sK[swz(nt * 8 + mr, kp * 32 + mi * 8)]);
                mma(s[nt], qa[2 * kp], b0, b1);
                mma(s[nt], qa[2 * kp + 1], b2, b3);
            }
        }
        // x = S·scale + bias, −inf past T; tile row max
        float mt[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int row = e < 2 ? rowA : rowB;
                const bool rin = e < 2 ? inA : inB;
                const int col = j0 + nt * 8 + 2 * c4 + (e & 1);
                float x = -INFINITY;
                if (col < iT) {
                    float bv = (bb && rin) ? __bfloat162float(bb[(size_t)row * T + col]) : 0.f;
                    x = score(s[nt][e], scale, bv);
                }
                s[nt][e] = x;
                mt[e >> 1] = fmaxf(mt[e >> 1], x);
            }
        }
        float mbase[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            mt[r] = fmaxf(mt[r], __shfl_xor_sync(0xffffffff, mt[r], 1));
            mt[r] = fmaxf(mt[r], __shfl_xor_sync(0xffffffff, mt[r], 2));
            const float mn = fmaxf(m_run[r], mt[r]);
            mbase[r] = mn == -INFINITY ? 0.f : mn;  // keeps (−inf) − (−inf) out
            const float corr = ex2((m_run[r] - mbase[r]) * LOG2E);  // 0 on the first tile
            m_run[r] = mn;
            l_run[r] *= corr;
#pragma unroll
            for (int n = 0; n < 8; n++) {
                acc[n][2 * r] *= corr;
                acc[n][2 * r + 1] *= corr;
            }
        }
        // P = e^(x − m'), packed to bf16 A fragments (key chunk kc = n-tiles 2kc, 2kc+1)
        uint32_t pa[4][4];
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const float p = ex2((s[nt][e] - mbase[e >> 1]) * LOG2E);
                s[nt][e] = p;
                l_run[e >> 1] += p;
            }
        }
#pragma unroll
        for (int kc = 0; kc < 4; kc++) {
            pa[kc][0] = pack_bf16(s[2 * kc][0], s[2 * kc][1]);
            pa[kc][1] = pack_bf16(s[2 * kc][2], s[2 * kc][3]);
            pa[kc][2] = pack_bf16(s[2 * kc + 1][0], s[2 * kc + 1][1]);
            pa[kc][3] = pack_bf16(s[2 * kc + 1][2], s[2 * kc + 1][3]);
        }
        // O += P V: B[k = key][n = d] = V[key][d], transposed loads; d-tiles 2np, 2np+1
#pragma unroll
        for (int kc = 0; kc < 4; kc++) {
#pragma unroll
            for (int np = 0; np < 4; np++) {
                uint32_t b0, b1, b2, b3;
                ldsm_x4_t(b0, b1, b2, b3, &sV[swz(kc * 16 + (mi & 1) * 8 + mr, np * 16 + (mi >> 1) * 8)]);
                mma(acc[2 * np], pa[kc], b0, b1);
                mma(acc[2 * np + 1], pa[kc], b2, b3);
            }
        }
    }
    // ℓ over the row's four threads; O / ℓ; (m, log ℓ)
#pragma unroll
    for (int r = 0; r < 2; r++) {
        l_run[r] += __shfl_xor_sync(0xffffffff, l_run[r], 1);
        l_run[r] += __shfl_xor_sync(0xffffffff, l_run[r], 2);
    }
    const float inv0 = l_run[0] > 0.f ? 1.f / l_run[0] : 0.f;
    const float inv1 = l_run[1] > 0.f ? 1.f / l_run[1] : 0.f;
    const size_t ostride = (size_t)H * DH;
    bf16* oA = o + ((size_t)b * L + rowA) * ostride + (size_t)h * DH;
    bf16* oB = oA + 8 * ostride;
#pragma unroll
    for (int nt = 0; nt < 8; nt++) {
        const int col = nt * 8 + 2 * c4;
        if (inA) *reinterpret_cast<uint32_t*>(oA + col) = pack_bf16(acc[nt][0] * inv0, acc[nt][1] * inv0);
        if (inB) *reinterpret_cast<uint32_t*>(oB + col) = pack_bf16(acc[nt][2] * inv1, acc[nt][3] * inv1);
    }
    if (c4 == 0) {
        // a row with no finite score at all (a −inf bias everywhere) gets m = 0, log ℓ = +inf:
        // backward then sees P = 0 there
        float2* lh = lse + (size_t)(b * H + h) * L;
        if (inA) lh[rowA] = make_float2(m_run[0] == -INFINITY ? 0.f : m_run[0], l_run[0] > 0.f ? logf(l_run[0]) : INFINITY);
        if (inB) lh[rowB] = make_float2(m_run[1] == -INFINITY ? 0.f : m_run[1], l_run[1] > 0.f ? logf(l_run[1]) : INFINITY);
    }
}

// ---------------------------------------------------------------------------------------------
// Backward, step 1: dsum[b, h, i] = Σ_d dO[b, i, h, d] · O[b, i, h, d]; one warp per (b, i, h)
// row (rows in the memory order of O), eight rows per 256-thread block.
extern "C" __global__ void flash_bwd_dot_bf16(const bf16* __restrict__ o, const bf16* __restrict__ dout,
                                              float* __restrict__ dsum, uint32_t rows, uint32_t H, uint32_t L) {
    const uint32_t row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const __nv_bfloat162 a = reinterpret_cast<const __nv_bfloat162*>(o + (size_t)row * DH)[lane];
    const __nv_bfloat162 d = reinterpret_cast<const __nv_bfloat162*>(dout + (size_t)row * DH)[lane];
    float s = __bfloat162float(a.x) * __bfloat162float(d.x) + __bfloat162float(a.y) * __bfloat162float(d.y);
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffff, s, off);
    if (lane == 0) {
        const uint32_t h = row % H, i = (row / H) % L, b = row / (H * L);
        dsum[((size_t)b * H + h) * L + i] = s;
    }
}

// Backward, step 2. Grid (ceil(T/64), Hkv, B), 128 threads. The block keeps K_j, V_j (64 keys of kv
// head hk) in shared memory; warp w owns keys j0 + 16w .. +15 and accumulates their dK, dV
// (16 × 64 f32 each) in registers over every query head of the group and every query tile:
//   Sᵀ = K Qᵀ, Pᵀ = e^(Sᵀ·scale + biasᵀ − m − log ℓ), dV += Pᵀ dO, dPᵀ = V dOᵀ,
//   dSᵀ = Pᵀ ⊙ (dPᵀ − dsum), dK += dSᵀ Q;
// dSᵀ goes through shared memory (bf16) so that warp w can then form dQ for query rows
// i0 + 16w .. +15 over all 64 keys, added into dq_acc with atomics (unscaled: the conversion
// applies `scale`). dK (× scale) and dV are written once at the end. Queries past L and keys past
// T get P = 0, so they add nothing anywhere.
extern "C" __global__ void __launch_bounds__(NTHREADS) flash_bwd_bf16(
    const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
    const bf16* __restrict__ dout, const float2* __restrict__ lse, const float* __restrict__ dsum,
    const bf16* __restrict__ bias, float* __restrict__ dq_acc, bf16* __restrict__ dk, bf16* __restrict__ dv,
    uint32_t H, uint32_t Hkv, uint32_t L, uint32_t T, uint32_t bias_batched, float scale) {
    __shared__ __align__(128) bf16 sK[BC * DH];
    __shared__ __align__(128) bf16 sV[BC * DH];
    __shared__ __align__(128) bf16 sQ[BR * DH];
    __shared__ __align__(128) bf16 sdO[BR * DH];
    __shared__ __align__(128) bf16 sdS[BC * BR];  // dSᵀ: row = key, column = query
    __shared__ float sM[BR], sLl[BR], sD[BR];
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, c4 = lane & 3;
    const int mi = lane >> 3, mr = lane & 7;
    const int j0 = blockIdx.x * BC;
    const int hk = blockIdx.y, b = blockIdx.z;
    const int rep = H / Hkv;
    const int iL = (int)L, iT = (int)T;
    const size_t dstride = (size_t)H * DH;  // between rows of dO (and of dq_acc)

    load_tile(sK, k + (size_t)(b * Hkv + hk) * T * DH, j0, iT, DH, tid);
    load_tile(sV, v + (size_t)(b * Hkv + hk) * T * DH, j0, iT, DH, tid);
    cp_async_wait_all();
    __syncthreads();
    uint32_t ka[4][4], va[4][4];  // A fragments of this warp's 16 keys of K and V
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
        const int off = swz(warp * 16 + (mi & 1) * 8 + mr, kk * 16 + (mi >> 1) * 8);
        ldsm_x4(ka[kk][0], ka[kk][1], ka[kk][2], ka[kk][3], &sK[off]);
        ldsm_x4(va[kk][0], va[kk][1], va[kk][2], va[kk][3], &sV[off]);
    }
    const int keyA = j0 + warp * 16 + g, keyB = keyA + 8;  // this thread's two keys
    const bool kinA = keyA < iT, kinB = keyB < iT;
    float dK[8][4], dV[8][4];
#pragma unroll
    for (int n = 0; n < 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) dK[n][e] = dV[n][e] = 0.f;

    const int nqb = (iL + BR - 1) / BR;
    for (int r = 0; r < rep; r++) {
        const int h = hk * rep + r;
        const bf16* qh = q + (size_t)(b * H + h) * L * DH;
        const bf16* doh = dout + (size_t)b * L * dstride + (size_t)h * DH;
        const float2* lh = lse + (size_t)(b * H + h) * L;
        const float* dh = dsum + (size_t)(b * H + h) * L;
        float* dqh = dq_acc + (size_t)b * L * dstride + (size_t)h * DH;
        const bf16* bb = bias ? bias + (size_t)(bias_batched ? b : 0) * L * T : nullptr;
        for (int ib = 0; ib < nqb; ib++) {
            const int i0 = ib * BR;
            __syncthreads();  // every warp is done with sQ, sdO, sdS and the row stats
            load_tile(sQ, qh, i0, iL, DH, tid);
            load_tile(sdO, doh, i0, iL, dstride, tid);
            if (tid < BR) {
                const int gi = i0 + tid;
                const bool ok = gi < iL;
                const float2 st = ok ? lh[gi] : make_float2(0.f, 0.f);
                sM[tid] = st.x;
                sLl[tid] = st.y;
                sD[tid] = ok ? dh[gi] : 0.f;
            }
            cp_async_wait_all();
            __syncthreads();

            // Sᵀ = K Qᵀ: 16 keys × 64 queries, n-tile nt = queries i0 + 8nt .. +7
            float st[8][4];
#pragma unroll
            for (int nt = 0; nt < 8; nt++) {
#pragma unroll
                for (int e = 0; e < 4; e++) st[nt][e] = 0.f;
#pragma unroll
                for (int kp = 0; kp < 2; kp++) {
                    uint32_t b0, b1, b2, b3;
                    ldsm_x4(b0, b1, b2, b3, &sQ[swz(nt * 8 + mr, kp * 32 + mi * 8)]);
                    mma(st[nt], ka[2 * kp], b0, b1);
                    mma(st[nt], ka[2 * kp + 1], b2, b3);
                }
            }
            // Pᵀ (element e: key e < 2 ? keyA : keyB, query i0 + 8nt + 2c4 + (e & 1))
#pragma unroll
            for (int nt = 0; nt < 8; nt++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int key = e < 2 ? keyA : keyB;
                    const bool kin = e < 2 ? kinA : kinB;
                    const int ql = nt * 8 + 2 * c4 + (e & 1);
                    const int qi = i0 + ql;
                    float p = 0.f;
                    if (kin && qi < iL) {
                        const float bv = bb ? __bfloat162float(bb[(size_t)qi * T + key]) : 0.f;
                        const float x = score(st[nt][e], scale, bv);
                        p = ex2(((x - sM[ql]) - sLl[ql]) * LOG2E);
                    }
                    st[nt][e] = p;
                }
            }
            uint32_t pa[4][4];  // A fragments of Pᵀ, k-chunk kc = queries i0 + 16kc .. +15
#pragma unroll
            for (int kc = 0; kc < 4; kc++) {
                pa[kc][0] = pack_bf16(st[2 * kc][0], st[2 * kc][1]);
                pa[kc][1] = pack_bf16(st[2 * kc][2], st[2 * kc][3]);
                pa[kc][2] = pack_bf16(st[2 * kc + 1][0], st[2 * kc + 1][1]);
                pa[kc][3] = pack_bf16(st[2 * kc + 1][2], st[2 * kc + 1][3]);
            }
            // dV += Pᵀ dO: B[k = query][n = d] = dO[query][d], transposed loads
#pragma unroll
            for (int kc = 0; kc < 4; kc++) {
#pragma unroll
                for (int np = 0; np < 4; np++) {
                    uint32_t b0, b1, b2, b3;
                    ldsm_x4_t(b0, b1, b2, b3, &sdO[swz(kc * 16 + (mi & 1) * 8 + mr, np * 16 + (mi >> 1) * 8)]);
                    mma(dV[2 * np], pa[kc], b0, b1);
                    mma(dV[2 * np + 1], pa[kc], b2, b3);
                }
            }
            // dPᵀ = V dOᵀ: 16 keys × 64 queries; B[k = d][n = query] = dO[query][d]
            float dpt[8][4];
#pragma unroll
            for (int nt = 0; nt < 8; nt++) {
#pragma unroll
                for (int e = 0; e < 4; e++) dpt[nt][e] = 0.f;
#pragma unroll
                for (int kp = 0; kp < 2; kp++) {
                    uint32_t b0, b1, b2, b3;
                    ldsm_x4(b0, b1, b2, b3, &sdO[swz(nt * 8 + mr, kp * 32 + mi * 8)]);
                    mma(dpt[nt], va[2 * kp], b0, b1);
                    mma(dpt[nt], va[2 * kp + 1], b2, b3);
                }
            }
            // dSᵀ = Pᵀ ⊙ (dPᵀ − dsum[query])
#pragma unroll
            for (int nt = 0; nt < 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) dpt[nt][e] = st[nt][e] * (dpt[nt][e] - sD[nt * 8 + 2 * c4 + (e & 1)]);
            uint32_t dsa[4][4];
#pragma unroll
            for (int kc = 0; kc < 4; kc++) {
                dsa[kc][0] = pack_bf16(dpt[2 * kc][0], dpt[2 * kc][1]);
                dsa[kc][1] = pack_bf16(dpt[2 * kc][2], dpt[2 * kc][3]);
                dsa[kc][2] = pack_bf16(dpt[2 * kc + 1][0], dpt[2 * kc + 1][1]);
                dsa[kc][3] = pack_bf16(dpt[2 * kc + 1][2], dpt[2 * kc + 1][3]);
            }
            // dK += dSᵀ Q: B[k = query][n = d] = Q[query][d], transposed loads
#pragma unroll
            for (int kc = 0; kc < 4; kc++) {
#pragma unroll
                for (int np = 0; np < 4; np++) {
                    uint32_t b0, b1, b2, b3;
                    ldsm_x4_t(b0, b1, b2, b3, &sQ[swz(kc * 16 + (mi & 1) * 8 + mr, np * 16 + (mi >> 1) * 8)]);
                    mma(dK[2 * np], dsa[kc], b0, b1);
                    mma(dK[2 * np + 1], dsa[kc], b2, b3);
                }
            }
            // dSᵀ → shared: row = local key (16w + g, +8), columns = local queries
            {
                const int rA = warp * 16 + g, rB = rA + 8;
#pragma unroll
                for (int kc = 0; kc < 4; kc++) {
                    *reinterpret_cast<uint32_t*>(&sdS[swz(rA, kc * 16 + 2 * c4)]) = dsa[kc][0];
                    *reinterpret_cast<uint32_t*>(&sdS[swz(rB, kc * 16 + 2 * c4)]) = dsa[kc][1];
                    *reinterpret_cast<uint32_t*>(&sdS[swz(rA, kc * 16 + 8 + 2 * c4)]) = dsa[kc][2];
                    *reinterpret_cast<uint32_t*>(&sdS[swz(rB, kc * 16 + 8 + 2 * c4)]) = dsa[kc][3];
                }
            }
            __syncthreads();
            // dQ rows i0 + 16w .. +15 += dS K over the 64 keys: A[query][key] = dSᵀ[key][query]
            // (transposed loads of sdS), B[k = key][n = d] = K[key][d] (transposed loads of sK)
            float dqa[8][4];
#pragma unroll
            for (int n = 0; n < 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) dqa[n][e] = 0.f;
#pragma unroll
            for (int kc = 0; kc < 4; kc++) {
                uint32_t a[4];
                ldsm_x4_t(a[0], a[1], a[2], a[3], &sdS[swz(kc * 16 + (mi >> 1) * 8 + mr, warp * 16 + (mi & 1) * 8)]);
#pragma unroll
                for (int np = 0; np < 4; np++) {
                    uint32_t b0, b1, b2, b3;
                    ldsm_x4_t(b0, b1, b2, b3, &sK[swz(kc * 16 + (mi & 1) * 8 + mr, np * 16 + (mi >> 1) * 8)]);
                    mma(dqa[2 * np], a, b0, b1);
                    mma(dqa[2 * np + 1], a, b2, b3);
                }
            }
            const int qA = i0 + warp * 16 + g, qB = qA + 8;
#pragma unroll
            for (int nt = 0; nt < 8; nt++) {
                const int col = nt * 8 + 2 * c4;
                if (qA < iL) {
                    atomicAdd(&dqh[(size_t)qA * dstride + col], dqa[nt][0]);
                    atomicAdd(&dqh[(size_t)qA * dstride + col + 1], dqa[nt][1]);
                }
                if (qB < iL) {
                    atomicAdd(&dqh[(size_t)qB * dstride + col], dqa[nt][2]);
                    atomicAdd(&dqh[(size_t)qB * dstride + col + 1], dqa[nt][3]);
                }
            }
        }
    }
    // dK · scale and dV for keys keyA, keyB: (B, T, Hkv, 64)
    const size_t kstride = (size_t)Hkv * DH;
    bf16* dkA = dk + ((size_t)b * T + keyA) * kstride + (size_t)hk * DH;
    bf16* dvA = dv + ((size_t)b * T + keyA) * kstride + (size_t)hk * DH;
#pragma unroll
    for (int nt = 0; nt < 8; nt++) {
        const int col = nt * 8 + 2 * c4;
        if (kinA) {
            *reinterpret_cast<uint32_t*>(dkA + col) = pack_bf16(dK[nt][0] * scale, dK[nt][1] * scale);
            *reinterpret_cast<uint32_t*>(dvA + col) = pack_bf16(dV[nt][0], dV[nt][1]);
        }
        if (kinB) {
            *reinterpret_cast<uint32_t*>(dkA + 8 * kstride + col) = pack_bf16(dK[nt][2] * scale, dK[nt][3] * scale);
            *reinterpret_cast<uint32_t*>(dvA + 8 * kstride + col) = pack_bf16(dV[nt][2], dV[nt][3]);
        }
    }
}

// Backward, step 3: dq = bf16(dq_acc · scale), elementwise over n values.
extern "C" __global__ void flash_dq_convert_bf16(const float* __restrict__ acc, bf16* __restrict__ dq, float scale, uint64_t n) {
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x)
        dq[i] = __float2bfloat16(acc[i] * scale);
}
