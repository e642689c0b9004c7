// CPU emulation of the CUDA features flash.cu uses, so that its kernels compile with g++ and run
// on the CPU with one OS thread per CUDA thread (blocks one after another). Tests the indexing of
// tiles, fragments and masks, not speed. Warp-collective operations (ldmatrix, mma.sync,
// __shfl_xor_sync) exchange operands through a per-warp buffer between two barriers and follow
// the PTX ISA's fragment layouts; __shared__ arrays become function statics (shared by the
// threads of the one block that runs at a time). See run.sh.
#pragma once
#include <atomic>
#include <barrier>
#include <cassert>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __restrict__ __restrict
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct uint3_ {
    unsigned x, y, z;
};
inline thread_local uint3_ threadIdx;
inline uint3_ blockIdx, blockDim, gridDim;

struct __nv_bfloat16 {
    uint16_t x;
};
struct __nv_bfloat162 {
    __nv_bfloat16 x, y;
};
typedef __nv_bfloat16 bf16;

inline float __bfloat162float(__nv_bfloat16 h) {
    uint32_t u = uint32_t(h.x) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline __nv_bfloat16 __float2bfloat16(float f) {  // round to nearest even, like __float2bfloat16
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return {uint16_t((u >> 16) | 0x40)};
    u += 0x7fffu + ((u >> 16) & 1u);
    return {uint16_t(u >> 16)};
}

struct float2 {
    float x, y;
};
inline float2 make_float2(float x, float y) { return {x, y}; }

inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }

// ---- the block being run and its warps
struct WarpCtx {
    std::barrier<> bar{32};
    float f[32];
    const bf16* ptr[32];
    uint32_t a[32][4];
    uint32_t b[32][2];
};
struct BlockCtx {
    std::barrier<> bar;
    std::vector<std::unique_ptr<WarpCtx>> warps;
    explicit BlockCtx(int n) : bar(n) {
        for (int i = 0; i < n / 32; i++) warps.push_back(std::make_unique<WarpCtx>());
    }
};
inline BlockCtx* g_block = nullptr;
inline WarpCtx& my_warp() { return *g_block->warps[threadIdx.x / 32]; }
inline int my_lane() { return threadIdx.x & 31; }

inline void __syncthreads() { g_block->bar.arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned, float v, int m) {
    WarpCtx& w = my_warp();
    int l = my_lane();
    w.f[l] = v;
    w.bar.arrive_and_wait();
    float r = w.f[l ^ m];
    w.bar.arrive_and_wait();
    return r;
}

// ---- the primitives flash.cu defines with inline PTX
inline void cp_async16(bf16* smem, const bf16* gmem, bool valid) {
    assert(((uintptr_t)smem & 15) == 0 && ((uintptr_t)gmem & 15) == 0);
    if (valid)
        memcpy(smem, gmem, 16);
    else
        memset(smem, 0, 16);
}
inline void cp_async_wait_all() {}

inline uint32_t pack2(__nv_bfloat16 lo, __nv_bfloat16 hi) { return uint32_t(lo.x) | (uint32_t(hi.x) << 16); }

inline void ldsm_impl(uint32_t* r, const bf16* p, bool trans) {
    assert(((uintptr_t)p & 15) == 0);
    WarpCtx& w = my_warp();
    int l = my_lane();
    w.ptr[l] = p;
    w.bar.arrive_and_wait();
    for (int i = 0; i < 4; i++) {
        if (!trans) {
            const bf16* row = w.ptr[8 * i + l / 4];
            r[i] = pack2(row[2 * (l % 4)], row[2 * (l % 4) + 1]);
        } else {
            // lane l holds M[2(l%4)][l/4], M[2(l%4)+1][l/4] of matrix i (rows = the 8 addresses)
            r[i] = pack2(w.ptr[8 * i + 2 * (l % 4)][l / 4], w.ptr[8 * i + 2 * (l % 4) + 1][l / 4]);
        }
    }
    w.bar.arrive_and_wait();
}
inline void ldsm_x4(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3, const bf16* p) {
    uint32_t r[4];
    ldsm_impl(r, p, false);
    r0 = r[0], r1 = r[1], r2 = r[2], r3 = r[3];
}
inline void ldsm_x4_t(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3, const bf16* p) {
    uint32_t r[4];
    ldsm_impl(r, p, true);
    r0 = r[0], r1 = r[1], r2 = r[2], r3 = r[3];
}

inline float half_of(uint32_t v, int hi) { return __bfloat162float({uint16_t(hi ? v >> 16 : v & 0xffff)}); }

// mma.m16n8k16.row.col f32.bf16.bf16.f32, fragments per the PTX ISA:
// A: lane (g, c) = (l/4, l%4), reg j: row g + 8(j&1), k 2c + 8(j>>1) + {0,1}
// B: reg j: k 2c + 8j + {0,1}, n g;  C: e: row g + 8(e>>1), n 2c + (e&1)
inline void mma(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
    WarpCtx& w = my_warp();
    int l = my_lane();
    for (int j = 0; j < 4; j++) w.a[l][j] = a[j];
    w.b[l][0] = b0;
    w.b[l][1] = b1;
    w.bar.arrive_and_wait();
    auto A = [&](int row, int k) { return half_of(w.a[(row & 7) * 4 + ((k & 7) >> 1)][(row >> 3) + 2 * (k >> 3)], k & 1); };
    auto B = [&](int k, int n) { return half_of(w.b[n * 4 + ((k & 7) >> 1)][k >> 3], k & 1); };
    int g = l >> 2, cc = l & 3;
    float out[4];
    for (int e = 0; e < 4; e++) {
        int row = g + 8 * (e >> 1), col = 2 * cc + (e & 1);
        float s = 0.f;
        for (int k = 0; k < 16; k++) s += A(row, k) * B(k, col);
        out[e] = c[e] + s;
    }
    w.bar.arrive_and_wait();
    for (int e = 0; e < 4; e++) c[e] = out[e];
}

inline uint32_t pack_bf16(float lo, float hi) { return pack2(__float2bfloat16(lo), __float2bfloat16(hi)); }
inline float ex2(float x) { return exp2f(x); }

// ---- launching: the blocks of `grid` one after another, `threads` OS threads each
inline void emu_launch(uint3_ grid, unsigned threads, const std::function<void()>& kernel) {
    gridDim = grid;
    blockDim = {threads, 1, 1};
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                blockIdx = {x, y, z};
                BlockCtx ctx(threads);
                g_block = &ctx;
                std::vector<std::thread> ts;
                for (unsigned t = 0; t < threads; t++)
                    ts.emplace_back([t, &kernel] {
                        threadIdx = {t, 0, 0};
                        kernel();
                    });
                for (auto& t : ts) t.join();
                g_block = nullptr;
            }
}
