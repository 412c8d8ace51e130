/*
 * The CUSUMs of a bank of alternatives over blocks of values: the inner loop of
 * detectors.sequential.SequentialTest._scan, compiled (scan_bank, at the end:
 * every group of a bank over a micro-batch, and the bank's status at marks).
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
 * Nothing here keeps state: the caller's state arrays are written in place, and
 * only when no CUSUM crossed (with a crossing the caller starts every CUSUM
 * again). Every argument is checked before anything is written, and every index
 * against the sizes of the buffers it reads, so a bad bin index is an exception,
 * never a read past a buffer or a half-written state.
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

/*
 * One group's loop, its arguments:
 *
 * x          int64[n]     bin indices, each in [0, k)
 * table      float64[k*m] log ratios, a row of m alternatives per bin
 * h          float64[m]   thresholds
 * s          float64[m]   in: the CUSUMs; out (no crossing): after the values
 * zero_at    int64[m]     in/out (no crossing): value count at each CUSUM's last 0
 *                         (changed where W went below 0 and below its past)
 * partial    int64[k]     in: counts of the open block; out (no crossing): after
 * block      values per block; *fill_io: values in the open block (in, and out)
 * base       value count at the start of the open block
 * mark_rows  int64[r]     non-decreasing block counts at which the CUSUMs are
 *                         wanted: marked[i*m:(i+1)*m] (row 0: s as it came in)
 * mark_top   float64[r]   out: at each mark, the largest ratio CUSUM / threshold
 * mark_arg   int64[r]     out: and the first alternative within ``tie`` of it
 * tie        relative tolerance of those ties (detectors.sequential.TIE)
 * s_cross    float64[m]   out (crossing): the CUSUMs after the crossing block
 * last_zero  int64[m]     out (crossing): per alternative, the last block (1-based,
 *                         this call) after which its CUSUM was 0; 0 if none
 * inc        float64[m]   scratch: the open block's increments
 * scratch    float64[3m]  W, its running minimum, the last block where S was 0
 * end_top, end_arg        out (no crossing): the new state's status, as at marks
 *
 * Returns the first block (1-based, this call) after which some CUSUM is at or
 * above its threshold, or -1 (then s, zero_at, partial hold the new state and
 * *fill_io the values of the open block). Compiled twice, for AVX2 and for any
 * x86-64, the loader picking the one the CPU runs (gcc's target_clones).
 */
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
 * scan_bank(x, groups, seen, marks, tie, mark_j, mark_s, mark_h, end_top, end_arg, fills)
 *   -> (group, crossed_row, taken)
 *
 * run() for every group of a bank in one call, and the bank's status at each mark
 * (detectors.sequential.SequentialTest._scan): a call per group and a status per
 * mark picked in Python cost more than the loop itself at a micro-batch's size.
 *
 * groups     a tuple, per group: (table, h, s, zero_at, partial, members, s_cross,
 *            last_zero, inc, block, fill), as for run(); members int64[m]: each
 *            CUSUM's index in the bank (increasing)
 * seen       values the test has read before x
 * marks      int64[r] increasing counts of values of x after which the bank's status
 *            is wanted: mark_j (the bank's alternative nearest its threshold, ties to
 *            the first within ``tie``, as detectors.sequential.nearest), mark_s (its
 *            CUSUM) and mark_h (its threshold), for the marks up to the first crossing
 * end_top, end_arg, fills (one per group): with no crossing, each group's status and
 *            the values of its open block
 *
 * group: the group whose CUSUM crossed first (the earliest value; the first group on
 * a tie), or -1; crossed_row: that group's, as run() returns it (its s_cross and
 * last_zero hold the rest); taken: how many marks were noted. With no crossing every
 * group's state is the new one; with one, the caller resets them all.
 */
typedef struct {
    Buf b[9];
    Py_ssize_t m, k;
    long long block, fill;
    double *mem;              /* scratch (3 m), marked (r m), mark tops (r) */
    int64_t *ints;            /* mark rows (r), mark args (r) */
    long long crossed, newfill;
    double end_top;
    int64_t end_arg;
} Group;

static int
group_of(PyObject *item, Group *g, Py_ssize_t r)
{
    PyObject *o[9];
    if (!PyTuple_Check(item) || !PyArg_ParseTuple(item, "OOOOOOOOOLL", &o[0], &o[1], &o[2],
                                                  &o[3], &o[4], &o[5], &o[6], &o[7], &o[8],
                                                  &g->block, &g->fill)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "scan_bank: a group is a tuple");
        return -1;
    }
    static const char *fmt[9] = {"d", "d", "d", "l", "l", "l", "d", "l", "d"};
    static const int writable[9] = {0, 0, 1, 1, 1, 0, 1, 1, 1};
    static const char *name[9] = {"table", "h", "s", "zero_at", "partial", "members",
                                  "s_cross", "last_zero", "inc"};
    for (int i = 0; i < 9; i++)
        if (get(o[i], &g->b[i], fmt[i], 8, writable[i], name[i]) < 0)
            return -1;
    g->m = LEN(g->b[1]);
    g->k = LEN(g->b[4]);
    if (LEN(g->b[0]) != g->k * g->m || LEN(g->b[2]) != g->m || LEN(g->b[3]) != g->m
        || LEN(g->b[5]) != g->m || LEN(g->b[6]) != g->m || LEN(g->b[7]) != g->m
        || LEN(g->b[8]) != g->m || g->m < 1 || g->block < 1 || g->fill < 0
        || g->fill >= g->block) {
        PyErr_SetString(PyExc_ValueError, "scan_bank: inconsistent sizes");
        return -1;
    }
    g->mem = PyMem_Malloc(((3 + r) * g->m + r + 1) * sizeof(double));
    g->ints = PyMem_Malloc((2 * r + 1) * sizeof(int64_t));
    if (g->mem == NULL || g->ints == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void
free_groups(Group *gs, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        release(gs[i].b, 9);
        PyMem_Free(gs[i].mem);
        PyMem_Free(gs[i].ints);
    }
    PyMem_Free(gs);
}

static PyObject *
scan_bank(PyObject *self, PyObject *args)
{
    PyObject *ox, *ogroups, *omarks, *omj, *oms, *omh, *otop, *oarg, *ofills;
    long long seen;
    double tie;
    if (!PyArg_ParseTuple(args, "OO!LOdOOOOOO", &ox, &PyTuple_Type, &ogroups, &seen, &omarks,
                          &tie, &omj, &oms, &omh, &otop, &oarg, &ofills))
        return NULL;
    Buf b[8];
    memset(b, 0, sizeof b);
    Group *gs = NULL;
    Py_ssize_t ngs = 0;   /* groups whose buffers gs holds */
    if (get(ox, &b[0], "l", 8, 0, "x") < 0 || get(omarks, &b[1], "l", 8, 0, "marks") < 0
        || get(omj, &b[2], "l", 8, 1, "mark_j") < 0 || get(oms, &b[3], "d", 8, 1, "mark_s") < 0
        || get(omh, &b[4], "d", 8, 1, "mark_h") < 0
        || get(otop, &b[5], "d", 8, 1, "end_top") < 0
        || get(oarg, &b[6], "l", 8, 1, "end_arg") < 0
        || get(ofills, &b[7], "l", 8, 1, "fills") < 0)
        goto fail;
    const int64_t *x = b[0].view.buf, *marks = b[1].view.buf;
    Py_ssize_t n = LEN(b[0]), r = LEN(b[1]), ng = PyTuple_GET_SIZE(ogroups);
    int bad = !(tie >= 0.0) || ng < 1 || LEN(b[2]) != r || LEN(b[3]) != r || LEN(b[4]) != r
              || LEN(b[5]) != ng || LEN(b[6]) != ng || LEN(b[7]) != ng;
    for (Py_ssize_t i = 1; !bad && i < r; i++)
        bad = marks[i] < marks[i - 1];
    if (!bad && r)
        bad = marks[0] < 0 || marks[r - 1] > n;
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "scan_bank: inconsistent sizes");
        goto fail;
    }
    gs = PyMem_Calloc(ng, sizeof(Group));
    if (gs == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    Py_ssize_t k = -1;
    for (; ngs < ng; ngs++) {
        const int ok = group_of(PyTuple_GET_ITEM(ogroups, ngs), &gs[ngs], r) == 0;
        if (!ok || (k >= 0 && gs[ngs].k != k)) {
            if (ok)
                PyErr_SetString(PyExc_ValueError, "scan_bank: groups of other bins");
            ngs++;   /* its buffers too */
            goto fail;
        }
        k = gs[ngs].k;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (x[i] < 0 || x[i] >= k) {
            PyErr_Format(PyExc_IndexError, "scan: bin index %lld outside [0, %zd)",
                         (long long)x[i], k);
            goto fail;
        }
    }
    /* each group over x */
    long long first = -1, at = n;   /* the group that crossed first, and the value */
    for (Py_ssize_t gi = 0; gi < ng; gi++) {
        Group *g = &gs[gi];
        const Py_ssize_t m = g->m;
        double *scratch = g->mem, *marked = g->mem + 3 * m, *mtop = marked + r * m;
        int64_t *rows = g->ints, *marg = g->ints + r;
        for (Py_ssize_t i = 0; i < r; i++)
            rows[i] = (g->fill + marks[i]) / g->block;
        long long fill = g->fill;
        g->crossed = run(n, x, g->b[0].view.buf, g->b[1].view.buf, m, g->k, g->b[2].view.buf,
                         g->b[3].view.buf, g->b[4].view.buf, g->block, &fill,
                         seen - g->fill, rows, r, marked, mtop, marg, tie, g->b[6].view.buf,
                         g->b[7].view.buf, g->b[8].view.buf, scratch, &g->end_top,
                         &g->end_arg);
        g->newfill = fill;
        if (g->crossed >= 0) {
            const long long value = g->crossed * g->block - g->fill - 1;
            if (value < at) {
                at = value;
                first = gi;
            }
        }
    }
    /* the bank's status at the marks before the first crossing: the largest ratio of
       all, then the first alternative of the bank within tie of it */
    int64_t *mj = b[2].view.buf;
    double *ms = b[3].view.buf, *mh = b[4].view.buf;
    Py_ssize_t taken = 0;
    for (; taken < r && marks[taken] <= at; taken++) {
        const Py_ssize_t i = taken;
        double top = -HUGE_VAL;
        for (Py_ssize_t gi = 0; gi < ng; gi++) {
            const double t = gs[gi].mem[3 * gs[gi].m + r * gs[gi].m + i];
            top = t > top ? t : top;
        }
        const double lim = top - tie * fabs(top);
        int64_t best = INT64_MAX;
        double bs = 0.0, bh = 0.0;
        for (Py_ssize_t gi = 0; gi < ng; gi++) {
            const Group *g = &gs[gi];
            const double *s = g->mem + 3 * g->m + i * g->m, *h = g->b[1].view.buf;
            const int64_t *members = g->b[5].view.buf;
            for (Py_ssize_t j = 0; j < g->m; j++) {
                if (s[j] / h[j] >= lim) {
                    if (members[j] < best) {
                        best = members[j];
                        bs = s[j];
                        bh = h[j];
                    }
                    break;
                }
            }
        }
        mj[i] = best;
        ms[i] = bs;
        mh[i] = bh;
    }
    double *end_top = b[5].view.buf;
    int64_t *end_arg = b[6].view.buf, *fills = b[7].view.buf;
    long long crossed_row = first >= 0 ? gs[first].crossed : -1;
    for (Py_ssize_t gi = 0; gi < ng; gi++) {
        end_top[gi] = gs[gi].end_top;
        end_arg[gi] = gs[gi].end_arg;
        fills[gi] = gs[gi].newfill;
    }
    free_groups(gs, ng);
    release(b, 8);
    return Py_BuildValue("LLn", first, crossed_row, taken);

fail:
    if (gs != NULL)
        free_groups(gs, ngs);
    release(b, 8);
    return NULL;
}

static PyMethodDef methods[] = {
    {"scan_bank", scan_bank, METH_VARARGS,
     "The CUSUMs of every group of a bank over values, and the bank's status at marks."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cusum",
    "Compiled inner loop of detectors.sequential (see _cusum.c).", -1, methods,
};

/* Raised whenever scan_bank()'s arguments or meaning change: detectors.sequential uses
   the compiled loop only when this matches what it expects (a stale build, left
   from an older checkout, falls back to numpy instead of failing every call). */
#define ABI 3

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
