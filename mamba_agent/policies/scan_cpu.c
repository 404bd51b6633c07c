/* Mamba-1's selective scan on the CPU, forward and backward, fused: each (row, group of G
 * channels) keeps its N x G state in registers and reads every input once, where PyTorch ops
 * would stream the (L, d_inner, N) factors through memory a dozen times. Built by scan_cpu.py
 * with the machine's C compiler; called through ctypes (which releases the GIL) from one thread
 * per part of the batch. Layouts, all float32 and contiguous:
 *   u, dt, z, y (R, L, d); dt_bias, D (d); AT = A transposed (N, d); B, C (R, L, N);
 *   h (R, d, N); starts (R, S, d, N): the state before steps 0, seg, 2 seg, ... (S = ceil(L / seg)).
 * delta_t = softplus(dt_t + dt_bias);  h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t;
 * y_t = (C_t . h_t + D u_t) silu(z_t).
 */
#include <math.h>
#include <stddef.h>

#define G 16 /* channels a group: one AVX-512 register of floats */

static inline float softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); } /* as torch's */
static inline float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

static inline void forward_group(long r, long c0, long nl, long L, long d, long N, long seg,
                                 const float *u, const float *dt, const float *dt_bias,
                                 const float *AT, const float *B, const float *C, const float *D,
                                 const float *z, float *h, float *y, float *starts) {
    float hs[N][G];
    long S = (L + seg - 1) / seg;
    for (long n = 0; n < N; n++)
        for (long k = 0; k < nl; k++) hs[n][k] = h[(r * d + c0 + k) * N + n];
    for (long t = 0; t < L; t++) {
        long off = (r * L + t) * d + c0;
        const float *Bt = B + (r * L + t) * N, *Ct = C + (r * L + t) * N;
        float dl[G], dlu[G], acc[G];
        for (long k = 0; k < nl; k++) {
            dl[k] = softplus(dt[off + k] + dt_bias[c0 + k]);
            dlu[k] = dl[k] * u[off + k];
            acc[k] = D[c0 + k] * u[off + k];
        }
        if (starts && t % seg == 0)
            for (long n = 0; n < N; n++)
                for (long k = 0; k < nl; k++) starts[((r * S + t / seg) * d + c0 + k) * N + n] = hs[n][k];
        for (long n = 0; n < N; n++) {
            const float *An = AT + n * d + c0;
            float b = Bt[n], c = Ct[n];
            for (long k = 0; k < nl; k++) {
                hs[n][k] = expf(dl[k] * An[k]) * hs[n][k] + dlu[k] * b;
                acc[k] += c * hs[n][k];
            }
        }
        for (long k = 0; k < nl; k++) y[off + k] = acc[k] * z[off + k] * sigmoid(z[off + k]);
    }
    for (long n = 0; n < N; n++)
        for (long k = 0; k < nl; k++) h[(r * d + c0 + k) * N + n] = hs[n][k];
}

/* Rows [r0, r1), channels [c0, c1) (c0 a multiple of G). h: h0 in, h_L out. starts may be NULL. */
void scan_forward(long r0, long r1, long c0, long c1, long L, long d, long N, long seg,
                  const float *u, const float *dt, const float *dt_bias, const float *AT,
                  const float *B, const float *C, const float *D, const float *z, float *h,
                  float *y, float *starts) {
    for (long r = r0; r < r1; r++)
        for (long g = c0; g < c1; g += G) {
            if (c1 - g >= G) /* a constant lane count: the compiler vectorizes these loops */
                forward_group(r, g, G, L, d, N, seg, u, dt, dt_bias, AT, B, C, D, z, h, y, starts);
            else
                forward_group(r, g, c1 - g, L, d, N, seg, u, dt, dt_bias, AT, B, C, D, z, h, y, starts);
        }
}

static inline void backward_group(long r, long c0, long nl, long L, long d, long N, long seg,
                                  const float *u, const float *dt, const float *dt_bias,
                                  const float *AT, const float *B, const float *C,
                                  const float *D, const float *z, const float *starts,
                                  const float *dy, float *lam_io, float *du, float *ddt,
                                  float *dz, float *dAT, float *dB, float *dC, float *dD,
                                  float *ddt_bias) {
    float lam[N][G], h0[N][G], as[seg][N][G], hs[seg][N][G], dls[seg][G];
    long S = (L + seg - 1) / seg;
    for (long n = 0; n < N; n++)
        for (long k = 0; k < nl; k++) lam[n][k] = lam_io[(r * d + c0 + k) * N + n];
    for (long s = S - 1; s >= 0; s--) {
        long t0 = s * seg, t1 = t0 + seg < L ? t0 + seg : L;
        /* Recompute the segment's decays and states from its starting state. */
        for (long n = 0; n < N; n++)
            for (long k = 0; k < nl; k++) h0[n][k] = starts[((r * S + s) * d + c0 + k) * N + n];
        for (long t = t0; t < t1; t++) {
            long off = (r * L + t) * d + c0, i = t - t0;
            const float *Bt = B + (r * L + t) * N;
            float dlu[G];
            for (long k = 0; k < nl; k++) {
                dls[i][k] = softplus(dt[off + k] + dt_bias[c0 + k]);
                dlu[k] = dls[i][k] * u[off + k];
            }
            for (long n = 0; n < N; n++) {
                const float *An = AT + n * d + c0, *prev = i ? hs[i - 1][n] : h0[n];
                for (long k = 0; k < nl; k++) {
                    as[i][n][k] = expf(dls[i][k] * An[k]);
                    hs[i][n][k] = as[i][n][k] * prev[k] + dlu[k] * Bt[n];
                }
            }
        }
        /* Back through it: lam = dL/dh_t, then times a_t, what flows to h_{t-1}. */
        for (long t = t1 - 1; t >= t0; t--) {
            long off = (r * L + t) * d + c0, i = t - t0;
            const float *Bt = B + (r * L + t) * N, *Ct = C + (r * L + t) * N;
            float *dBt = dB + (r * L + t) * N, *dCt = dC + (r * L + t) * N;
            const float *dl = dls[i]; /* softplus once a step, not once a state */
            float dlu[G], gy[G], dbu[G], dd[G], ch[G];
            for (long k = 0; k < nl; k++) {
                dlu[k] = dl[k] * u[off + k];
                dbu[k] = dd[k] = 0;
                ch[k] = D[c0 + k] * u[off + k];
            }
            for (long n = 0; n < N; n++)
                for (long k = 0; k < nl; k++) ch[k] += Ct[n] * hs[i][n][k];
            for (long k = 0; k < nl; k++) { /* out = ch silu(z): back to ch and z */
                float zk = z[off + k], sz = sigmoid(zk);
                gy[k] = dy[off + k] * zk * sz;
                dz[off + k] = dy[off + k] * ch[k] * sz * (1.0f + zk * (1.0f - sz));
                dD[c0 + k] += gy[k] * u[off + k];
            }
            for (long n = 0; n < N; n++) {
                const float *An = AT + n * d + c0, *prev = i ? hs[i - 1][n] : h0[n];
                float *dAn = dAT + n * d + c0;
                float b = Bt[n], c = Ct[n], sum_c = 0, sum_b = 0;
                for (long k = 0; k < nl; k++) {
                    float l = lam[n][k] + gy[k] * c;
                    float q = l * as[i][n][k] * prev[k]; /* dL/d(delta A) */
                    sum_c += gy[k] * hs[i][n][k];
                    sum_b += l * dlu[k];
                    dbu[k] += l * b;
                    dd[k] += q * An[k];
                    dAn[k] += q * dl[k];
                    lam[n][k] = l * as[i][n][k];
                }
                dCt[n] += sum_c;
                dBt[n] += sum_b;
            }
            for (long k = 0; k < nl; k++) {
                float g = (dd[k] + dbu[k] * u[off + k]) * sigmoid(dt[off + k] + dt_bias[c0 + k]);
                ddt[off + k] = g; /* softplus' = sigmoid */
                ddt_bias[c0 + k] += g;
                du[off + k] = dbu[k] * dl[k] + gy[k] * D[c0 + k];
            }
        }
    }
    for (long n = 0; n < N; n++)
        for (long k = 0; k < nl; k++) lam_io[(r * d + c0 + k) * N + n] = lam[n][k];
}

/* Rows [r0, r1), all channels. lam_io: dL/dh_L in, dL/dh0 out. dB, dC: zeroed by the caller;
 * dAT (N, d), dD, ddt_bias (d): this call's own accumulators, added to. */
void scan_backward(long r0, long r1, long L, long d, long N, long seg, const float *u,
                   const float *dt, const float *dt_bias, const float *AT, const float *B,
                   const float *C, const float *D, const float *z, const float *starts,
                   const float *dy, float *lam_io, float *du, float *ddt, float *dz, float *dAT,
                   float *dB, float *dC, float *dD, float *ddt_bias) {
    for (long r = r0; r < r1; r++)
        for (long g = 0; g < d; g += G) {
            if (d - g >= G)
                backward_group(r, g, G, L, d, N, seg, u, dt, dt_bias, AT, B, C, D, z, starts, dy,
                               lam_io, du, ddt, dz, dAT, dB, dC, dD, ddt_bias);
            else
                backward_group(r, g, d - g, L, d, N, seg, u, dt, dt_bias, AT, B, C, D, z, starts,
                               dy, lam_io, du, ddt, dz, dAT, dB, dC, dD, ddt_bias);
        }
}

/* The causal depthwise convolution and its SiLU, time-major: x, pre, out (R, L, d); history
 * (R, W-1, d), the inputs before x (NULL: zeros); wT (W, d) the weights transposed, oldest input
 * first; pre = bias + sum_k wT[k] x[t-W+1+k] (kept for the backward, may be NULL), out = silu(pre). */
void conv_forward(long r0, long r1, long L, long d, long W, const float *x, const float *history,
                  const float *wT, const float *bias, float *pre, float *out) {
    for (long r = r0; r < r1; r++)
        for (long t = 0; t < L; t++) {
            float *o = out + (r * L + t) * d;
            for (long c = 0; c < d; c++) o[c] = bias[c];
            for (long k = 0; k < W; k++) {
                long s = t - (W - 1) + k;
                const float *src = s >= 0 ? x + (r * L + s) * d
                                   : history ? history + (r * (W - 1) + (W - 1) + s) * d : NULL;
                if (!src) continue;
                for (long c = 0; c < d; c++) o[c] += wT[k * d + c] * src[c];
            }
            if (pre)
                for (long c = 0; c < d; c++) pre[(r * L + t) * d + c] = o[c];
            for (long c = 0; c < d; c++) o[c] = o[c] / (1.0f + expf(-o[c]));
        }
}

/* dout -> dx (R, L, d, zeroed by the caller), dwT (W, d) and dbias (d): this call's own
 * accumulators, added to. */
void conv_backward(long r0, long r1, long L, long d, long W, const float *x, const float *history,
                   const float *wT, const float *pre, const float *dout, float *dx, float *dwT,
                   float *dbias) {
    float g[d];
    for (long r = r0; r < r1; r++)
        for (long t = 0; t < L; t++) {
            const float *p = pre + (r * L + t) * d, *go = dout + (r * L + t) * d;
            for (long c = 0; c < d; c++) {
                float sig = 1.0f / (1.0f + expf(-p[c]));
                g[c] = go[c] * sig * (1.0f + p[c] * (1.0f - sig)); /* silu'(p) */
                dbias[c] += g[c];
            }
            for (long k = 0; k < W; k++) {
                long s = t - (W - 1) + k;
                const float *src = s >= 0 ? x + (r * L + s) * d
                                   : history ? history + (r * (W - 1) + (W - 1) + s) * d : NULL;
                if (!src) continue;
                for (long c = 0; c < d; c++) dwT[k * d + c] += g[c] * src[c];
                if (s >= 0)
                    for (long c = 0; c < d; c++) dx[(r * L + s) * d + c] += wT[k * d + c] * g[c];
            }
        }
}
