/* The label join's event-id hashes, without a Python object per id.

   hashes(ids) is [int.from_bytes(blake2b(i.encode(), digest_size=8).digest(), "big") >> 1
   for i in ids]: the same 63-bit values as detectors.performance.id_hash, which
   checkpoints hold, so the two are interchangeable (tests/test_idhash.py compares
   them). hashlib builds a hash object and a digest object per id (about 0.35 µs);
   this loop hashes each id's UTF-8 bytes in place.

   BLAKE2b as in RFC 7693 (unkeyed, 8-byte digest). An id that is not a str raises
   TypeError, and one that cannot be encoded in UTF-8 (a lone surrogate) raises
   UnicodeEncodeError, as str.encode does. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const uint64_t IV[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL,
    0xa54ff53a5f1d36f1ULL, 0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL,
    0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL};

static const uint8_t SIGMA[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3}};

static inline uint64_t rotr(uint64_t x, int n) { return (x >> n) | (x << (64 - n)); }

static inline uint64_t load64(const uint8_t *p)  /* little-endian, any alignment */
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t v;
    memcpy(&v, p, sizeof v);  /* one load */
    return v;
#else
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
#endif
}

#define G(a, b, c, d, x, y)                  \
    do {                                     \
        v[a] = v[a] + v[b] + (x);            \
        v[d] = rotr(v[d] ^ v[a], 32);        \
        v[c] = v[c] + v[d];                  \
        v[b] = rotr(v[b] ^ v[c], 24);        \
        v[a] = v[a] + v[b] + (y);            \
        v[d] = rotr(v[d] ^ v[a], 16);        \
        v[c] = v[c] + v[d];                  \
        v[b] = rotr(v[b] ^ v[c], 63);        \
    } while (0)

/* One 128-byte block into h; t: bytes hashed so far, including this block's. */
static void compress(uint64_t h[8], const uint8_t block[128], uint64_t t, int last)
{
    uint64_t v[16], m[16];
    for (int i = 0; i < 16; i++) m[i] = load64(block + 8 * i);
    for (int i = 0; i < 8; i++) { v[i] = h[i]; v[i + 8] = IV[i]; }
    v[12] ^= t;  /* the counter's high word stays 0: ids are far below 2**64 bytes */
    if (last) v[14] = ~v[14];
    /* the rounds written out: SIGMA's indices are constants, so v and m can stay in
       registers (as in the RFC's reference code); about twice as fast as a loop */
#define ROUND(r)                                                   \
    do {                                                           \
        G(0, 4, 8, 12, m[SIGMA[r][0]], m[SIGMA[r][1]]);            \
        G(1, 5, 9, 13, m[SIGMA[r][2]], m[SIGMA[r][3]]);            \
        G(2, 6, 10, 14, m[SIGMA[r][4]], m[SIGMA[r][5]]);           \
        G(3, 7, 11, 15, m[SIGMA[r][6]], m[SIGMA[r][7]]);           \
        G(0, 5, 10, 15, m[SIGMA[r][8]], m[SIGMA[r][9]]);           \
        G(1, 6, 11, 12, m[SIGMA[r][10]], m[SIGMA[r][11]]);         \
        G(2, 7, 8, 13, m[SIGMA[r][12]], m[SIGMA[r][13]]);          \
        G(3, 4, 9, 14, m[SIGMA[r][14]], m[SIGMA[r][15]]);          \
    } while (0)
    ROUND(0); ROUND(1); ROUND(2); ROUND(3); ROUND(4); ROUND(5);
    ROUND(6); ROUND(7); ROUND(8); ROUND(9); ROUND(10); ROUND(11);
#undef ROUND
    for (int i = 0; i < 8; i++) h[i] ^= v[i] ^ v[i + 8];
}

static inline uint64_t digest_int(uint64_t h0)  /* h[0]'s bytes as a big-endian int */
{
    uint64_t out = 0;
    for (int i = 0; i < 8; i++) out = (out << 8) | ((h0 >> (8 * i)) & 0xff);
    return out;
}

/* BLAKE2b-64 of data, as the big-endian integer of its 8 digest bytes. */
static uint64_t blake2b_64(const uint8_t *data, size_t n)
{
    uint64_t h[8];
    uint8_t block[128];
    memcpy(h, IV, sizeof h);
    h[0] ^= 0x01010000ULL ^ 8;  /* fanout 1, depth 1, no key, 8-byte digest */
    size_t done = 0;
    while (n - done > 128) {  /* every block but the last (which may be full) */
        compress(h, data + done, (uint64_t)(done + 128), 0);
        done += 128;
    }
    memset(block, 0, sizeof block);
    memcpy(block, data + done, n - done);
    compress(h, block, (uint64_t)n, 1);
    return digest_int(h[0]);  /* the digest is h[0]'s 8 bytes, little-endian */
}

/* Ids of one block each (at most 128 bytes; a UUID is 36) several at once: the
   rounds are a chain of dependent operations that one id cannot keep the CPU
   busy with, and side by side, each word a vector of the ids' words, 8 ids cost
   about as much as two alone (AVX-512: 25 ns an id against 104; AVX2, 4 ids, whose
   16 vector registers hold only half the state: 60). GCC's vector extensions,
   compiled for each instruction set and picked at import by what the CPU has. */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define MANY_LANES 8
typedef uint64_t u64x8 __attribute__((vector_size(64)));
typedef uint64_t u64x4 __attribute__((vector_size(32)));
#define LANES 8
#define VEC u64x8
#define NAME blake2b_64_x8
#define TARGET "avx512f"
#include "_idhash_lanes.h"
#undef LANES
#undef VEC
#undef NAME
#undef TARGET
#define LANES 4
#define VEC u64x4
#define NAME blake2b_64_x4
#define TARGET "avx2"
#include "_idhash_lanes.h"
#undef LANES
#undef VEC
#undef NAME
#undef TARGET
#endif

static int lanes = 1;  /* ids hashed at once: set at import by what the CPU runs */

/* Each id's hash into out[0..n); -1 with the exception str.encode would raise. */
static int
hash_into(PyObject *const *items, Py_ssize_t n, uint64_t *out)
{
#ifdef MANY_LANES
    uint8_t blocks[MANY_LANES][128];
    uint64_t len[MANY_LANES], h[MANY_LANES];
    Py_ssize_t slot[MANY_LANES];
    int held = 0;  /* ids of one block waiting for the others of their group */
#endif
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyUnicode_Check(items[i])) {
            PyErr_Format(PyExc_TypeError, "an event id must be str, not %.100s",
                         Py_TYPE(items[i])->tp_name);
            return -1;
        }
        Py_ssize_t size;
        const char *utf8 = PyUnicode_AsUTF8AndSize(items[i], &size);
        if (utf8 == NULL) return -1;  /* UnicodeEncodeError: a lone surrogate */
#ifdef MANY_LANES
        if (lanes > 1 && size <= 128) {
            memcpy(blocks[held], utf8, (size_t)size);
            memset(blocks[held] + size, 0, (size_t)(128 - size));
            len[held] = (uint64_t)size;
            slot[held++] = i;
            if (held == lanes) {
                if (lanes == 8) blake2b_64_x8((const uint8_t(*)[128])blocks, len, h);
                else blake2b_64_x4((const uint8_t(*)[128])blocks, len, h);
                for (int k = 0; k < held; k++) out[slot[k]] = digest_int(h[k]) >> 1;
                held = 0;
            }
            continue;
        }
#endif
        out[i] = blake2b_64((const uint8_t *)utf8, (size_t)size) >> 1;
    }
#ifdef MANY_LANES
    for (int k = 0; k < held; k++)  /* the last few: one at a time */
        out[slot[k]] = blake2b_64(blocks[k], (size_t)len[k]) >> 1;
#endif
    return 0;
}

/* The hashes as a bytearray of native uint64 (numpy.frombuffer reads it): no int
   object per id, for callers that keep only some of them. */
static PyObject *
hash_array(PyObject *self, PyObject *arg)
{
    PyObject *seq = PySequence_Fast(arg, "hash_array() needs a sequence of str");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *out = PyByteArray_FromStringAndSize(NULL, n * 8);
    if (out != NULL && hash_into(PySequence_Fast_ITEMS(seq), n,
                                 (uint64_t *)PyByteArray_AS_STRING(out)) < 0)
        Py_CLEAR(out);
    Py_DECREF(seq);
    return out;
}

static PyObject *
hashes(PyObject *self, PyObject *arg)
{
    PyObject *array = hash_array(self, arg);
    if (array == NULL) return NULL;
    Py_ssize_t n = PyByteArray_GET_SIZE(array) / 8;
    const uint64_t *h = (const uint64_t *)PyByteArray_AS_STRING(array);
    PyObject *out = PyList_New(n);
    for (Py_ssize_t i = 0; out != NULL && i < n; i++) {
        PyObject *value = PyLong_FromUnsignedLongLong(h[i]);
        if (value == NULL) Py_CLEAR(out);
        else PyList_SET_ITEM(out, i, value);
    }
    Py_DECREF(array);
    return out;
}

static PyMethodDef methods[] = {
    {"hashes", hashes, METH_O,
     "hashes(ids) -> list[int]: each str's BLAKE2b-64 digest (of its UTF-8), shifted right "
     "by one bit"},
    {"hash_array", hash_array, METH_O,
     "hash_array(ids) -> bytearray: the same hashes, as native uint64 (no int per id)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_idhash",
    "The label join's event-id hashes (detectors.performance.id_hashes), compiled.", -1,
    methods};

PyMODINIT_FUNC
PyInit__idhash(void)
{
    PyObject *m = PyModule_Create(&module);
#ifdef MANY_LANES
    /* SENTINELLE_IDHASH_LANES=1 (or 4) holds the width down: for tests and benchmarks */
    const char *most = getenv("SENTINELLE_IDHASH_LANES");
    int cap = most != NULL ? atoi(most) : MANY_LANES;
    __builtin_cpu_init();
    if (cap >= 8 && __builtin_cpu_supports("avx512f")) lanes = 8;
    else if (cap >= 4 && __builtin_cpu_supports("avx2")) lanes = 4;
#endif
    if (m != NULL && PyModule_AddIntConstant(m, "LANES", lanes) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
