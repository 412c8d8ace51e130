/*
 * The CUSUMs of a bank of alternatives over blocks of values: the inner loop of
 * detectors.sequential._Group.scan, compiled.
 *
 * numpy does the same with a bincount, a matrix product and two running scans
 * (sum, then minimum) over (blocks x alternatives); each scan costs about 2.4 ns
 * per element whatever the layout (numpy's accumulate does not vectorise across
 * columns), which made the sequential tests dearer than the windowed ones they
 * replaced. Here one pass over the values does it all: each value adds its
 * bin's row of log ratios to the block's increments, and at each block's end
 * every CUSUM moves (W += increment, M = min(0, running min of W), S = W - M).
 *
 * The arithmetic is the numpy version's, in the same order but for the
 * increments of a block (summed value by value here, bin count times log ratio
 * there): the results agree to the last few bits, and the Python side is the
 * reference (tests/test_sequential_equivalence.py runs both).
 *
 * Nothing here allocates or keeps state: the caller passes the state's copies
 * and keeps them only when no CUSUM crossed. Every index is checked against
 * the sizes of the buffers it reads, so a bad bin index is an exception, never
 * a read past a buffer.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    Py_buffer view;
    int held;
} Buf;

static int
get(PyObject *obj, Buf *b, const char *fmt, Py_ssize_t itemsize, int writable, const char *name)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, &b->view, flags) < 0)
        return -1;
    b->held = 1;
    const char *got = b->view.format;
    /* int64 is 'l' where long has 64 bits, 'q' elsewhere */
    int same = got != NULL && (strcmp(got, fmt) == 0
                               || (fmt[0] == 'l' && strcmp(got, "q") == 0));
    if (b->view.itemsize != itemsize || !same) {
        PyErr_Format(PyExc_TypeError, "%s: expected a contiguous array of '%s'", name, fmt);
        return -1;
    }
    return 0;
}

static void
release(Buf *bufs, int n)
{
    for (int i = 0; i < n; i++)
        if (bufs[i].held)
            PyBuffer_Release(&bufs[i].view);
}

#define LEN(b) ((b).view.len / (b).view.itemsize)

/* A block's end: every CUSUM moves by its increment (which is reset). W and its
   running minimum M are kept, S = W - M is not (it is read off them when wanted);
   ``lastz``: the last block where S was 0 (W at its running minimum). Returns
   how many CUSUMs reached their thresholds. Pointers restrict and selects of
   one width, so that it vectorises. */
static inline long long
close_block(Py_ssize_t m, double r, double *restrict inc, double *restrict w,
            double *restrict mn, double *restrict lastz, const double *restrict h)
{
    long long over = 0;
    for (Py_ssize_t j = 0; j < m; j++) {
        const double wj = w[j] + inc[j];
        const double lowest = wj < mn[j] ? wj : mn[j];
        w[j] = wj;
        inc[j] = 0.0;
        mn[j] = lowest;
        lastz[j] = wj <= lowest ? r : lastz[j];
        over += wj - lowest >= h[j];
    }
    return over;
}

/* The status of CUSUMs ``s`` (thresholds ``h``): the largest ratio s / h and the
   first alternative within ``tie`` (relative) of it, as detectors.sequential.nearest
   computes them (the same operations, in the same order). */
static void
nearest_of(const double *s, const double *h, Py_ssize_t m, double tie, double *top,
           int64_t *arg)
{
    double t = -HUGE_VAL;
    for (Py_ssize_t j = 0; j < m; j++) {
        const double r = s[j] / h[j];
        t = r > t ? r : t;
    }
    const double lim = t - tie * fabs(t);
    *top = t;
    *arg = 0;
    for (Py_ssize_t j = 0; j < m; j++) {
        if (s[j] / h[j] >= lim) {
            *arg = j;
            break;
        }
    }
}

/* The scan itself (see scan() below for the arguments), on buffers already
   checked; ``scratch``: 3 m doubles. Compiled twice, for AVX2 and for any
   x86-64, the loader picking the one the CPU runs (gcc's target_clones). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
__attribute__((target_clones("avx2", "default")))
#endif
static long long
run(Py_ssize_t n, const int64_t *x, const double *table, const double *h, Py_ssize_t m,
    Py_ssize_t k, double *s, int64_t *zero_at, int64_t *partial, long long block,
    long long *fill_io, long long base, const int64_t *mark_rows, Py_ssize_t nmarks,
    double *marked, double *mark_top, int64_t *mark_arg, double tie, double *s_cross,
    int64_t *last_zero, double *inc, double *scratch, double *end_top, int64_t *end_arg)
{
    double *restrict w = scratch, *restrict mn = scratch + m, *restrict lastz = scratch + 2 * m;
    /* the open block's increments so far: its counts times the log ratios */
    for (Py_ssize_t j = 0; j < m; j++)
        inc[j] = 0.0;
    for (Py_ssize_t v = 0; v < k; v++) {
        const int64_t c = partial[v];
        if (c) {
            const double *row = table + v * m;
            for (Py_ssize_t j = 0; j < m; j++)
                inc[j] += (double)c * row[j];
        }
    }
    /* W: W_0 = 0, then W_1 = s + the first block's increment, and so on; M: the
       running minimum of W from W_0 (so M <= 0); S = W - M */
    for (Py_ssize_t j = 0; j < m; j++) {
        w[j] = s[j];
        mn[j] = 0.0;
        lastz[j] = 0.0;
    }
    Py_ssize_t mi = 0;
    while (mi < nmarks && mark_rows[mi] <= 0) {
        memcpy(marked + mi * m, s, m * sizeof(double));
        nearest_of(s, h, m, tie, mark_top + mi, mark_arg + mi);
        mi++;
    }
    long long crossed = -1, row = 0, f = *fill_io;
    for (Py_ssize_t i = 0; i < n; i++) {
        const double *restrict trow = table + x[i] * m;
        double *restrict acc = inc;
        for (Py_ssize_t j = 0; j < m; j++)
            acc[j] += trow[j];
        if (++f < block)
            continue;
        f = 0;
        row += 1;
        const long long over = close_block(m, (double)row, acc, w, mn, lastz, h);
        while (mi < nmarks && mark_rows[mi] <= row) {
            double *out = marked + mi * m;
            for (Py_ssize_t j = 0; j < m; j++)
                out[j] = w[j] - mn[j];
            nearest_of(out, h, m, tie, mark_top + mi, mark_arg + mi);
            mi++;
        }
        if (over) {
            crossed = row;
            break;
        }
    }
    if (crossed >= 0) {   /* the CUSUMs after the crossing block, and their last 0s */
        for (Py_ssize_t j = 0; j < m; j++) {
            s_cross[j] = w[j] - mn[j];
            last_zero[j] = (int64_t)lastz[j];
        }
        return crossed;
    }
    if (row > 0) {
        for (Py_ssize_t j = 0; j < m; j++)
            s[j] = w[j] - mn[j];
        memset(partial, 0, k * sizeof(int64_t));   /* the open block: the last f values */
    }
    nearest_of(s, h, m, tie, end_top, end_arg);
    for (Py_ssize_t t = n - (row > 0 ? f : n); t < n; t++)
        partial[x[t]] += 1;
    /* where W went below 0, the last block where it was at its minimum (the numpy
       version takes the first block at the minimum: the same, but for exact ties) */
    for (Py_ssize_t j = 0; j < m; j++)
        if (mn[j] < 0.0)
            zero_at[j] = base + (int64_t)lastz[j] * block;
    *fill_io = f;
    return -1;
}

/*
 * scan(x, table, h, s, zero_at, partial, block, fill, base, mark_rows, marked,
 *      mark_top, mark_arg, tie, s_cross, last_zero, inc)
 *   -> (crossed_row, fill, top, arg)
 *
 * x          int64[n]     bin indices, each in [0, k)
 * table      float64[k*m] log ratios, a row of m alternatives per bin
 * h          float64[m]   thresholds
 * s          float64[m]   in: the CUSUMs; out (no crossing): after the values
 * zero_at    int64[m]     in/out (no crossing): value count at each CUSUM's last 0
 *                         (changed where W went below 0 and below its past)
 * partial    int64[k]     in: counts of the open block; out (no crossing): after
 * block      values per block; fill: values already in the open block
 * base       value count at the start of the open block
 * mark_rows  int64[r]     non-decreasing block counts at which the CUSUMs are
 *                         wanted: marked[i*m:(i+1)*m] (row 0: s as it came in)
 * mark_top   float64[r]   out: at each mark, the largest ratio CUSUM / threshold
 * mark_arg   int64[r]     out: and the first alternative within ``tie`` of it
 * tie        relative tolerance of those ties (detectors.sequential.TIE)
 * s_cross    float64[m]   out (crossing): the CUSUMs after the crossing block
 * last_zero  int64[m]     out (crossing): per alternative, the last block (1-based,
 *                         this call) after which its CUSUM was 0; 0 if none
 * inc        float64[m]   scratch
 *
 * crossed_row: the first block (1-based, this call) after which some CUSUM is at
 * or above its threshold, or -1 (then s, zero_at, partial hold the new state,
 * fill the values of the open block, and top and arg the new state's status as
 * for the marks).
 */
static PyObject *
scan(PyObject *self, PyObject *args)
{
    PyObject *ox, *otable, *oh, *os, *ozero, *opartial, *omarks, *omarked, *omtop, *omarg,
        *oscross, *olastzero, *oinc;
    long long block, fill, base;
    double tie;
    if (!PyArg_ParseTuple(args, "OOOOOOLLLOOOOdOOO", &ox, &otable, &oh, &os, &ozero,
                          &opartial, &block, &fill, &base, &omarks, &omarked, &omtop, &omarg,
                          &tie, &oscross, &olastzero, &oinc))
        return NULL;
    Buf b[13];
    memset(b, 0, sizeof b);
    if (get(ox, &b[0], "l", 8, 0, "x") < 0 || get(otable, &b[1], "d", 8, 0, "table") < 0
        || get(oh, &b[2], "d", 8, 0, "h") < 0 || get(os, &b[3], "d", 8, 1, "s") < 0
        || get(ozero, &b[4], "l", 8, 1, "zero_at") < 0
        || get(opartial, &b[5], "l", 8, 1, "partial") < 0
        || get(omarks, &b[6], "l", 8, 0, "mark_rows") < 0
        || get(omarked, &b[7], "d", 8, 1, "marked") < 0
        || get(oscross, &b[8], "d", 8, 1, "s_cross") < 0
        || get(olastzero, &b[9], "l", 8, 1, "last_zero") < 0
        || get(oinc, &b[10], "d", 8, 1, "inc") < 0
        || get(omtop, &b[11], "d", 8, 1, "mark_top") < 0
        || get(omarg, &b[12], "l", 8, 1, "mark_arg") < 0) {
        release(b, 13);
        return NULL;
    }
    const int64_t *x = b[0].view.buf;
    const double *table = b[1].view.buf, *h = b[2].view.buf;
    double *s = b[3].view.buf, *marked = b[7].view.buf, *s_cross = b[8].view.buf;
    double *inc = b[10].view.buf;
    int64_t *zero_at = b[4].view.buf, *partial = b[5].view.buf, *last_zero = b[9].view.buf;
    const int64_t *mark_rows = b[6].view.buf;
    double *mark_top = b[11].view.buf;
    int64_t *mark_arg = b[12].view.buf;
    Py_ssize_t n = LEN(b[0]), m = LEN(b[2]), k = LEN(b[5]), nmarks = LEN(b[6]);
    if (LEN(b[1]) != k * m || LEN(b[3]) != m || LEN(b[4]) != m || LEN(b[8]) != m
        || LEN(b[9]) != m || LEN(b[10]) != m || LEN(b[7]) != nmarks * m
        || LEN(b[11]) != nmarks || LEN(b[12]) != nmarks || !(tie >= 0.0)
        || block < 1 || fill < 0 || fill >= block) {
        release(b, 13);
        PyErr_SetString(PyExc_ValueError, "scan: inconsistent sizes");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (x[i] < 0 || x[i] >= k) {
            release(b, 13);
            PyErr_Format(PyExc_IndexError, "scan: bin index %lld outside [0, %zd)",
                         (long long)x[i], k);
            return NULL;
        }
    }
    /* scratch, all doubles so that the per-block loop vectorises: W, its running
       minimum M, the last block where S was 0 (block numbers are exact in a double) */
    double *scratch = PyMem_Malloc(3 * m * sizeof(double) + 1);
    if (scratch == NULL) {
        release(b, 13);
        return PyErr_NoMemory();
    }
    double end_top = 0.0;
    int64_t end_arg = 0;
    long long crossed = run(n, x, table, h, m, k, s, zero_at, partial, block, &fill, base,
                            mark_rows, nmarks, marked, mark_top, mark_arg, tie, s_cross,
                            last_zero, inc, scratch, &end_top, &end_arg);
    PyMem_Free(scratch);
    release(b, 13);
    return Py_BuildValue("LLdL", crossed, fill, end_top, (long long)end_arg);
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, "CUSUMs of a bank of alternatives over blocks of values."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cusum",
    "Compiled inner loop of detectors.sequential (see _cusum.c).", -1, methods,
};

/* Raised whenever scan()'s arguments or meaning change: detectors.sequential uses
   the compiled loop only when this matches what it expects (a stale build, left
   from an older checkout, falls back to numpy instead of failing every call). */
#define ABI 2

PyMODINIT_FUNC
PyInit__cusum(void)
{
    PyObject *mod = PyModule_Create(&module);
    if (mod != NULL && PyModule_AddIntConstant(mod, "ABI", ABI) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
