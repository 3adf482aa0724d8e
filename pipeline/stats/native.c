/* Fused CPU kernels for the streaming neuron statistics (see native.py).
 *
 * Each kernel reads one layer's activations straight from the model's output,
 * acts [n_rows, d] float32 row-major with n_rows = batch * seq_len, and skips BOS rows through
 * `skip` (1 = BOS). Columns (neurons) are split in tiles of TILE over OpenMP threads: every
 * tile owns its columns' state, so there is no locking. Built with -fopenmp, the library uses
 * the libgomp that torch has already loaded, so kernels and torch ops share one thread pool
 * (and torch.set_num_threads applies to both). The arithmetic mirrors the pure-torch
 * accumulators exactly where exactness is promised: the same int64 keys (keys.py), the same
 * bins (bins.py), the same tie rules.
 */
#include <stdint.h>
#include <string.h>
#include <math.h>

#define TILE 128
#define HIST_COLS 16
#define KEY_EMPTY INT64_MIN
#define KEY_FULL INT64_MAX
#define LOW32 0xFFFFFFFFLL
#define MAX_POS 0xFFFFFFFFLL

int64_t ms_tile(void) { return TILE; }

/* Each tile of TILE columns wrote its outputs (`item` int64 each) at its own region of `buf`,
 * starting at tile_start * per_column; move them together. Returns the number of items. */
static int64_t gather_tiles(int64_t *buf, const int64_t *tile_n, int64_t d, int64_t per_column, int64_t item) {
    int64_t n = 0;
    for (int64_t t0 = 0; t0 < d; t0 += TILE) {
        int64_t m = tile_n[t0 / TILE] * item;
        memmove(buf + n, buf + t0 * per_column, m * sizeof(int64_t));
        n += m;
    }
    return n / item;
}

/* ---- moments: sum, sum of squares, positive count, min, max per column ---- */
void ms_moments(const float *acts, const uint8_t *skip, int64_t n_rows, int64_t d,
                double *total, double *total_sq, int64_t *positive, float *mn, float *mx) {
#pragma omp parallel for schedule(static)
    for (int64_t t0 = 0; t0 < d; t0 += TILE) {
        double s[TILE], q[TILE];
        int64_t p[TILE];
        float lo[TILE], hi[TILE];
        int64_t w = d - t0 < TILE ? d - t0 : TILE;
        for (int64_t j = 0; j < w; j++) {
            s[j] = 0; q[j] = 0; p[j] = 0; lo[j] = mn[t0 + j]; hi[j] = mx[t0 + j];
        }
        for (int64_t r = 0; r < n_rows; r++) {
            if (skip[r]) continue;
            const float *a = acts + r * d + t0;
            for (int64_t j = 0; j < w; j++) {
                float x = a[j];
                double xd = (double)x;
                s[j] += xd;
                q[j] += xd * xd;
                p[j] += x > 0.0f;
                lo[j] = x < lo[j] ? x : lo[j];
                hi[j] = x > hi[j] ? x : hi[j];
            }
        }
        for (int64_t j = 0; j < w; j++) {
            total[t0 + j] += s[j]; total_sq[t0 + j] += q[j]; positive[t0 + j] += p[j];
            mn[t0 + j] = lo[j]; mx[t0 + j] = hi[j];
        }
    }
}

/* ---- keys (keys.py): (monotone activation << 32) | (MAX_POS - position) ---- */
static inline int64_t top_key(float x, int64_t position) {
    int32_t bits;
    float v = x + 0.0f; /* -0.0 -> 0.0, as in keys._monotone_int32 */
    memcpy(&bits, &v, 4);
    int32_t mono = bits < 0 ? bits ^ 0x7FFFFFFF : bits;
    return ((int64_t)mono << 32) | (MAX_POS - position);
}

static inline float key_value(int64_t key) {
    if (key == KEY_EMPTY) return -INFINITY;
    int32_t mono = (int32_t)(key >> 32);
    int32_t bits = mono < 0 ? mono ^ 0x7FFFFFFF : mono;
    float v;
    memcpy(&v, &bits, 4);
    return v;
}

/* Replace the root of a 4-ary min-heap h[0..n) (children of i: 4i+1 .. 4i+4, so half the levels
 * of a binary heap, and the four siblings share a cache line or two) by `key` and sift it down;
 * `aux` (may be NULL) moves along with the keys. An ascending array is a valid heap. */
static void heap_replace(int64_t *h, int32_t *aux, int64_t n, int64_t key, int32_t aux_val) {
    int64_t i = 0;
    for (;;) {
        int64_t c = 4 * i + 1;
        if (c >= n) break;
        int64_t end = c + 4 < n ? c + 4 : n, m = c;
        for (int64_t k = c + 1; k < end; k++)
            if (h[k] < h[m]) m = k;
        if (h[m] >= key) break;
        h[i] = h[m];
        if (aux) aux[i] = aux[m];
        i = m;
    }
    h[i] = key;
    if (aux) aux[i] = aux_val;
}

typedef float f32x8 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));

/* Whether any of a[0..8) >= t[0..8): one vector compare (GCC/Clang vector extensions). */
static inline int any_ge8(const float *a, const float *t) {
    f32x8 va, vt;
    memcpy(&va, a, sizeof va);
    memcpy(&vt, t, sizeof vt);
    i32x8 m = va >= vt;
    uint64_t u[4];
    memcpy(u, &m, sizeof u);
    return (u[0] | u[1] | u[2] | u[3]) != 0;
}

typedef struct {
    int64_t *rec, R, *ex, K, first_pos, n_rows;
    float *rec_thr, *ex_thr;
    int32_t *ex_slot, *ex_row;
} TopState;

/* Offer key (activation x of column j) to the column's records. */
static inline void offer_record(const TopState *s, int64_t j, int64_t key) {
    int64_t *h = s->rec + j * s->R;
    if (key <= h[0]) return;
    heap_replace(h, NULL, s->R, key, 0);
    s->rec_thr[j] = key_value(h[0]);
}

/* Offer a window's strongest key of column j (at batch row r) to the column's examples.
 * Returns 1 if it entered with a payload slot not yet listed in this call; the (j, slot) pair
 * is then written to out. */
static inline int offer_example(const TopState *s, int64_t j, int64_t r, int64_t key, int64_t *out) {
    int64_t *h = s->ex + j * s->K;
    if (key <= h[0]) return 0;
    int32_t *slots = s->ex_slot + j * s->K, slot = slots[0];
    int64_t evicted = h[0], old_pos = MAX_POS - (evicted & LOW32);
    int listed = evicted != KEY_EMPTY && old_pos >= s->first_pos && old_pos < s->first_pos + s->n_rows;
    heap_replace(h, slots, s->K, key, slot);
    s->ex_row[j * s->K + slot] = (int32_t)r;
    s->ex_thr[j] = key_value(h[0]);
    if (listed) return 0;
    out[0] = j;
    out[1] = slot;
    return 1;
}

/* ---- top: exact per-column top-R records and top-K examples, as min-heaps of keys ----
 * rec [d, R] and ex [d, K] are min-heaps (root = weakest kept); rec_thr / ex_thr hold the
 * activation of each root, a cheap pre-test before the key comparison that decides.
 * Records: every non-BOS position is a candidate. Examples: at most one per window (rows
 * w*seq_len .. (w+1)*seq_len - 1; a batch holds whole windows): the window's strongest key, kept
 * per column while the window is scanned, offered when it ends. Rows are scanned 8 columns at a
 * time against min(record threshold, the window's best so far), and a group with no activation
 * at or above it (most groups, once the lists have filled) costs one vector compare.
 * ex_slot [d, K] moves with the example keys and names each entry's payload slot; an entry that
 * enters in this call gets ex_row[j, slot] = its row, and (j, slot) is appended to `fresh` once
 * (an entry evicted in the same call hands its slot, already listed, to its successor).
 * Returns the number of (j, slot) pairs written to fresh (capacity d * K pairs); tile_n is scratch
 * space of one int64 per tile. */
int64_t ms_top(const float *acts, const uint8_t *skip, int64_t n_rows, int64_t d, int64_t first_pos,
               int64_t seq_len, int64_t *rec, float *rec_thr, int64_t R, int64_t *ex, float *ex_thr,
               int32_t *ex_slot, int32_t *ex_row, int64_t K, int64_t *fresh, int64_t *tile_n) {
    const TopState s = {rec, R, ex, K, first_pos, n_rows, rec_thr, ex_thr, ex_slot, ex_row};
#pragma omp parallel for schedule(static)
    for (int64_t t0 = 0; t0 < d; t0 += TILE) {
        int64_t w = d - t0 < TILE ? d - t0 : TILE;
        int64_t n_fresh = 0, *out = fresh + 2 * t0 * K;
        float thr[TILE], best_v[TILE];
        int64_t best_k[TILE], best_r[TILE];
        for (int64_t w0 = 0; w0 < n_rows; w0 += seq_len) {
            for (int64_t j = 0; j < w; j++) {
                best_k[j] = ex[(t0 + j) * K];  /* the root: a window's best must beat it */
                best_v[j] = ex_thr[t0 + j];
                best_r[j] = -1;
                thr[j] = rec_thr[t0 + j] < best_v[j] ? rec_thr[t0 + j] : best_v[j];
            }
            int64_t w1 = w0 + seq_len < n_rows ? w0 + seq_len : n_rows;
            for (int64_t r = w0; r < w1; r++) {
                if (skip[r]) continue;
                const float *a = acts + r * d + t0;
                int64_t g = 0;
                for (; g < w; g += 8) {
                    int64_t m = w - g < 8 ? w - g : 8;
                    if (m == 8 && !any_ge8(a + g, thr + g)) continue;
                    for (int64_t k = 0; k < m; k++) {
                        int64_t j = g + k;
                        float x = a[j];
                        if (!(x >= thr[j])) continue;
                        int64_t key = top_key(x, first_pos + r);
                        if (x >= rec_thr[t0 + j]) offer_record(&s, t0 + j, key);
                        if (key > best_k[j]) {
                            best_k[j] = key;
                            best_v[j] = x;
                            best_r[j] = r;
                        }
                        thr[j] = rec_thr[t0 + j] < best_v[j] ? rec_thr[t0 + j] : best_v[j];
                    }
                }
            }
            for (int64_t j = 0; j < w; j++)
                if (best_r[j] >= 0) n_fresh += offer_example(&s, t0 + j, best_r[j], best_k[j], out + 2 * n_fresh);
        }
        tile_n[t0 / TILE] = n_fresh;
    }
    return gather_tiles(fresh, tile_n, d, 2 * K, 2);
}

/* ---- histogram counts and min-hash band samples on the sampled rows ----
 * rows [n] are flat row indices (non-BOS), row_keys [n] their min-hash keys (keys.encode_sample).
 * Bins as in bins.bin_index: quarter-octave from the float bits. A slot (j * n_bins + bin) whose
 * key is beaten is appended to `won` once per call (capacity d * n_bins); the winning position
 * is in its key. Returns the number of slots written to won. */
int64_t ms_hist(const float *acts, const int64_t *rows, const int64_t *row_keys, int64_t n, int64_t d,
                int64_t pos_lo, int64_t pos_hi, int32_t first_q, int32_t top_q, int32_t zero_bin, int64_t n_bins,
                int64_t *counts, int64_t *slot_keys, int64_t *won, int64_t *tile_n) {
#pragma omp parallel for schedule(static)
    for (int64_t t0 = 0; t0 < d; t0 += TILE) {
        int64_t t1 = d - t0 < TILE ? d : t0 + TILE;
        int64_t n_won = 0, *out = won + t0 * n_bins;
        /* HIST_COLS columns at a time, so that their counts and keys stay in the L1 cache */
        for (int64_t c0 = t0; c0 < t1; c0 += HIST_COLS) {
            int64_t c1 = t1 - c0 < HIST_COLS ? t1 : c0 + HIST_COLS;
            for (int64_t i = 0; i < n; i++) {
                const float *a = acts + rows[i] * d;
                int64_t k = row_keys[i];
                for (int64_t j = c0; j < c1; j++) {
                    int32_t bits;
                    memcpy(&bits, a + j, 4);
                    int32_t qq = ((bits & 0x7FFFFFFF) >> 21) - first_q;
                    qq = qq < 0 ? 0 : (qq > top_q ? top_q : qq);
                    int32_t neg = bits >> 31;
                    int64_t slot = j * n_bins + ((qq ^ neg) - neg) + zero_bin;
                    counts[slot]++;
                    int64_t prev = slot_keys[slot];
                    if (k < prev) {
                        int64_t p = prev & LOW32;
                        if (prev == KEY_FULL || p < pos_lo || p >= pos_hi) out[n_won++] = slot;
                        slot_keys[slot] = k;
                    }
                }
            }
        }
        tile_n[t0 / TILE] = n_won;
    }
    return gather_tiles(won, tile_n, d, n_bins, 1);
}
