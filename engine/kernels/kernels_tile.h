/*
 * kernels_tile.h — the register-blocked matrix tile, written once for both
 * vector widths. Private to kernels_avx2.c and kernels_avx512.c, which
 * include it after defining:
 *
 *   TARGET, INLINE        function attributes of the file's ISA
 *   VF, VL                the float vector type and its lanes (8 or 16)
 *   vf_zero(), vf_fma(a, b, c) = a*b + c
 *   vf_store_sums(acc, R, T, y, y_stride)   y[t * y_stride + r] = the sum of
 *                         acc[r][t]'s lanes for r < R, t < T, each in one
 *                         fixed tree (whatever R and T)
 *   vf_load(p)            VL floats
 *   vf_from_f16(p), vf_from_bf16(p)   VL halves / bfloats widened to f32
 *   TILE_R, TILE_T        rows x tokens of the float micro-kernel
 *   TILE_R1               rows per step when a single token is left (decode)
 *
 * A tile is y[t*y_stride + o] = dot(weight row o, activation row t) for
 * o < n_rows, t < n_tok (kn_tile_fn). The micro-kernel computes R rows x T
 * tokens at once: each weight vector is loaded (and widened) once for T
 * tokens, each activation vector once for R rows, R*T FMAs per R+T loads.
 *
 * Batch invariance: every (row, token) pair has exactly ONE accumulator
 * chain of VL lanes, stepped over k in VL-element steps from element 0, the
 * last k % VL elements as one more step on zero-padded copies, then the
 * fixed tree of vf_store_sums. Nothing in that chain depends on R, T,
 * n_rows or n_tok, so a pair's result is the same bit for bit whichever
 * micro-kernel shape computed it, and the one-token dot (1 x 1) is the
 * same chain too.
 */
#ifndef GLIMPSE_KERNELS_TILE_H
#define GLIMPSE_KERNELS_TILE_H

#include <string.h>

/* Accumulator arrays are indexed by constants after unrolling, which keeps
 * them in registers; without the pragma -O2 keeps them in memory. */
#define TILE_UNROLL _Pragma("GCC unroll 8")

/* The R x T accumulators of a micro-kernel: all set to zero; and at the
 * end (the AVX2 table's vf_store_sums) each summed across lanes by hsum
 * into y[t * y_stride + r]. */
#define TILE_ACC_ZERO(acc, R, T, zero)                 \
    TILE_UNROLL                                        \
    for (int r_ = 0; r_ < (R); r_++) {                 \
        TILE_UNROLL                                    \
        for (int t_ = 0; t_ < (T); t_++)               \
            (acc)[r_][t_] = (zero);                    \
    }
#define TILE_ACC_STORE(acc, R, T, y, y_stride, hsum)   \
    TILE_UNROLL                                        \
    for (int r_ = 0; r_ < (R); r_++) {                 \
        TILE_UNROLL                                    \
        for (int t_ = 0; t_ < (T); t_++)               \
            (y)[(size_t)t_ * (y_stride) + r_] = hsum((acc)[r_][t_]); \
    }

enum wf_kind { WF_F32, WF_F16, WF_BF16 };

static inline size_t wf_size(enum wf_kind kind)
{
    return kind == WF_F32 ? sizeof(float) : sizeof(uint16_t);
}

/* VL weights of kind at element i of row p, as f32. */
INLINE VF wf_load(enum wf_kind kind, const void *p, int64_t i)
{
    switch (kind) {
    case WF_F16: return vf_from_f16((const uint16_t *)p + i);
    case WF_BF16: return vf_from_bf16((const uint16_t *)p + i);
    case WF_F32:
    default: return vf_load((const float *)p + i);
    }
}

/* The last n < VL values from element i, zero-padded to VL. */
INLINE VF wf_load_tail(enum wf_kind kind, const void *p, int64_t i, int64_t n)
{
    _Alignas(64) uint8_t buf[VL * sizeof(float)] = { 0 };
    memcpy(buf, (const uint8_t *)p + (size_t)i * wf_size(kind), (size_t)n * wf_size(kind));
    return wf_load(kind, buf, 0);
}

/* Software prefetch of the weight rows two micro-kernel groups ahead (rows
 * r + 2R, same column), one line per row per step: a group reads R rows
 * side by side, short streams that the hardware prefetchers do not follow
 * well. Measured on one Zen 5 core, Q8_0, 8 rows x 1 token (decode) from
 * DRAM: 8 GB/s without, 34 one group ahead, 41 two groups ahead (the old
 * one-row dot: 32). Past the matrix's end the prefetch is harmless (it
 * never faults). */
INLINE void prefetch_ahead(const uint8_t *w, size_t w_row, int R, size_t off)
{
    TILE_UNROLL
    for (int r = 0; r < R; r++)
        _mm_prefetch((const char *)(w + (size_t)(2 * R + r) * w_row + off), _MM_HINT_T0);
}

/* R weight rows (w, w + w_row bytes, ...) x T f32 activation rows (a, a +
 * a_row bytes, ...), R <= TILE_R1, T <= TILE_T. F16/BF16 activations are
 * f32 values already rounded to the weight's type (enum kn_act), so the
 * products are those of llama.cpp's half x half dots.
 *
 * Elements [k0, k1) of the rows only (k0 a multiple of VL; k1 == k for the
 * last part): the accumulators come from state (R*T of them, [r][t]) unless
 * k0 == 0, and go back there unless k1 == k, when they are summed into y.
 * Storing and reloading a register changes no bit, so the parts of a dot
 * are one chain, the same as the dot in one go (state may be NULL then). */
INLINE void micro_float(enum wf_kind kind, int R, int T, int64_t k0, int64_t k1, int64_t k, const uint8_t *w,
                        size_t w_row, const uint8_t *a, size_t a_row, VF *state, float *y, size_t y_stride)
{
    VF acc[TILE_R1][TILE_T], wv[TILE_R1];
    TILE_ACC_ZERO(acc, R, T, vf_zero());
    if (k0 > 0) {
        TILE_UNROLL
        for (int r = 0; r < R; r++) {
            TILE_UNROLL
            for (int t = 0; t < T; t++)
                acc[r][t] = state[r * T + t];
        }
    }
    int64_t i = k0;
    for (; i + VL <= k1; i += VL) {
        /* one token: one prefetch per line, every other step for halves
         * (one-token decode of the F16 256M / 500M models in the fast-memory
         * state: 5.33-5.42 / 14.6-14.9 -> 5.15-5.25 / 14.1-14.3 ms; in the
         * slow state no change). More tokens: every step, which measured
         * faster at 8 (why is not understood). */
        if (T > 1 || (size_t)i * wf_size(kind) % 64 == 0)
            prefetch_ahead(w, w_row, R, (size_t)i * wf_size(kind));
        TILE_UNROLL
        for (int r = 0; r < R; r++)
            wv[r] = wf_load(kind, w + (size_t)r * w_row, i);
        TILE_UNROLL
        for (int t = 0; t < T; t++) {
            const VF av = vf_load((const float *)(a + (size_t)t * a_row) + i);
            TILE_UNROLL
            for (int r = 0; r < R; r++)
                acc[r][t] = vf_fma(wv[r], av, acc[r][t]);
        }
    }
    if (k1 < k) {
        TILE_UNROLL
        for (int r = 0; r < R; r++) {
            TILE_UNROLL
            for (int t = 0; t < T; t++)
                state[r * T + t] = acc[r][t];
        }
        return;
    }
    if (i < k) {
        TILE_UNROLL
        for (int r = 0; r < R; r++)
            wv[r] = wf_load_tail(kind, w + (size_t)r * w_row, i, k - i);
        TILE_UNROLL
        for (int t = 0; t < T; t++) {
            const VF av = wf_load_tail(WF_F32, a + (size_t)t * a_row, i, k - i);
            TILE_UNROLL
            for (int r = 0; r < R; r++)
                acc[r][t] = vf_fma(wv[r], av, acc[r][t]);
        }
    }
    vf_store_sums(acc, R, T, y, y_stride);
}

/* The part length for rows of k elements: k itself up to kc_max (or when
 * kc_max is 0), else the fewest parts of at most kc_max, as equal as
 * multiples of VL allow (the last may be shorter): a short last part would
 * cost a store and reload of the accumulators for little work. */
static inline int64_t tile_part(int64_t k, int64_t kc_max)
{
    if (kc_max <= 0 || k <= kc_max)
        return k;
    const int64_t parts = (k + kc_max - 1) / kc_max, per = (k + parts - 1) / parts;
    return (per + VL - 1) / VL * VL;
}

/* Defines a kn_tile_fn `name` over a micro-kernel
 *   micro(R, T, k0, k1, k, w, w_row, a, a_row, state, y, y_stride)
 * (R rows x T tokens, both compile-time constants at every call; elements
 * [k0, k1) as micro_float): rows MR at a time, each group against all
 * tokens MT at a time (so the group's weight rows stay in L1 while the
 * activation rows stream from L2: the caller keeps their block small,
 * kernels.c TOK_BYTES), rows left over one at a time; then the tokens left
 * over one at a time, MR1 rows per step.
 *
 * With KC > 0, rows longer than KC elements are walked in parts
 * (tile_part), a row group each part against all token groups, with the
 * accumulators of every group kept in `state` in between (tiles of up to
 * KN_TILE_PART_TOK tokens; longer ones take k in one go): for long rows
 * (the ViT's k = 3072) a whole row group and 4 activation rows overflow
 * L1, a part's do not. Measured on one Zen 5 core, F16, 768 x 3072 x 1024
 * tokens: 150 GFLOP/s in one go (8-token blocks), 199 in parts of 768 with
 * 40-token blocks. The micro-kernels of KC = 0 see k0 = 0, k1 = k, no
 * state. */
#define DEFINE_TILE(name, micro, MR, MT, MR1, KC)                                                    \
    TARGET static void name(int64_t k, const void *w, size_t w_row, int64_t n_rows, const void *a,     \
                            size_t a_row, int64_t n_tok, float *y, size_t y_stride)                    \
    {                                                                                                  \
        const uint8_t *w8 = w, *a8 = a;                                                                \
        const int64_t n_full = n_tok - n_tok % (MT);                                                   \
        const int64_t kc = n_full <= KN_TILE_PART_TOK ? tile_part(k, KC) : k;                           \
        VF state[(KC) > 0 ? KN_TILE_PART_TOK / (MT) * (MR) * (MT) : 1];                                   \
        (void)state;                                                                                   \
        for (int64_t o = 0; o < n_rows; o += (MR)) {                                                   \
            const uint8_t *wo = w8 + (size_t)o * w_row;                                                \
            if (o + (MR) > n_rows) {                                                                   \
                for (int64_t r = 0; r < n_rows - o; r++)                                               \
                    for (int64_t t = 0; t < n_full; t += (MT))                                         \
                        micro(1, MT, 0, k, k, wo + (size_t)r * w_row, w_row, a8 + (size_t)t * a_row,   \
                              a_row, NULL, y + (size_t)t * y_stride + o + r, y_stride);                \
                continue;                                                                              \
            }                                                                                          \
            int64_t k0 = 0;                                                                            \
            do {                                                                                       \
                const int64_t k1 = k - k0 <= kc ? k : k0 + kc;                                         \
                for (int64_t t = 0; t < n_full; t += (MT))                                             \
                    micro(MR, MT, k0, k1, k, wo, w_row, a8 + (size_t)t * a_row, a_row,                 \
                          state + t / (MT) * (MR) * (MT), y + (size_t)t * y_stride + o, y_stride);     \
                k0 = k1;                                                                               \
            } while (k0 < k);                                                                          \
        }                                                                                              \
        for (int64_t t = n_full; t < n_tok; t++) {                                                     \
            const uint8_t *at = a8 + (size_t)t * a_row;                                                \
            float *yt = y + (size_t)t * y_stride;                                                      \
            int64_t o = 0;                                                                             \
            for (; o + (MR1) <= n_rows; o += (MR1))                                                    \
                micro(MR1, 1, 0, k, k, w8 + (size_t)o * w_row, w_row, at, a_row, NULL, yt + o, y_stride); \
            for (; o < n_rows; o++)                                                                    \
                micro(1, 1, 0, k, k, w8 + (size_t)o * w_row, w_row, at, a_row, NULL, yt + o, y_stride);   \
        }                                                                                              \
    }

#define MICRO_F32(R, T, ...) micro_float(WF_F32, R, T, __VA_ARGS__)
#define MICRO_F16(R, T, ...) micro_float(WF_F16, R, T, __VA_ARGS__)
#define MICRO_BF16(R, T, ...) micro_float(WF_BF16, R, T, __VA_ARGS__)

DEFINE_TILE(tile_f32, MICRO_F32, TILE_R, TILE_T, TILE_R1, KN_TILE_K_PART)
DEFINE_TILE(tile_f16, MICRO_F16, TILE_R, TILE_T, TILE_R1, KN_TILE_K_PART)
DEFINE_TILE(tile_bf16, MICRO_BF16, TILE_R, TILE_T, TILE_R1, KN_TILE_K_PART)

/* The micro-kernels of whole rows (KC = 0) in DEFINE_TILE's form. */
#define MICRO_WHOLE(micro, R, T, k0, k1, k, w, w_row, a, a_row, state, y, y_stride) \
    ((void)(k0), (void)(k1), (void)(state), micro(R, T, k, w, w_row, a, a_row, y, y_stride))

/* ---- K-quant helpers, shared by both files' K-quant tiles ------------------------ */

/* The 6-bit scales and mins of the 8 sub-blocks as bytes, four at a time in
 * 32-bit words (the packing of spec §1.4's get_scale_min_k4): sub-blocks 0-3
 * keep their low 6 bits in bytes 0-3 (scales) and 4-7 (mins); sub-blocks 4-7
 * take 4 bits from bytes 8-11 and their top 2 bits from bits 6-7 of 0-7. */
static inline void unpack_scales_k4(const uint8_t *s, uint8_t sc[8], uint8_t m[8])
{
    uint32_t u[3], o[4];
    memcpy(u, s, sizeof u);
    o[0] = u[0] & 0x3f3f3f3fu;
    o[1] = (u[2] & 0x0f0f0f0fu) | (((u[0] >> 6) & 0x03030303u) << 4);
    o[2] = u[1] & 0x3f3f3f3fu;
    o[3] = ((u[2] >> 4) & 0x0f0f0f0fu) | (((u[1] >> 6) & 0x03030303u) << 4);
    memcpy(sc, o, 8);
    memcpy(m, o + 2, 8);
}

/* The 8 mins as 16 int16 lanes, each twice: lane i pairs with bsums[i]
 * (16 elements each) of the Q8_K activation. */
TARGET static inline __m256i widen_mins(const uint8_t m[8])
{
    __m128i v = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)m));
    return _mm256_set_m128i(_mm_unpackhi_epi16(v, v), _mm_unpacklo_epi16(v, v));
}

/* The f32 dot of kn_dot_f32: the same chain as a 1 x 1 tile. */
TARGET static float dot_f32(const float *a, const float *b, int64_t n)
{
    float r;
    micro_float(WF_F32, 1, 1, 0, n, n, (const uint8_t *)a, 0, (const uint8_t *)b, 0, NULL, &r, 0);
    return r;
}

#endif /* GLIMPSE_KERNELS_TILE_H */
