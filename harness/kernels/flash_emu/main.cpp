// Runs flash.cu's kernels under the CPU emulation (emu.h) on small cases and compares o, dq, dk,
// dv with a float64 reference of the same attention (same bf16 inputs). Prints one line per
// case and part: max |kernel − reference| / max |reference|, the worst element, and FAIL above
// 2e-2. Exit status 1 on any failure. Build and run: run.sh.
#include "../flash.cu"

#include <cstdio>
#include <random>
#include <string>

static uint32_t hdiv(uint32_t a, uint32_t b) { return (a + b - 1) / b; }

struct Case {
    const char* name;
    int B, H, Hkv, L, T;
    int bias;  // 0 none, 1 shared (1,1,L,T) random mask, 2 batched (B,1,L,T) with empty rows, 3 causal-cache
};

static float bfround(float x) { return __bfloat162float(__float2bfloat16(x)); }

static int failures = 0;

static void report(const std::string& what, const std::vector<float>& got, const std::vector<double>& ref) {
    double scale = 0, worst = 0;
    size_t at = 0, nonfinite = 0;
    for (double r : ref) scale = std::max(scale, std::fabs(r));
    for (size_t i = 0; i < ref.size(); i++) {
        double d = std::isfinite(got[i]) ? std::fabs(got[i] - ref[i]) : INFINITY;
        nonfinite += !std::isfinite(got[i]);
        if (d > worst || (std::isinf(d) && !std::isinf(worst))) worst = d, at = i;
    }
    double rel = worst / std::max(scale, 1e-30);
    bool ok = rel <= 2e-2;
    failures += !ok;
    printf("%-4s %-48s rel %.3e (worst at %zu: %.5f vs %.5f; max|ref| %.3f; %zu non-finite)\n", ok ? "ok" : "FAIL", what.c_str(), rel, at,
           got[at], ref[at], scale, nonfinite);
}

static void run_case(const Case& c, std::mt19937& rng) {
    const int B = c.B, H = c.H, Hkv = c.Hkv, L = c.L, T = c.T, D = DH, rep = H / Hkv;
    const float scale = 1.f / std::sqrt((float)D);
    std::normal_distribution<float> nd(0.f, 1.f);
    auto randv = [&](size_t n, float s) {
        std::vector<float> v(n);
        for (auto& x : v) x = bfround(nd(rng) * s);
        return v;
    };
    std::vector<float> q = randv((size_t)B * H * L * D, 1.5f), k = randv((size_t)B * Hkv * T * D, 1.5f),
                       v = randv((size_t)B * Hkv * T * D, 1.f), dout = randv((size_t)B * L * H * D, 1.f);
    int bb = c.bias == 2 ? B : 1;
    std::vector<float> bias;
    if (c.bias) {
        bias.assign((size_t)bb * L * T, 0.f);
        std::uniform_real_distribution<float> u(0.f, 1.f);
        for (int b = 0; b < bb; b++)
            for (int i = 0; i < L; i++)
                for (int j = 0; j < T; j++) {
                    bool vis = true;
                    if (c.bias == 1) vis = u(rng) < 0.6f || j == i % T;
                    if (c.bias == 2) vis = (j <= i + (T - L)) && !(b == 1 && j < (T - L) + 3);  // row 1: first queries see nothing
                    if (c.bias == 3) vis = j <= i + (T - L);
                    bias[((size_t)b * L + i) * T + j] = vis ? 0.f : bfround(-1e9f);
                }
    }
    auto tobf = [](const std::vector<float>& x) {
        std::vector<bf16> y(x.size());
        for (size_t i = 0; i < x.size(); i++) y[i] = __float2bfloat16(x[i]);
        return y;
    };
    // 16-byte aligned device-like buffers
    std::vector<bf16> qb = tobf(q), kb = tobf(k), vb = tobf(v), db = tobf(dout), biasb = tobf(bias);
    std::vector<bf16> o((size_t)B * L * H * D);
    std::vector<float2> lse((size_t)B * H * L);
    const bf16* bias_ptr = c.bias ? biasb.data() : nullptr;
    uint32_t bat = c.bias == 2;
    emu_launch({hdiv(L, BR), (unsigned)H, (unsigned)B}, NTHREADS, [&] {
        flash_fwd_bf16(qb.data(), kb.data(), vb.data(), bias_ptr, o.data(), lse.data(), H, Hkv, L, T, bat, scale);
    });

    // float64 reference: P, O, then the gradients
    std::vector<double> P((size_t)B * H * L * T), Oref((size_t)B * L * H * D, 0.0);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < L; i++) {
                int hk = h / rep;
                double* p = &P[(((size_t)b * H + h) * L + i) * T];
                double m = -INFINITY;
                for (int j = 0; j < T; j++) {
                    double s = 0;
                    for (int d = 0; d < D; d++) s += (double)q[(((size_t)b * H + h) * L + i) * D + d] * k[(((size_t)b * Hkv + hk) * T + j) * D + d];
                    // the composite's f32 rounding of s·scale + bias, so that rows that see no key
                    // (bias −1e9) are uniform as there
                    float x = (float)(s * scale);
                    if (c.bias) x = x + bias[((size_t)(c.bias == 2 ? b : 0) * L + i) * T + j];
                    p[j] = x;
                    m = std::max(m, p[j]);
                }
                double z = 0;
                for (int j = 0; j < T; j++) z += (p[j] = std::exp(p[j] - m));
                for (int j = 0; j < T; j++) p[j] /= z;
                for (int d = 0; d < D; d++) {
                    double a = 0;
                    for (int j = 0; j < T; j++) a += p[j] * v[(((size_t)b * Hkv + hk) * T + j) * D + d];
                    Oref[(((size_t)b * L + i) * H + h) * D + d] = a;
                }
            }
    std::vector<float> of(o.size());
    for (size_t i = 0; i < o.size(); i++) of[i] = __bfloat162float(o[i]);
    report(std::string(c.name) + " o", of, Oref);

    // backward on the kernels
    std::vector<float> dsum((size_t)B * H * L);
    uint32_t rows = B * L * H;
    emu_launch({hdiv(rows, 8), 1, 1}, 256, [&] { flash_bwd_dot_bf16(o.data(), db.data(), dsum.data(), rows, H, L); });
    std::vector<float> dq_acc((size_t)B * L * H * D, 0.f);
    std::vector<bf16> dk((size_t)B * T * Hkv * D), dv((size_t)B * T * Hkv * D), dq((size_t)B * L * H * D);
    emu_launch({hdiv(T, BC), (unsigned)Hkv, (unsigned)B}, NTHREADS, [&] {
        flash_bwd_bf16(qb.data(), kb.data(), vb.data(), db.data(), lse.data(), dsum.data(), bias_ptr, dq_acc.data(), dk.data(), dv.data(), H,
                       Hkv, L, T, bat, scale);
    });
    uint64_t n = dq.size();
    emu_launch({4, 1, 1}, 256, [&] { flash_dq_convert_bf16(dq_acc.data(), dq.data(), scale, n); });

    std::vector<double> dQ((size_t)B * L * H * D, 0.0), dK((size_t)B * T * Hkv * D, 0.0), dV((size_t)B * T * Hkv * D, 0.0);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            int hk = h / rep;
            for (int i = 0; i < L; i++) {
                const double* p = &P[(((size_t)b * H + h) * L + i) * T];
                const float* gi = &dout[(((size_t)b * L + i) * H + h) * D];
                std::vector<double> dp(T);
                double Di = 0;
                for (int j = 0; j < T; j++) {
                    double s = 0;
                    for (int d = 0; d < D; d++) s += (double)gi[d] * v[(((size_t)b * Hkv + hk) * T + j) * D + d];
                    dp[j] = s;
                    Di += p[j] * s;
                }
                for (int j = 0; j < T; j++) {
                    double ds = p[j] * (dp[j] - Di);
                    for (int d = 0; d < D; d++) {
                        size_t kv = (((size_t)b * T + j) * Hkv + hk) * D + d;
                        dV[kv] += p[j] * gi[d];
                        dK[kv] += ds * q[(((size_t)b * H + h) * L + i) * D + d] * scale;
                        dQ[(((size_t)b * L + i) * H + h) * D + d] += ds * k[(((size_t)b * Hkv + hk) * T + j) * D + d] * scale;
                    }
                }
            }
        }
    auto f = [](const std::vector<bf16>& x) {
        std::vector<float> y(x.size());
        for (size_t i = 0; i < x.size(); i++) y[i] = __bfloat162float(x[i]);
        return y;
    };
    report(std::string(c.name) + " dq", f(dq), dQ);
    report(std::string(c.name) + " dk", f(dk), dK);
    report(std::string(c.name) + " dv", f(dv), dV);
}

int main(int argc, char** argv) {
    std::mt19937 rng(1234);
    std::vector<Case> cases = {
        {"B1 H2/1 L=T=64 no bias", 1, 2, 1, 64, 64, 0},
        {"B2 H4/2 L=T=70 random mask (1,1,L,T)", 2, 4, 2, 70, 70, 1},
        {"B2 H3/3 L=T=37 causal + padded row (B,1,L,T)", 2, 3, 3, 37, 37, 2},
        {"B2 H2/1 L=5 T=40 cache causal, padded row", 2, 2, 1, 5, 40, 2},
        {"B1 H2/2 L=70 T=130 cache causal", 1, 2, 2, 70, 130, 3},
        {"B1 H3/1 L=1 T=9 no bias", 1, 3, 1, 1, 9, 0},
    };
    int only = argc > 1 ? atoi(argv[1]) : -1;
    for (int i = 0; i < (int)cases.size(); i++)
        if (only < 0 || only == i) run_case(cases[i], rng);
    printf(failures ? "%d FAILED\n" : "all ok\n", failures);
    return failures ? 1 : 0;
}
