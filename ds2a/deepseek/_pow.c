/*
 * DeepSeekHashV1 proof of work at native speed (protocol doc section 5).
 *
 * DeepSeekHashV1 is SHA3-256 (rate 136 bytes, 0x06..0x80 padding, little-endian
 * lanes, 32-byte output) whose Keccak-f[1600] runs rounds 1..23: round 0 is
 * skipped and every executed round keeps its own iota constant. A challenge is
 * solved by the smallest n in [0, difficulty) whose input prefix + decimal(n)
 * hashes to the target digest.
 *
 * Python API:
 *   hash_v1(data) -> bytes                          DeepSeekHashV1 of any bytes-like
 *   sha3_256(data) -> bytes                         same sponge, all 24 rounds
 *   solve(target, prefix, difficulty, *, impl=None) -> int   (-1: no answer)
 *   impl() -> str                                   kernel solve() uses by default
 *   impls() -> tuple[str, ...]                      kernels this CPU can run, best first
 *
 * One Keccak round is written once, as a macro over a lane type T that only
 * needs ^ ~ & << >>: plain uint64_t, or a GCC vector of 4 or 8 of them. The
 * vector kernels hash 4 (AVX2) or 8 (AVX-512) candidate answers at once; the
 * widest one the CPU supports is picked at import time, so the module is built
 * without -march flags and runs on any x86-64 (and, scalar only, elsewhere).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define POW_X86_SIMD 1
#endif

#define RATE 136                 /* bytes absorbed per permutation for SHA3-256 */
#define RATE_LANES (RATE / 8)
#define DIGITS_MAX 24            /* decimal of any uint64_t plus room */

static const uint64_t RC[24] = {
    0x0000000000000001ULL, 0x0000000000008082ULL, 0x800000000000808AULL, 0x8000000080008000ULL,
    0x000000000000808BULL, 0x0000000080000001ULL, 0x8000000080008081ULL, 0x8000000000008009ULL,
    0x000000000000008AULL, 0x0000000000000088ULL, 0x0000000080008009ULL, 0x000000008000000AULL,
    0x000000008000808BULL, 0x800000000000008BULL, 0x8000000000008089ULL, 0x8000000000008003ULL,
    0x8000000000008002ULL, 0x8000000000000080ULL, 0x000000000000800AULL, 0x800000008000000AULL,
    0x8000000080008081ULL, 0x8000000000008080ULL, 0x0000000080000001ULL, 0x8000000080008008ULL,
};

/* ---------------------------------------------------------------------------
 * The permutation, generic over the lane type.
 *
 * Lanes live in 25 local variables a0..a24 (index x + 5*y) rather than an
 * array so the compiler keeps them in registers. The n==0 rotation is omitted
 * by hand because a shift by 64 would be undefined. GCC turns the rotate idiom
 * into rol / vprolq and, with AVX-512, fuses the 3-input xors and chi's
 * a ^ (~b & c) into vpternlogq, so no intrinsics are needed.
 * ------------------------------------------------------------------------- */

#define ROL64(x, n) (((x) << (n)) | ((x) >> (64 - (n))))

#define LANES_LOAD(T, s)                                                        \
    T a0 = (s)[0], a1 = (s)[1], a2 = (s)[2], a3 = (s)[3], a4 = (s)[4],          \
      a5 = (s)[5], a6 = (s)[6], a7 = (s)[7], a8 = (s)[8], a9 = (s)[9],          \
      a10 = (s)[10], a11 = (s)[11], a12 = (s)[12], a13 = (s)[13], a14 = (s)[14], \
      a15 = (s)[15], a16 = (s)[16], a17 = (s)[17], a18 = (s)[18], a19 = (s)[19], \
      a20 = (s)[20], a21 = (s)[21], a22 = (s)[22], a23 = (s)[23], a24 = (s)[24]

#define LANES_STORE(s)                                                          \
    do {                                                                        \
        (s)[0] = a0; (s)[1] = a1; (s)[2] = a2; (s)[3] = a3; (s)[4] = a4;        \
        (s)[5] = a5; (s)[6] = a6; (s)[7] = a7; (s)[8] = a8; (s)[9] = a9;        \
        (s)[10] = a10; (s)[11] = a11; (s)[12] = a12; (s)[13] = a13; (s)[14] = a14; \
        (s)[15] = a15; (s)[16] = a16; (s)[17] = a17; (s)[18] = a18; (s)[19] = a19; \
        (s)[20] = a20; (s)[21] = a21; (s)[22] = a22; (s)[23] = a23; (s)[24] = a24; \
    } while (0)

/* theta, then rho and pi fused (b[y + 5*((2x + 3y) % 5)] = rot(a[x + 5y] ^ d[x])),
 * then chi row by row, then iota. */
#define KECCAK_ROUND(T, rc)                                                     \
    do {                                                                        \
        T c0 = a0 ^ a5 ^ a10 ^ a15 ^ a20;                                       \
        T c1 = a1 ^ a6 ^ a11 ^ a16 ^ a21;                                       \
        T c2 = a2 ^ a7 ^ a12 ^ a17 ^ a22;                                       \
        T c3 = a3 ^ a8 ^ a13 ^ a18 ^ a23;                                       \
        T c4 = a4 ^ a9 ^ a14 ^ a19 ^ a24;                                       \
        T d0 = c4 ^ ROL64(c1, 1);                                               \
        T d1 = c0 ^ ROL64(c2, 1);                                               \
        T d2 = c1 ^ ROL64(c3, 1);                                               \
        T d3 = c2 ^ ROL64(c4, 1);                                               \
        T d4 = c3 ^ ROL64(c0, 1);                                               \
        T b0 = a0 ^ d0;                                                         \
        T b1 = ROL64(a6 ^ d1, 44);                                              \
        T b2 = ROL64(a12 ^ d2, 43);                                             \
        T b3 = ROL64(a18 ^ d3, 21);                                             \
        T b4 = ROL64(a24 ^ d4, 14);                                             \
        T b5 = ROL64(a3 ^ d3, 28);                                              \
        T b6 = ROL64(a9 ^ d4, 20);                                              \
        T b7 = ROL64(a10 ^ d0, 3);                                              \
        T b8 = ROL64(a16 ^ d1, 45);                                             \
        T b9 = ROL64(a22 ^ d2, 61);                                             \
        T b10 = ROL64(a1 ^ d1, 1);                                              \
        T b11 = ROL64(a7 ^ d2, 6);                                              \
        T b12 = ROL64(a13 ^ d3, 25);                                            \
        T b13 = ROL64(a19 ^ d4, 8);                                             \
        T b14 = ROL64(a20 ^ d0, 18);                                            \
        T b15 = ROL64(a4 ^ d4, 27);                                             \
        T b16 = ROL64(a5 ^ d0, 36);                                             \
        T b17 = ROL64(a11 ^ d1, 10);                                            \
        T b18 = ROL64(a17 ^ d2, 15);                                            \
        T b19 = ROL64(a23 ^ d3, 56);                                            \
        T b20 = ROL64(a2 ^ d2, 62);                                             \
        T b21 = ROL64(a8 ^ d3, 55);                                             \
        T b22 = ROL64(a14 ^ d4, 39);                                            \
        T b23 = ROL64(a15 ^ d0, 41);                                            \
        T b24 = ROL64(a21 ^ d1, 2);                                             \
        a0 = b0 ^ (~b1 & b2) ^ (rc);                                            \
        a1 = b1 ^ (~b2 & b3);                                                   \
        a2 = b2 ^ (~b3 & b4);                                                   \
        a3 = b3 ^ (~b4 & b0);                                                   \
        a4 = b4 ^ (~b0 & b1);                                                   \
        a5 = b5 ^ (~b6 & b7);                                                   \
        a6 = b6 ^ (~b7 & b8);                                                   \
        a7 = b7 ^ (~b8 & b9);                                                   \
        a8 = b8 ^ (~b9 & b5);                                                   \
        a9 = b9 ^ (~b5 & b6);                                                   \
        a10 = b10 ^ (~b11 & b12);                                               \
        a11 = b11 ^ (~b12 & b13);                                               \
        a12 = b12 ^ (~b13 & b14);                                               \
        a13 = b13 ^ (~b14 & b10);                                               \
        a14 = b14 ^ (~b10 & b11);                                               \
        a15 = b15 ^ (~b16 & b17);                                               \
        a16 = b16 ^ (~b17 & b18);                                               \
        a17 = b17 ^ (~b18 & b19);                                               \
        a18 = b18 ^ (~b19 & b15);                                               \
        a19 = b19 ^ (~b15 & b16);                                               \
        a20 = b20 ^ (~b21 & b22);                                               \
        a21 = b21 ^ (~b22 & b23);                                               \
        a22 = b22 ^ (~b23 & b24);                                               \
        a23 = b23 ^ (~b24 & b20);                                               \
        a24 = b24 ^ (~b20 & b21);                                               \
    } while (0)

/* Keccak-f[1600] restricted to rounds first_round..23: 0 is SHA3, 1 is DeepSeekHashV1. */
static void
keccak_p(uint64_t s[25], int first_round)
{
    LANES_LOAD(uint64_t, s);
    for (int r = first_round; r < 24; r++) {
        KECCAK_ROUND(uint64_t, RC[r]);
    }
    LANES_STORE(s);
}

/* Byte assembly rather than a cast: correct on big-endian hosts and for
 * unaligned input; compilers reduce it to one load on little-endian ones. */
static inline uint64_t
load64_le(const uint8_t *p)
{
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24 |
           (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40 | (uint64_t)p[6] << 48 | (uint64_t)p[7] << 56;
}

static inline void
store64_le(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

static inline void
absorb_block(uint64_t s[25], const uint8_t *block)
{
    for (int i = 0; i < RATE_LANES; i++) {
        s[i] ^= load64_le(block + 8 * i);
    }
}

/* One-shot sponge with 32-byte output; any length, any number of blocks. */
static void
sponge256(const uint8_t *data, size_t len, int first_round, uint8_t out[32])
{
    uint64_t s[25] = {0};
    uint8_t last[RATE];

    for (; len >= RATE; data += RATE, len -= RATE) {
        absorb_block(s, data);
        keccak_p(s, first_round);
    }
    /* The padded final block always exists: an exact multiple of the rate
     * still gets a block holding only 0x06 ... 0x80. */
    memset(last, 0, RATE);
    if (len) {
        memcpy(last, data, len);
    }
    last[len] = 0x06;
    last[RATE - 1] |= 0x80;
    absorb_block(s, last);
    keccak_p(s, first_round);
    for (int i = 0; i < 4; i++) {
        store64_le(out + 8 * i, s[i]);
    }
}

/* ---------------------------------------------------------------------------
 * Scanning candidate answers.
 * ------------------------------------------------------------------------- */

/* The candidate's decimal digits, kept as text and incremented in place: far
 * cheaper than formatting every n from scratch. */
typedef struct {
    char d[DIGITS_MAX];
    int len;
} decimal;

static void
dec_set(decimal *dec, uint64_t n)
{
    char buf[DIGITS_MAX];
    int i = DIGITS_MAX;
    do {
        buf[--i] = (char)('0' + n % 10);
        n /= 10;
    } while (n);
    dec->len = DIGITS_MAX - i;
    memcpy(dec->d, buf + i, (size_t)dec->len);
}

static inline void
dec_inc(decimal *dec)
{
    int i = dec->len - 1;
    while (i >= 0 && dec->d[i] == '9') {
        dec->d[i--] = '0';
    }
    if (i >= 0) {
        dec->d[i]++;
    }
    else {  /* 99..9 -> 100..0; callers never exceed the 19 digits of a uint64_t */
        dec->d[0] = '1';
        dec->d[dec->len++] = '0';
    }
}

/* Everything about a challenge that does not depend on the candidate. The
 * prefix's whole blocks are absorbed once into `mid`; only the last block,
 * which holds the rest of the prefix and the digits, changes per candidate. */
typedef struct {
    uint64_t mid[25];
    uint8_t block[RATE];        /* prefix tail, zeros, final 0x80; digits go at tail_len */
    size_t tail_len;            /* < RATE */
    uint64_t one_block_limit;   /* candidates below this fit, with padding, in one block */
    uint64_t target[4];
} scan_t;

static void
scan_init(scan_t *sc, const uint8_t *prefix, size_t len, const uint8_t target[32])
{
    memset(sc->mid, 0, sizeof sc->mid);
    for (; len >= RATE; prefix += RATE, len -= RATE) {
        absorb_block(sc->mid, prefix);
        keccak_p(sc->mid, 1);
    }
    sc->tail_len = len;
    memset(sc->block, 0, RATE);
    memcpy(sc->block, prefix, len);
    sc->block[RATE - 1] = 0x80;

    /* digits + the 0x06 byte must fit in RATE - tail_len bytes. */
    int room = (int)(RATE - 1 - len);
    if (room <= 0) {
        sc->one_block_limit = 0;
    }
    else if (room >= 19) {
        sc->one_block_limit = UINT64_MAX;
    }
    else {
        uint64_t p = 1;
        while (room--) {
            p *= 10;
        }
        sc->one_block_limit = p;
    }
    for (int i = 0; i < 4; i++) {
        sc->target[i] = load64_le(target + 8 * i);
    }
}

/* The reference path: build the padded tail (one or two blocks), absorb it
 * from the mid-state and compare all four output lanes. The vector kernels
 * confirm their hits here, and it covers what they skip. */
static int
candidate_matches(const scan_t *sc, const decimal *dec)
{
    uint8_t msg[2 * RATE];
    uint64_t s[25];
    size_t pos = sc->tail_len + (size_t)dec->len;
    size_t blocks = pos + 1 <= RATE ? 1 : 2;

    memcpy(msg, sc->block, sc->tail_len);
    memcpy(msg + sc->tail_len, dec->d, (size_t)dec->len);
    memset(msg + pos, 0, blocks * RATE - pos);
    msg[pos] = 0x06;
    msg[blocks * RATE - 1] |= 0x80;

    memcpy(s, sc->mid, sizeof s);
    for (size_t b = 0; b < blocks; b++) {
        absorb_block(s, msg + b * RATE);
        keccak_p(s, 1);
    }
    return s[0] == sc->target[0] && s[1] == sc->target[1] && s[2] == sc->target[2] &&
           s[3] == sc->target[3];
}

static int64_t
scan_reference(const scan_t *sc, uint64_t start, uint64_t end)
{
    decimal dec;
    dec_set(&dec, start);
    for (uint64_t n = start; n < end; n++, dec_inc(&dec)) {
        if (candidate_matches(sc, &dec)) {
            return (int64_t)n;
        }
    }
    return -1;
}

#define BCAST(T, x) ((T){0} + (x))

/*
 * A kernel that hashes LANES candidates per permutation, lane k of every
 * vector belonging to candidate n + k. Callers guarantee that [start, end)
 * holds whole batches and that every candidate fits in one block.
 *
 * Per batch only the lanes holding digits or the 0x06 byte differ between
 * candidates; they are gathered from per-candidate block buffers, the other
 * lanes come pre-xored with the mid-state. The last round is peeled off so
 * that, with only lane 0 read afterwards, the compiler drops the other 24
 * lanes' rho and chi work there. A lane-0 hit (a 2^-64 false positive or the
 * answer) is confirmed on the full digest by candidate_matches.
 */
#define DEFINE_SCAN(NAME, T, LANES, ATTR)                                       \
    ATTR static int64_t                                                         \
    NAME(const scan_t *sc, uint64_t start, uint64_t end)                        \
    {                                                                           \
        uint8_t blk[LANES][RATE];                                               \
        T mid[25], base[25];                                                    \
        decimal dec;                                                            \
        const size_t lo = sc->tail_len / 8;                                     \
                                                                                \
        for (int j = 0; j < 25; j++) {                                          \
            uint64_t m = sc->mid[j];                                            \
            mid[j] = BCAST(T, m);                                               \
            base[j] = BCAST(T, j < RATE_LANES ? m ^ load64_le(sc->block + 8 * j) : m); \
        }                                                                       \
        for (int k = 0; k < LANES; k++) {                                       \
            memcpy(blk[k], sc->block, RATE);                                    \
        }                                                                       \
        dec_set(&dec, start);                                                   \
        for (uint64_t n = start; n < end; n += LANES) {                         \
            T st[25];                                                           \
            size_t pad = 0;                                                     \
            uint64_t lane0[LANES];                                              \
                                                                                \
            /* n only grows, so each buffer's digits only get longer and      \
             * overwrite the previous 0x06. */                                  \
            for (int k = 0; k < LANES; k++) {                                   \
                pad = sc->tail_len + (size_t)dec.len;                           \
                memcpy(blk[k] + sc->tail_len, dec.d, (size_t)dec.len);          \
                blk[k][pad] = sc->block[pad] | 0x06;                            \
                dec_inc(&dec);                                                  \
            }                                                                   \
            memcpy(st, base, sizeof st);                                        \
            for (size_t j = lo; j <= pad / 8; j++) {                            \
                uint64_t v[LANES];                                              \
                T t;                                                            \
                for (int k = 0; k < LANES; k++) {                               \
                    v[k] = load64_le(blk[k] + 8 * j);                           \
                }                                                               \
                memcpy(&t, v, sizeof t);                                        \
                st[j] = mid[j] ^ t;                                             \
            }                                                                   \
            {                                                                   \
                LANES_LOAD(T, st);                                              \
                for (int r = 1; r < 23; r++) {                                  \
                    KECCAK_ROUND(T, RC[r]);                                     \
                }                                                               \
                KECCAK_ROUND(T, RC[23]);                                        \
                memcpy(lane0, &a0, sizeof lane0);                               \
            }                                                                   \
            for (int k = 0; k < LANES; k++) {                                   \
                if (lane0[k] == sc->target[0]) {                                \
                    decimal hit;                                                \
                    dec_set(&hit, n + (uint64_t)k);                             \
                    if (candidate_matches(sc, &hit)) {                          \
                        return (int64_t)(n + (uint64_t)k);                      \
                    }                                                           \
                }                                                               \
            }                                                                   \
        }                                                                       \
        return -1;                                                              \
    }

DEFINE_SCAN(scan_scalar, uint64_t, 1, )

#ifdef POW_X86_SIMD
typedef uint64_t v4u64 __attribute__((vector_size(32)));
typedef uint64_t v8u64 __attribute__((vector_size(64)));

DEFINE_SCAN(scan_avx2, v4u64, 4, __attribute__((target("avx2"))))
DEFINE_SCAN(scan_avx512, v8u64, 8, __attribute__((target("avx512f,avx512vl"))))
#endif

typedef int64_t (*scan_fn)(const scan_t *, uint64_t, uint64_t);

typedef struct {
    const char *name;
    scan_fn fn;
    uint64_t lanes;
    int supported;              /* filled in at import */
} impl_t;

/* Best first: the default is the first supported entry. */
static impl_t IMPLS[] = {
#ifdef POW_X86_SIMD
    {"avx512", scan_avx512, 8, 0},
    {"avx2", scan_avx2, 4, 0},
#endif
    {"scalar", scan_scalar, 1, 1},
};
#define N_IMPLS ((int)(sizeof IMPLS / sizeof IMPLS[0]))

static const impl_t *default_impl;

static void
detect_cpu(void)
{
#ifdef POW_X86_SIMD
    /* __builtin_cpu_supports also checks that the OS saves the wide registers. */
    __builtin_cpu_init();
    for (int i = 0; i < N_IMPLS; i++) {
        if (strcmp(IMPLS[i].name, "avx512") == 0) {
            IMPLS[i].supported = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
        }
        else if (strcmp(IMPLS[i].name, "avx2") == 0) {
            IMPLS[i].supported = __builtin_cpu_supports("avx2");
        }
    }
#endif
    for (int i = 0; i < N_IMPLS; i++) {
        if (IMPLS[i].supported) {
            default_impl = &IMPLS[i];
            break;
        }
    }
}

/* Whole batches that fit in one block go to the kernel; the few leftover
 * candidates and any two-block ones (prefix tails near 136 bytes) to the
 * reference path. */
static int64_t
run_scan(const impl_t *impl, const scan_t *sc, uint64_t end)
{
    uint64_t vec_end = end < sc->one_block_limit ? end : sc->one_block_limit;
    vec_end -= vec_end % impl->lanes;
    int64_t found = impl->fn(sc, 0, vec_end);
    if (found >= 0) {
        return found;
    }
    return scan_reference(sc, vec_end, end);
}

/* ---------------------------------------------------------------------------
 * Python bindings.
 * ------------------------------------------------------------------------- */

static PyObject *
hash_with(PyObject *arg, int first_round)
{
    Py_buffer view;
    uint8_t out[32];

    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    sponge256((const uint8_t *)view.buf, (size_t)view.len, first_round, out);
    PyBuffer_Release(&view);
    return PyBytes_FromStringAndSize((const char *)out, 32);
}

static PyObject *
pow_hash_v1(PyObject *module, PyObject *data)
{
    (void)module;
    return hash_with(data, 1);
}

static PyObject *
pow_sha3_256(PyObject *module, PyObject *data)
{
    (void)module;
    return hash_with(data, 0);
}

static PyObject *
pow_solve(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"target", "prefix", "difficulty", "impl", NULL};
    Py_buffer target, prefix;
    long long difficulty;
    const char *impl_name = NULL;
    const impl_t *impl = default_impl;
    scan_t sc;
    int64_t found;

    (void)module;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*y*L|$z:solve", keywords, &target, &prefix,
                                     &difficulty, &impl_name)) {
        return NULL;
    }
    if (target.len != 32) {
        PyErr_Format(PyExc_ValueError, "target must be a 32-byte digest, got %zd bytes", target.len);
        goto fail;
    }
    if (difficulty < 0) {
        PyErr_Format(PyExc_ValueError, "difficulty must be >= 0, got %lld", difficulty);
        goto fail;
    }
    if (impl_name != NULL) {
        impl = NULL;
        for (int i = 0; i < N_IMPLS; i++) {
            if (strcmp(IMPLS[i].name, impl_name) == 0) {
                impl = &IMPLS[i];
            }
        }
        if (impl == NULL || !impl->supported) {
            PyErr_Format(PyExc_ValueError, "proof-of-work kernel '%s' is %s", impl_name,
                         impl == NULL ? "unknown" : "not supported by this CPU");
            goto fail;
        }
    }
    /* Everything the scan needs is copied out (the mid-state is computed here,
     * under the GIL), so a bytearray mutated by another thread cannot race it. */
    scan_init(&sc, (const uint8_t *)prefix.buf, (size_t)prefix.len, (const uint8_t *)target.buf);
    PyBuffer_Release(&target);
    PyBuffer_Release(&prefix);

    Py_BEGIN_ALLOW_THREADS
    found = run_scan(impl, &sc, (uint64_t)difficulty);
    Py_END_ALLOW_THREADS

    return PyLong_FromLongLong(found);

fail:
    PyBuffer_Release(&target);
    PyBuffer_Release(&prefix);
    return NULL;
}

static PyObject *
pow_impl(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    return PyUnicode_FromString(default_impl->name);
}

static PyObject *
pow_impls(PyObject *module, PyObject *unused)
{
    PyObject *names = PyList_New(0);

    (void)module;
    (void)unused;
    if (names == NULL) {
        return NULL;
    }
    for (int i = 0; i < N_IMPLS; i++) {
        if (IMPLS[i].supported) {
            PyObject *name = PyUnicode_FromString(IMPLS[i].name);
            if (name == NULL || PyList_Append(names, name) < 0) {
                Py_XDECREF(name);
                Py_DECREF(names);
                return NULL;
            }
            Py_DECREF(name);
        }
    }
    Py_SETREF(names, PyList_AsTuple(names));
    return names;
}

static PyMethodDef pow_methods[] = {
    {"hash_v1", pow_hash_v1, METH_O, "hash_v1(data) -> bytes: DeepSeekHashV1 (SHA3-256 without round 0)."},
    {"sha3_256", pow_sha3_256, METH_O, "sha3_256(data) -> bytes: standard SHA3-256 from the same code."},
    {"solve", (PyCFunction)(void (*)(void))pow_solve, METH_VARARGS | METH_KEYWORDS,
     "solve(target, prefix, difficulty, *, impl=None) -> int\n\n"
     "Smallest n in [0, difficulty) with hash_v1(prefix + str(n)) == target, or -1.\n"
     "Releases the GIL for the whole scan. impl names a kernel from impls()."},
    {"impl", pow_impl, METH_NOARGS, "impl() -> str: the kernel solve() uses by default."},
    {"impls", pow_impls, METH_NOARGS, "impls() -> tuple[str, ...]: kernels this CPU runs, best first."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef pow_module = {
    PyModuleDef_HEAD_INIT,
    "ds2a.deepseek._pow",
    "DeepSeekHashV1 proof of work in C (see ds2a.deepseek.pow).",
    -1,
    pow_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__pow(void)
{
    detect_cpu();
    return PyModule_Create(&pow_module);
}
