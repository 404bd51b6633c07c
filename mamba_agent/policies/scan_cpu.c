/* Mamba-1's selective scan on the CPU, forward and backward, fused: each (row, group of G
 * channels) keeps its N x G state in registers and reads every input once, where PyTorch ops
 * would stream the (L, d_inner, N) factors through memory a dozen times. Built by scan_cpu.py
 * with the machine's C compiler; called through ctypes (which releases the GIL) from one thread
 * per part of the batch. Layouts, all float32 and contiguous:
 *   u, delta, y (R, L, d); AT = A transposed (N, d); B, C (R, L, N); h (R, d, N);
 *   starts (R, S, d, N): the state before steps 0, seg, 2 seg, ... (S = ceil(L / seg)).
 * h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t;  y_t = C_t . h_t  (D and the gate: PyTorch).
 */
#include <math.h>
#include <stddef.h>

#define G 16 /* channels a group: one AVX-512 register of floats */

static inline void forward_group(long r, long c0, long nl, long L, long d, long N, long seg,
                                 const float *u, const float *delta, const float *AT,
                                 const float *B, const float *C, float *h, float *y, float *starts) {
    float hs[N][G];
    long S = (L + seg - 1) / seg;
    for (long n = 0; n < N; n++)
        for (long k = 0; k < nl; k++) hs[n][k] = h[(r * d + c0 + k) * N + n];
    for (long t = 0; t < L; t++) {
        long off = (r * L + t) * d + c0;
        const float *Bt = B + (r * L + t) * N, *Ct = C + (r * L + t) * N;
        float dl[G], dlu[G], acc[G];
        for (long k = 0; k < nl; k++) {
            dl[k] = delta[off + k];
            dlu[k] = dl[k] * u[off + k];
            acc[k] = 0;
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
        for (long k = 0; k < nl; k++) y[off + k] = acc[k];
    }
    for (long n = 0; n < N; n++)
        for (long k = 0; k < nl; k++) h[(r * d + c0 + k) * N + n] = hs[n][k];
}

/* Rows [r0, r1), channels [c0, c1) (c0 a multiple of G). h: h0 in, h_L out. starts may be NULL. */
void scan_forward(long r0, long r1, long c0, long c1, long L, long d, long N, long seg,
                  const float *u, const float *delta, const float *AT, const float *B,
                  const float *C, float *h, float *y, float *starts) {
    for (long r = r0; r < r1; r++)
        for (long g = c0; g < c1; g += G) {
            if (c1 - g >= G) /* a constant lane count: the compiler vectorizes these loops */
                forward_group(r, g, G, L, d, N, seg, u, delta, AT, B, C, h, y, starts);
            else
                forward_group(r, g, c1 - g, L, d, N, seg, u, delta, AT, B, C, h, y, starts);
        }
}

static inline void backward_group(long r, long c0, long nl, long L, long d, long N, long seg,
                                  const float *u, const float *delta, const float *AT,
                                  const float *B, const float *C, const float *starts,
                                  const float *dy, float *lam_io, float *du, float *ddelta,
                                  float *dAT, float *dB, float *dC) {
    float lam[N][G], h0[N][G], as[seg][N][G], hs[seg][N][G];
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
            for (long n = 0; n < N; n++) {
                const float *An = AT + n * d + c0, *prev = i ? hs[i - 1][n] : h0[n];
                for (long k = 0; k < nl; k++) {
                    float dl = delta[off + k];
                    as[i][n][k] = expf(dl * An[k]);
                    hs[i][n][k] = as[i][n][k] * prev[k] + dl * u[off + k] * Bt[n];
                }
            }
        }
        /* Back through it: lam = dL/dh_t, then times a_t, what flows to h_{t-1}. */
        for (long t = t1 - 1; t >= t0; t--) {
            long off = (r * L + t) * d + c0, i = t - t0;
            const float *Bt = B + (r * L + t) * N, *Ct = C + (r * L + t) * N;
            float *dBt = dB + (r * L + t) * N, *dCt = dC + (r * L + t) * N;
            float dl[G], dlu[G], gy[G], dbu[G], dd[G];
            for (long k = 0; k < nl; k++) {
                dl[k] = delta[off + k];
                dlu[k] = dl[k] * u[off + k];
                gy[k] = dy[off + k];
                dbu[k] = dd[k] = 0;
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
                ddelta[off + k] = dd[k] + dbu[k] * u[off + k];
                du[off + k] = dbu[k] * dl[k];
            }
        }
    }
    for (long n = 0; n < N; n++)
        for (long k = 0; k < nl; k++) lam_io[(r * d + c0 + k) * N + n] = lam[n][k];
}

/* Rows [r0, r1), all channels. lam_io: dL/dh_L in, dL/dh0 out. dB, dC: zeroed by the caller;
 * dAT (N, d): this call's own accumulator, added to. */
void scan_backward(long r0, long r1, long L, long d, long N, long seg, const float *u,
                   const float *delta, const float *AT, const float *B, const float *C,
                   const float *starts, const float *dy, float *lam_io, float *du, float *ddelta,
                   float *dAT, float *dB, float *dC) {
    for (long r = r0; r < r1; r++)
        for (long g = 0; g < d; g += G) {
            if (d - g >= G)
                backward_group(r, g, G, L, d, N, seg, u, delta, AT, B, C, starts, dy, lam_io, du,
                               ddelta, dAT, dB, dC);
            else
                backward_group(r, g, d - g, L, d, N, seg, u, delta, AT, B, C, starts, dy, lam_io,
                               du, ddelta, dAT, dB, dC);
        }
}
