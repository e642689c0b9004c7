// Row-wise fused kernels for training in bf16 (f32 arithmetic). Compiled to PTX by
// harness/build.rs (feature `cuda`); Rust side: harness/src/model/kernels.rs. Each replaces a
// chain of candle element-wise ops that would each read and write the whole tensor.
#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    return v;
}

// p = softmax(s * scale + bias) over rows of `cols`; one warp per row. Row r of s is
// (b, h, l) = (r / (H L), (r / L) % H, r % L); bias (optional) has rows b·L + l when
// bias_batched, else l (a (B|1, 1, L, T) additive mask).
extern "C" __global__ void softmax_bias_bf16(const bf16* s, const bf16* bias, bf16* p, uint32_t rows, uint32_t cols,
                                             uint32_t H, uint32_t L, uint32_t bias_batched, float scale) {
    uint32_t row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const bf16* x = s + (size_t)row * cols;
    const bf16* bb = nullptr;
    if (bias) {
        uint32_t l = row % L, b = row / (H * L);
        bb = bias + (size_t)(bias_batched ? b * L + l : l) * cols;
    }
    float m = -INFINITY;
    for (uint32_t j = lane; j < cols; j += 32) {
        float v = __bfloat162float(x[j]) * scale + (bb ? __bfloat162float(bb[j]) : 0.f);
        m = fmaxf(m, v);
    }
    m = warp_max(m);
    float sum = 0.f;
    for (uint32_t j = lane; j < cols; j += 32) {
        float v = __bfloat162float(x[j]) * scale + (bb ? __bfloat162float(bb[j]) : 0.f);
        sum += __expf(v - m);
    }
    sum = warp_sum(sum);
    float inv = 1.f / sum;
    bf16* y = p + (size_t)row * cols;
    for (uint32_t j = lane; j < cols; j += 32) {
        float v = __bfloat162float(x[j]) * scale + (bb ? __bfloat162float(bb[j]) : 0.f);
        y[j] = __float2bfloat16(__expf(v - m) * inv);
    }
}

// Softmax backward: ds = p ⊙ (dp − Σ p⊙dp) per row; one warp per row.
extern "C" __global__ void softmax_bwd_bf16(const bf16* p, const bf16* dp, bf16* ds, uint32_t rows, uint32_t cols) {
    uint32_t row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const bf16* pr = p + (size_t)row * cols;
    const bf16* gr = dp + (size_t)row * cols;
    float dot = 0.f;
    for (uint32_t j = lane; j < cols; j += 32) dot += __bfloat162float(pr[j]) * __bfloat162float(gr[j]);
    dot = warp_sum(dot);
    bf16* o = ds + (size_t)row * cols;
    for (uint32_t j = lane; j < cols; j += 32) {
        float pv = __bfloat162float(pr[j]);
        o[j] = __float2bfloat16(pv * (__bfloat162float(gr[j]) - dot));
    }
}

// RMSNorm backward for x: r = 1/sqrt(mean(x²) + eps), m = mean(g⊙w⊙x),
// dx = r ⊙ (g⊙w − x ⊙ r² m); one warp per row.
// `res` (optional, rows × cols) is added to the result: the residual stream's gradient.
extern "C" __global__ void rms_norm_bwd_bf16(const bf16* x, const bf16* w, const bf16* g, const bf16* res, bf16* dx,
                                             uint32_t rows, uint32_t cols, float eps) {
    uint32_t row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const bf16* xr = x + (size_t)row * cols;
    const bf16* gr = g + (size_t)row * cols;
    float ss = 0.f, gwx = 0.f;
    for (uint32_t j = lane; j < cols; j += 32) {
        float xv = __bfloat162float(xr[j]);
        ss += xv * xv;
        gwx += __bfloat162float(gr[j]) * __bfloat162float(w[j]) * xv;
    }
    ss = warp_sum(ss);
    gwx = warp_sum(gwx);
    float r = rsqrtf(ss / cols + eps);
    float m = gwx / cols;
    bf16* o = dx + (size_t)row * cols;
    const bf16* rr = res ? res + (size_t)row * cols : nullptr;
    for (uint32_t j = lane; j < cols; j += 32) {
        float xv = __bfloat162float(xr[j]);
        float gw = __bfloat162float(gr[j]) * __bfloat162float(w[j]);
        o[j] = __float2bfloat16(r * (gw - xv * r * r * m) + (rr ? __bfloat162float(rr[j]) : 0.f));
    }
}

// Cross-entropy forward over rows of `cols` logits; one block per row.
// out[3·row + 0] = lse, [+1] = lse − x[t], [+2] = 1 when x[t] is strictly greater than every
// other logit of the row: the number of logits >= x[t] is exactly 1 (x[t] itself), so a tie for
// the maximum is a miss, and so is a NaN x[t] (count 0). The composite counts the same way.
extern "C" __global__ void ce_fwd_bf16(const bf16* x, const uint32_t* t, float* out, uint32_t rows, uint32_t cols) {
    __shared__ float red[32];
    __shared__ float cnt[32];
    uint32_t row = blockIdx.x;
    if (row >= rows) return;
    const bf16* xr = x + (size_t)row * cols;
    int lane = threadIdx.x & 31, wid = threadIdx.x / 32, nw = blockDim.x / 32;
    float xt = __bfloat162float(xr[t[row]]);
    float m = -INFINITY, c = 0.f;
    for (uint32_t j = threadIdx.x; j < cols; j += blockDim.x) {
        float xv = __bfloat162float(xr[j]);
        m = fmaxf(m, xv);
        c += xv >= xt ? 1.f : 0.f;
    }
    m = warp_max(m);
    c = warp_sum(c);  // counts stay exact in f32 up to 2^24 columns
    if (lane == 0) {
        red[wid] = m;
        cnt[wid] = c;
    }
    __syncthreads();
    if (wid == 0) {
        float v = lane < nw ? red[lane] : -INFINITY;
        float k = lane < nw ? cnt[lane] : 0.f;
        v = warp_max(v);
        k = warp_sum(k);
        if (lane == 0) {
            red[0] = v;
            cnt[0] = k;
        }
    }
    __syncthreads();
    m = red[0];
    c = cnt[0];
    __syncthreads();
    float s = 0.f;
    for (uint32_t j = threadIdx.x; j < cols; j += blockDim.x) s += __expf(__bfloat162float(xr[j]) - m);
    s = warp_sum(s);
    if (lane == 0) red[wid] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        float tot = 0.f;
        for (int i = 0; i < nw; i++) tot += red[i];
        float lse = m + logf(tot);
        out[3 * (size_t)row] = lse;
        out[3 * (size_t)row + 1] = lse - xt;
        out[3 * (size_t)row + 2] = c == 1.f ? 1.f : 0.f;
    }
}

// Cross-entropy backward: dx = (exp(x − lse) − onehot(t)) · g per row.
extern "C" __global__ void ce_bwd_bf16(const bf16* x, const uint32_t* t, const float* lse, const float* g, bf16* dx,
                                       uint32_t rows, uint32_t cols) {
    size_t n = (size_t)rows * cols;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t row = i / cols, j = i % cols;
        float gv = g[row];
        float d = __expf(__bfloat162float(x[i]) - lse[row]) * gv;
        if (j == t[row]) d -= gv;
        dx[i] = __float2bfloat16(d);
    }
}

// SwiGLU: y = silu(g) ⊙ u, elementwise over n values; 8 values (16 bytes) per thread and step
// where the buffers allow it (candle's allocations are 256-byte aligned), a scalar tail after.
__device__ __forceinline__ float silu_mul(float g, float u) { return g / (1.f + __expf(-g)) * u; }

extern "C" __global__ void swiglu_fwd_bf16(const bf16* g, const bf16* u, bf16* y, uint64_t n) {
    uint64_t tid = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x, stride = (uint64_t)gridDim.x * blockDim.x;
    bool aligned = (((uintptr_t)g | (uintptr_t)u | (uintptr_t)y) & 15) == 0;
    uint64_t n8 = aligned ? n / 8 : 0;
    for (uint64_t i = tid; i < n8; i += stride) {
        uint4 gv = reinterpret_cast<const uint4*>(g)[i], uv = reinterpret_cast<const uint4*>(u)[i], yv;
        const __nv_bfloat162* g2 = reinterpret_cast<const __nv_bfloat162*>(&gv);
        const __nv_bfloat162* u2 = reinterpret_cast<const __nv_bfloat162*>(&uv);
        __nv_bfloat162* y2 = reinterpret_cast<__nv_bfloat162*>(&yv);
        for (int k = 0; k < 4; k++) {
            float2 gf = __bfloat1622float2(g2[k]), uf = __bfloat1622float2(u2[k]);
            y2[k] = __floats2bfloat162_rn(silu_mul(gf.x, uf.x), silu_mul(gf.y, uf.y));
        }
        reinterpret_cast<uint4*>(y)[i] = yv;
    }
    for (uint64_t i = n8 * 8 + tid; i < n; i += stride) y[i] = __float2bfloat16(silu_mul(__bfloat162float(g[i]), __bfloat162float(u[i])));
}

// SwiGLU backward: with s = σ(g), dg = dy·u·s·(1 + g(1 − s)), du = dy·g·s. out = [dg; du] (2n);
// vectorised as the forward (8 values per thread and step; n % 8 == 0 keeps du's half aligned).
__device__ __forceinline__ void swiglu_grad(float g, float u, float d, float* dg, float* du) {
    float s = 1.f / (1.f + __expf(-g));
    *dg = d * u * s * (1.f + g * (1.f - s));
    *du = d * g * s;
}

extern "C" __global__ void swiglu_bwd_bf16(const bf16* g, const bf16* u, const bf16* dy, bf16* out, uint64_t n) {
    uint64_t tid = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x, stride = (uint64_t)gridDim.x * blockDim.x;
    bool aligned = (((uintptr_t)g | (uintptr_t)u | (uintptr_t)dy | (uintptr_t)out) & 15) == 0;
    uint64_t n8 = (aligned && n % 8 == 0) ? n / 8 : 0;
    for (uint64_t i = tid; i < n8; i += stride) {
        uint4 gv = reinterpret_cast<const uint4*>(g)[i], uv = reinterpret_cast<const uint4*>(u)[i], dv = reinterpret_cast<const uint4*>(dy)[i];
        uint4 ag, au;
        const __nv_bfloat162* g2 = reinterpret_cast<const __nv_bfloat162*>(&gv);
        const __nv_bfloat162* u2 = reinterpret_cast<const __nv_bfloat162*>(&uv);
        const __nv_bfloat162* d2 = reinterpret_cast<const __nv_bfloat162*>(&dv);
        __nv_bfloat162* og = reinterpret_cast<__nv_bfloat162*>(&ag);
        __nv_bfloat162* ou = reinterpret_cast<__nv_bfloat162*>(&au);
        for (int k = 0; k < 4; k++) {
            float2 gf = __bfloat1622float2(g2[k]), uf = __bfloat1622float2(u2[k]), df = __bfloat1622float2(d2[k]);
            float a0, b0, a1, b1;
            swiglu_grad(gf.x, uf.x, df.x, &a0, &b0);
            swiglu_grad(gf.y, uf.y, df.y, &a1, &b1);
            og[k] = __floats2bfloat162_rn(a0, a1);
            ou[k] = __floats2bfloat162_rn(b0, b1);
        }
        reinterpret_cast<uint4*>(out)[i] = ag;
        reinterpret_cast<uint4*>(out + n)[i] = au;
    }
    for (uint64_t i = n8 * 8 + tid; i < n; i += stride) {
        float a, b;
        swiglu_grad(__bfloat162float(g[i]), __bfloat162float(u[i]), __bfloat162float(dy[i]), &a, &b);
        out[i] = __float2bfloat16(a);
        out[n + i] = __float2bfloat16(b);
    }
}
