/* The batch form's fast path: an ml.predictions or ml.feedback message (a JSON
   array of events) read straight into columns, without a dict per event.

   predictions(data, key, max_id_chars, max_features, max_events, min_ts, max_ts)
   returns every event's columns when the message is an array of events that
   streams.core.parse's whole-batch check (_predictions_whole) accepts as they
   are, and None for anything else. On None the caller reads the message with
   orjson and checks it as it always did, naming what is wrong: this reader never
   refuses, never dead-letters and never explains. It only says "every element is
   plainly valid, here are its columns" or "ask orjson".

   What it reads is a strict subset of JSON, chosen so that orjson reads the same
   bytes to the same values (tests/test_batchparse.py compares the two, event by
   event, on generated and hostile messages):
   - strings without escapes or control bytes (a backslash anywhere: None), in
     valid UTF-8 (decoded strictly, as orjson does; invalid: None);
   - numbers in JSON's grammar, integers of at most 18 characters, floats of at
     most 40 characters with at most 3 exponent digits that parse to a finite
     double (correctly rounded, PyOS_string_to_double, as orjson's);
   - true, false, null; other fields' values skipped (validated) up to 32 levels.
   And of the contract's checks, the happy path only: event_id, model and version
   printable ASCII of 1 to max_id_chars characters; ts a number within
   [min_ts, max_ts] (RFC 3339 strings are handed back as text, for the caller's
   parse_time, with ts_text true); latency_ms a finite number >= 0; cohort and
   status null or one of their values; features absent or null in every event,
   or an object in every event with the same names in the same order (at most
   max_features, each of at most max_id_chars characters, no name twice) whose
   values are scalars; prediction a scalar or absent; model equal to the
   message key unless key is None; no known field twice in an event; at most
   max_events events. feedback(...) reads labels the same way: the header
   fields, and label a scalar other than null (_feedback_whole).

   The result is a tuple of lists, one per column (event_id, ts, ts_text,
   model, version, latency_ms, cohort, error, prediction, feature names,
   feature columns, spans), with repeated strings (model,
   version, a categorical feature's values) shared rather than copied. The
   feature names and columns are None when no event has a features object.
   feedback's tuple: event_id, ts, ts_text, model, version, label, spans. spans
   is a bytearray of int64 pairs, each element's start and end offsets in the
   message (no int object per event: they are read only for a dead letter). A
   feature column is a list of objects, or a bytearray of float64 values when
   every value was written as a JSON float (with a point or an exponent): the
   usual numeric feature, handed over without a float object per value.

   prediction_singles(values, keys, max_id_chars, max_features, min_ts, max_ts)
   and feedback_singles(...) read the single-event form the same way: a list of
   messages of one event each (a JSON object), each checked against its own key
   (bytes; anything else: None), into the same columns, with empty spans (each
   event is its whole message). None unless every message is plainly
   valid: streams.core.parse.parse_singles then reads them as it always did. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Functions return NULL (or -1) with no exception set to mean "outside the fast
   path", and with an exception set for a real error (memory). */
#define OUT (-1)

typedef struct {
    const char *p, *end;
} Cur;

static PyObject *S_STABLE, *S_CANARY;

static inline void ws(Cur *c)
{
    while (c->p < c->end) {
        char ch = *c->p;
        if (ch == ' ' || ch == '\n' || ch == '\r' || ch == '\t')
            c->p++;
        else
            break;
    }
}

static inline int expect(Cur *c, char ch)
{
    ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 0;
    }
    return OUT;
}

/* After a member of an object or an array: 1 when a ',' says another follows, 0 past
   the closing character, OUT for anything else. */
static inline int next_member(Cur *c, char close)
{
    ws(c);
    if (c->p < c->end && (*c->p == ',' || *c->p == close))
        return *c->p++ == ',';
    return OUT;
}

/* A string without escapes: its bytes in *s, *n; *ascii when every byte < 0x80. */
static int scan_string(Cur *c, const char **s, Py_ssize_t *n, int *ascii)
{
    if (c->p >= c->end || *c->p != '"')
        return OUT;
    const char *start = ++c->p, *q = start;
    unsigned char any = 0;
    while (q < c->end) {
        unsigned char ch = (unsigned char)*q;
        if (ch == '"')
            break;
        if (ch == '\\' || ch < 0x20)
            return OUT;
        any |= ch;
        q++;
    }
    if (q >= c->end)
        return OUT;
    *s = start;
    *n = q - start;
    *ascii = any < 0x80;
    c->p = q + 1;
    return 0;
}

/* A new str of those bytes; NULL without an exception for invalid UTF-8. */
static PyObject *make_str(const char *s, Py_ssize_t n, int ascii)
{
    if (ascii) {
        PyObject *u = PyUnicode_New(n, 127);
        if (u != NULL)
            memcpy(PyUnicode_DATA(u), s, (size_t)n);
        return u;
    }
    PyObject *u = PyUnicode_DecodeUTF8(s, n, "strict");
    if (u == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
        PyErr_Clear();
    return u;
}

static inline int is_digit(char ch) { return ch >= '0' && ch <= '9'; }

static const double POW10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                               1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                               1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* Clinger's fast path one precision up, for 17 to 19 digits (time.time()'s
   1796427508.3651025 has 17): with x87's 64-bit significand, m < 10^19 and 10^k,
   k <= 27, are exact, so m / 10^k (or m * 10^k) is one correctly rounded operation,
   r. Rounding r to a double is then the correct rounding of the decimal (which is
   within half a 64-bit ulp of r) unless r lies within 2^-10 of a double's ulp of
   halfway between two doubles: those, about one in five hundred, return 0 and go
   to the slow path. Where long double is not x87's format, never taken. */
#if defined(LDBL_MANT_DIG) && LDBL_MANT_DIG == 64
static const long double POW10L[] = {
    1e0L,  1e1L,  1e2L,  1e3L,  1e4L,  1e5L,  1e6L,  1e7L,  1e8L,  1e9L,
    1e10L, 1e11L, 1e12L, 1e13L, 1e14L, 1e15L, 1e16L, 1e17L, 1e18L, 1e19L,
    1e20L, 1e21L, 1e22L, 1e23L, 1e24L, 1e25L, 1e26L, 1e27L};

static int extended_fast_path(unsigned long long m, int exp10, double *d)
{
    long double r = exp10 < 0 ? (long double)m / POW10L[-exp10]
                              : (long double)m * POW10L[exp10];
    double v = (double)r;
    if (!isfinite(v) || v == 0.0)
        return 0;
    long double below = (long double)v - (long double)nextafter(v, 0.0);
    long double above = (long double)nextafter(v, INFINITY) - (long double)v;
    long double half = (below < above ? below : above) / 2;
    long double off = r - (long double)v;
    if (off < 0)
        off = -off;
    if (off >= half - half / 512)  /* within 2^-10 ulp of halfway: unsure */
        return 0;
    *d = v;
    return 1;
}
#else
static int extended_fast_path(unsigned long long m, int exp10, double *d)
{
    (void)m, (void)exp10, (void)d;
    return 0;
}
#endif

/* A JSON number: *is_int and *iv for an integer, *d its value as a double.

   A decimal of at most 2^53 in its digits with a power of ten of at most 22 either
   way is one correctly rounded IEEE operation on two exact doubles (Clinger's fast
   path), the usual case (0.3456, 16.92, 1796390673.550362); up to 19 digits with a
   power of ten of at most 27, extended_fast_path above; anything else goes to
   PyOS_string_to_double, correctly rounded too but about ten times slower. */
static int scan_number(Cur *c, double *d, int *is_int, long long *iv)
{
    const char *s = c->p, *q = s, *e = c->end;
    int integer = 1, negative = 0, digits = 0, point = 0, exp10 = 0;
    unsigned long long m = 0;
    if (q < e && *q == '-') {
        negative = 1;
        q++;
    }
    if (q >= e)
        return OUT;
    if (*q == '0')
        q++;
    else if (*q >= '1' && *q <= '9')
        while (q < e && is_digit(*q)) {
            if (digits < 19)
                m = m * 10 + (unsigned long long)(*q - '0');
            digits++;
            q++;
        }
    else
        return OUT;
    if (q < e && *q == '.') {
        integer = 0;
        const char *f = ++q;
        while (q < e && is_digit(*q)) {
            if (m == 0 && *q == '0')
                point++; /* leading zeros of 0.000x: no digit yet */
            else {
                if (digits < 19)
                    m = m * 10 + (unsigned long long)(*q - '0');
                digits++;
                point++;
            }
            q++;
        }
        if (q == f)
            return OUT;
    }
    if (q < e && (*q == 'e' || *q == 'E')) {
        integer = 0;
        int xneg = 0, x = 0;
        q++;
        if (q < e && (*q == '+' || *q == '-'))
            xneg = *q++ == '-';
        const char *xs = q;
        while (q < e && is_digit(*q))
            x = x * 10 + (*q++ - '0');
        if (q == xs || q - xs > 3)
            return OUT;
        exp10 = xneg ? -x : x;
    }
    Py_ssize_t len = q - s;
    if (len > 40)
        return OUT;
    if (integer) {
        if (len > 18)
            return OUT;
        *iv = negative ? -(long long)m : (long long)m;
        *d = (double)*iv;
        *is_int = 1;
        c->p = q;
        return 0;
    }
    *is_int = 0;
    exp10 -= point;
    if (digits <= 19 && m <= (1ULL << 53) && exp10 >= -22 && exp10 <= 22) {
        double v = (double)m;
        v = exp10 < 0 ? v / POW10[-exp10] : v * POW10[exp10];
        *d = negative ? -v : v;
    } else if (digits <= 19 && exp10 >= -27 && exp10 <= 27 && m != 0 &&
               extended_fast_path(m, exp10, d)) {
        if (negative)
            *d = -*d;
    } else {
        char buf[48], *stop = NULL;
        memcpy(buf, s, (size_t)len);
        buf[len] = '\0';
        *d = PyOS_string_to_double(buf, &stop, NULL);
        if (*d == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return OUT;
        }
        if (stop != buf + len)
            return OUT;
    }
    if (!isfinite(*d))
        return OUT;
    c->p = q;
    return 0;
}

static inline int literal(Cur *c, const char *word, Py_ssize_t n)
{
    if (c->end - c->p >= n && memcmp(c->p, word, (size_t)n) == 0) {
        c->p += n;
        return 0;
    }
    return OUT;
}

/* A few recent strings of one column, shared instead of copied (categories repeat). */
#define CACHE 8
typedef struct {
    const char *s[CACHE];
    Py_ssize_t n[CACHE];
    PyObject *o[CACHE]; /* borrowed: each is held by the column it went into */
    int next;
} Recent;

static PyObject *recent_str(Recent *r, const char *s, Py_ssize_t n, int ascii)
{
    if (r != NULL)
        for (int i = 0; i < CACHE; i++)
            if (r->o[i] != NULL && r->n[i] == n && memcmp(r->s[i], s, (size_t)n) == 0) {
                Py_INCREF(r->o[i]);
                return r->o[i];
            }
    PyObject *u = make_str(s, n, ascii);
    if (u != NULL && r != NULL) {
        r->s[r->next] = s;
        r->n[r->next] = n;
        r->o[r->next] = u;
        r->next = (r->next + 1) % CACHE;
    }
    return u;
}

/* A scalar (string, number, true, false, null) as a new reference; NULL without an
   exception for anything else (an object, an array, an escape). */
static PyObject *scan_scalar(Cur *c, Recent *r)
{
    ws(c);
    if (c->p >= c->end)
        return NULL;
    switch (*c->p) {
    case '"': {
        const char *s;
        Py_ssize_t n;
        int ascii;
        if (scan_string(c, &s, &n, &ascii) < 0)
            return NULL;
        return recent_str(r, s, n, ascii);
    }
    case 't':
        if (literal(c, "true", 4) < 0)
            return NULL;
        Py_RETURN_TRUE;
    case 'f':
        if (literal(c, "false", 5) < 0)
            return NULL;
        Py_RETURN_FALSE;
    case 'n':
        if (literal(c, "null", 4) < 0)
            return NULL;
        Py_RETURN_NONE;
    default: {
        double d;
        int is_int;
        long long iv;
        if (scan_number(c, &d, &is_int, &iv) < 0)
            return NULL;
        return is_int ? PyLong_FromLongLong(iv) : PyFloat_FromDouble(d);
    }
    }
}

/* Skip any value, checking its grammar (what orjson would refuse must not pass). */
static int skip_value(Cur *c, int depth)
{
    ws(c);
    if (depth > 32 || c->p >= c->end)
        return OUT;
    char ch = *c->p;
    if (ch == '{' || ch == '[') {
        char close = ch == '{' ? '}' : ']';
        c->p++;
        ws(c);
        if (c->p < c->end && *c->p == close) {
            c->p++;
            return 0;
        }
        for (;;) {
            if (ch == '{') {
                const char *s;
                Py_ssize_t n;
                int ascii;
                ws(c);
                if (scan_string(c, &s, &n, &ascii) < 0)
                    return OUT;
                if (!ascii) {
                    PyObject *u = make_str(s, n, 0);
                    if (u == NULL)
                        return OUT;
                    Py_DECREF(u);
                }
                if (expect(c, ':') < 0)
                    return OUT;
            }
            if (skip_value(c, depth + 1) < 0)
                return OUT;
            int more = next_member(c, close);
            if (more <= 0)
                return more;
        }
    }
    PyObject *v = scan_scalar(c, NULL);
    if (v == NULL)
        return OUT;
    Py_DECREF(v);
    return 0;
}

/* One feature's values: doubles while every one is a JSON float (written with a
   point or an exponent), the usual numeric feature; a list of objects once any is
   not (an integer, a string, a bool, null), its doubles moved into the list. */
typedef struct {
    Recent recent;
    double *d;
    Py_ssize_t n, cap;
    int listed;
} Column;

typedef struct {
    /* limits */
    Py_ssize_t max_id, max_features;
    double min_ts, max_ts;
    const char *key;
    Py_ssize_t key_n; /* -1: unchecked */
    /* columns */
    PyObject *event_id, *ts, *model, *version, *latency, *cohort, *error, *prediction;
    PyObject *names, *columns;
    int64_t *spans; /* each element's start and end in the message, pairs */
    Py_ssize_t nspans, spans_cap;
    int ts_text;
    int feedback; /* ml.feedback: a label instead of a prediction's fields */
    int has_features; /* -1 not yet known, 0 no event has an object, 1 every event has */
    Py_ssize_t nf, cap;
    const char **name_s;
    Py_ssize_t *name_n;
    Column *cols; /* one per feature; columns[k] is its list once listed */
    Recent ids;   /* model and version */
} Batch;

static int append_steal(PyObject *list, PyObject *v)
{
    if (v == NULL)
        return OUT;
    int rc = PyList_Append(list, v);
    Py_DECREF(v);
    return rc;
}

/* An identifier: printable ASCII, 1 to max_id characters. */
static PyObject *scan_id(Cur *c, Batch *b, Recent *r, const char **s_out, Py_ssize_t *n_out)
{
    const char *s;
    Py_ssize_t n;
    int ascii;
    ws(c);
    if (scan_string(c, &s, &n, &ascii) < 0 || !ascii || n < 1 || n > b->max_id)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++)
        if (s[i] == 0x7f)
            return NULL;
    if (s_out != NULL) {
        *s_out = s;
        *n_out = n;
    }
    return recent_str(r, s, n, 1);
}

/* The column's doubles into its list, as floats; from now on it holds objects. */
static int list_out(Column *col, PyObject *list)
{
    for (Py_ssize_t i = 0; i < col->n; i++)
        if (append_steal(list, PyFloat_FromDouble(col->d[i])) < 0)
            return OUT;
    PyMem_Free(col->d);
    col->d = NULL;
    col->n = col->cap = 0;
    col->listed = 1;
    return 0;
}

/* One feature value, appended to its column. */
static int feature_value(Cur *c, Column *col, PyObject *list)
{
    ws(c);
    if (!col->listed && c->p < c->end && (*c->p == '-' || is_digit(*c->p))) {
        const char *at = c->p;
        double d;
        int is_int;
        long long iv;
        if (scan_number(c, &d, &is_int, &iv) < 0)
            return OUT;
        if (!is_int) {
            if (col->n == col->cap) {
                Py_ssize_t cap = col->cap ? col->cap * 2 : 128;
                double *more = PyMem_Realloc(col->d, sizeof(double) * (size_t)cap);
                if (more == NULL) {
                    PyErr_NoMemory();
                    return OUT;
                }
                col->d = more;
                col->cap = cap;
            }
            col->d[col->n++] = d;
            return 0;
        }
        c->p = at; /* an integer: read again as an object */
    }
    PyObject *v = scan_scalar(c, &col->recent);
    if (v == NULL)
        return OUT;
    if (!col->listed && list_out(col, list) < 0) {
        Py_DECREF(v);
        return OUT;
    }
    return append_steal(list, v);
}

/* Room for one more feature. */
static int grow(Batch *b)
{
    if (b->nf < b->cap)
        return 0;
    Py_ssize_t cap = b->cap ? b->cap * 2 : 16;
    const char **ns = PyMem_Realloc(b->name_s, sizeof(char *) * (size_t)cap);
    if (ns != NULL)
        b->name_s = ns;
    Py_ssize_t *nn = ns ? PyMem_Realloc(b->name_n, sizeof(Py_ssize_t) * (size_t)cap) : NULL;
    if (nn != NULL)
        b->name_n = nn;
    Column *cs = nn ? PyMem_Realloc(b->cols, sizeof(Column) * (size_t)cap) : NULL;
    if (cs == NULL) {
        PyErr_NoMemory();
        return OUT;
    }
    memset(cs + b->cap, 0, sizeof(Column) * (size_t)(cap - b->cap));
    b->cols = cs;
    b->cap = cap;
    return 0;
}

/* The first features object: its names, and the first value of each. */
static int first_features(Cur *c, Batch *b)
{
    b->names = PyList_New(0);
    b->columns = PyList_New(0);
    if (!b->names || !b->columns)
        return OUT;
    c->p++; /* '{' */
    ws(c);
    if (c->p < c->end && *c->p == '}') {
        c->p++;
        return 0;
    }
    for (;;) {
        const char *s;
        Py_ssize_t n;
        int ascii;
        ws(c);
        if (scan_string(c, &s, &n, &ascii) < 0)
            return OUT;
        if (b->nf >= b->max_features)
            return OUT;
        for (Py_ssize_t k = 0; k < b->nf; k++)
            if (b->name_n[k] == n && memcmp(b->name_s[k], s, (size_t)n) == 0)
                return OUT; /* a name twice */
        PyObject *name = make_str(s, n, ascii);
        if (name == NULL)
            return OUT;
        if (PyUnicode_GET_LENGTH(name) > b->max_id) {
            Py_DECREF(name);
            return OUT;
        }
        if (append_steal(b->names, name) < 0 || grow(b) < 0)
            return OUT;
        b->name_s[b->nf] = s;
        b->name_n[b->nf] = n;
        b->nf++;
        if (append_steal(b->columns, PyList_New(0)) < 0 || expect(c, ':') < 0)
            return OUT;
        if (feature_value(c, &b->cols[b->nf - 1], PyList_GET_ITEM(b->columns, b->nf - 1)) < 0)
            return OUT;
        int more = next_member(c, '}');
        if (more <= 0)
            return more;
    }
}

/* A later features object: the first one's names, in its order. */
static int more_features(Cur *c, Batch *b)
{
    c->p++; /* '{' */
    ws(c);
    if (b->nf == 0)
        return c->p < c->end && *c->p == '}' ? (c->p++, 0) : OUT;
    for (Py_ssize_t k = 0; k < b->nf; k++) {
        const char *s;
        Py_ssize_t n;
        int ascii;
        if (k > 0 && expect(c, ',') < 0)
            return OUT;
        ws(c);
        if (scan_string(c, &s, &n, &ascii) < 0 || n != b->name_n[k] ||
            memcmp(s, b->name_s[k], (size_t)n) != 0)
            return OUT;
        if (expect(c, ':') < 0)
            return OUT;
        if (feature_value(c, &b->cols[k], PyList_GET_ITEM(b->columns, k)) < 0)
            return OUT;
    }
    return expect(c, '}');
}

/* Each column still of doubles handed over as their bytes (native float64). */
static int settle_columns(Batch *b)
{
    for (Py_ssize_t k = 0; k < b->nf; k++) {
        Column *col = &b->cols[k];
        if (col->listed)
            continue;
        PyObject *raw = PyByteArray_FromStringAndSize((const char *)col->d,
                                                      (Py_ssize_t)sizeof(double) * col->n);
        if (raw == NULL || PyList_SetItem(b->columns, k, raw) < 0)
            return OUT;
    }
    return 0;
}

enum {
    F_ID = 1, F_TS = 2, F_MODEL = 4, F_VERSION = 8, F_LATENCY = 16,
    F_COHORT = 32, F_STATUS = 64, F_FEATURES = 128, F_PREDICTION = 256, F_LABEL = 512
};
#define F_HEADER (F_ID | F_TS | F_MODEL | F_VERSION)

/* The field a key names: the header's, then a prediction's or a label's fields
   (anything else is skipped, as orjson's reading of it is never used). */
static int field_of(const char *s, Py_ssize_t n, int feedback)
{
#define IS(name) (n == (Py_ssize_t)sizeof(name) - 1 && memcmp(s, name, sizeof(name) - 1) == 0)
    if (IS("event_id")) return F_ID;
    if (IS("ts")) return F_TS;
    if (IS("model")) return F_MODEL;
    if (IS("version")) return F_VERSION;
    if (feedback) return IS("label") ? F_LABEL : 0;
    if (IS("latency_ms")) return F_LATENCY;
    if (IS("cohort")) return F_COHORT;
    if (IS("status")) return F_STATUS;
    if (IS("features")) return F_FEATURES;
    if (IS("prediction")) return F_PREDICTION;
    return 0;
#undef IS
}

/* One event object, appended to every column. */
static int event(Cur *c, Batch *b)
{
    int seen = 0;
    PyObject *prediction = NULL, *ts = NULL;
    int cohort = 0, error = 0, features_null = 1;
    if (expect(c, '{') < 0)
        return OUT;
    ws(c);
    if (c->p < c->end && *c->p == '}')
        return OUT; /* no event_id */
    for (;;) {
        const char *s;
        Py_ssize_t n;
        int ascii;
        ws(c);
        if (scan_string(c, &s, &n, &ascii) < 0 || expect(c, ':') < 0)
            goto out;
        int f = field_of(s, n, b->feedback);
        if (f & seen)
            goto out; /* a field twice */
        seen |= f;
        ws(c);
        switch (f) {
        case F_ID:
            if (append_steal(b->event_id, scan_id(c, b, NULL, NULL, NULL)) < 0)
                goto out;
            break;
        case F_MODEL: {
            const char *m;
            Py_ssize_t mn;
            if (append_steal(b->model, scan_id(c, b, &b->ids, &m, &mn)) < 0)
                goto out;
            if (b->key_n >= 0 && (mn != b->key_n || memcmp(m, b->key, (size_t)mn) != 0))
                goto out;
            break;
        }
        case F_VERSION:
            if (append_steal(b->version, scan_id(c, b, &b->ids, NULL, NULL)) < 0)
                goto out;
            break;
        case F_TS:
            if (c->p < c->end && *c->p == '"') {
                ts = scan_scalar(c, NULL);
                if (ts == NULL)
                    goto out;
                b->ts_text = 1;
            } else {
                double d;
                int is_int;
                long long iv;
                if (scan_number(c, &d, &is_int, &iv) < 0 || d < b->min_ts || d > b->max_ts)
                    goto out;
                ts = PyFloat_FromDouble(d);
                if (ts == NULL)
                    goto out;
            }
            break;
        case F_LATENCY: {
            double d;
            int is_int;
            long long iv;
            if (scan_number(c, &d, &is_int, &iv) < 0 || d < 0 ||
                append_steal(b->latency, PyFloat_FromDouble(d)) < 0)
                goto out;
            break;
        }
        case F_COHORT:
        case F_STATUS:
            if (literal(c, "null", 4) == 0)
                break;
            if (scan_string(c, &s, &n, &ascii) < 0)
                goto out;
#define IS(name) (n == (Py_ssize_t)sizeof(name) - 1 && memcmp(s, name, sizeof(name) - 1) == 0)
            if (f == F_COHORT && IS("canary"))
                cohort = 1;
            else if (f == F_COHORT && IS("stable"))
                cohort = 0;
            else if (f == F_STATUS && (IS("error") || IS("timeout")))
                error = 1;
            else if (!(f == F_STATUS && IS("ok")))
                goto out;
#undef IS
            break;
        case F_FEATURES:
            if (literal(c, "null", 4) == 0)
                break;
            if (c->p >= c->end || *c->p != '{')
                goto out;
            features_null = 0;
            if (b->has_features == 0)
                goto out;
            if (b->has_features < 0) {
                b->has_features = 1;
                if (first_features(c, b) < 0)
                    goto out;
            } else if (more_features(c, b) < 0)
                goto out;
            break;
        case F_PREDICTION:
            prediction = scan_scalar(c, NULL);
            if (prediction == NULL)
                goto out;
            break;
        case F_LABEL: /* required: a scalar, not null */
            prediction = scan_scalar(c, &b->ids);
            if (prediction == NULL || prediction == Py_None)
                goto out;
            break;
        default:
            if (skip_value(c, 1) < 0)
                goto out;
        }
        int more = next_member(c, '}');
        if (more < 0)
            goto out;
        if (more == 0)
            break;
    }
    if (b->feedback) {
        if ((seen & (F_HEADER | F_LABEL)) != (F_HEADER | F_LABEL))
            goto out;
        if (append_steal(b->ts, ts) < 0 || append_steal(b->prediction, prediction) < 0)
            return OUT;
        return 0;
    }
    if ((seen & (F_HEADER | F_LATENCY)) != (F_HEADER | F_LATENCY))
        goto out;
    if (features_null) {
        if (b->has_features == 1)
            goto out;
        b->has_features = 0;
    }
    if (prediction == NULL) {
        prediction = Py_None;
        Py_INCREF(prediction);
    }
    PyObject *co = cohort ? S_CANARY : S_STABLE;
    Py_INCREF(co);
    PyObject *er = error ? Py_True : Py_False;
    Py_INCREF(er);
    if (append_steal(b->ts, ts) < 0 || append_steal(b->prediction, prediction) < 0 ||
        append_steal(b->cohort, co) < 0 || append_steal(b->error, er) < 0)
        return OUT;
    return 0;
out:
    Py_XDECREF(prediction);
    Py_XDECREF(ts);
    return OUT;
}

/* A Batch with its limits and empty columns: 0, or -1 with an exception set. */
static int batch_init(Batch *b, int feedback, Py_ssize_t max_id, Py_ssize_t max_features,
                      double min_ts, double max_ts)
{
    memset(b, 0, sizeof *b);
    b->max_id = max_id;
    b->max_features = max_features;
    b->min_ts = min_ts;
    b->max_ts = max_ts;
    b->has_features = -1;
    b->key_n = -1;
    b->feedback = feedback;
    PyObject **lists[] = {&b->event_id, &b->ts, &b->model, &b->version, &b->latency,
                          &b->cohort, &b->error, &b->prediction};
    for (size_t i = 0; i < sizeof lists / sizeof *lists; i++)
        if ((*lists[i] = PyList_New(0)) == NULL)
            return -1;
    return 0;
}

/* An element's start and end (offsets in the message), kept for a later dead letter. */
static int span(Batch *b, Py_ssize_t start, Py_ssize_t end)
{
    if (b->nspans + 2 > b->spans_cap) {
        Py_ssize_t cap = b->spans_cap ? 2 * b->spans_cap : 256;
        int64_t *more = PyMem_Realloc(b->spans, (size_t)cap * sizeof(int64_t));
        if (more == NULL) {
            PyErr_NoMemory();
            return OUT;
        }
        b->spans = more;
        b->spans_cap = cap;
    }
    b->spans[b->nspans++] = (int64_t)start;
    b->spans[b->nspans++] = (int64_t)end;
    return 0;
}

/* The columns as the module's docstring says, once every event is read. */
static PyObject *batch_result(Batch *b)
{
    if (b->columns != NULL && settle_columns(b) < 0)
        return NULL;
    PyObject *ts_text = b->ts_text ? Py_True : Py_False;
    PyObject *spans = PyByteArray_FromStringAndSize((const char *)b->spans,
                                                    b->nspans * (Py_ssize_t)sizeof(int64_t));
    if (spans == NULL)
        return NULL;
    PyObject *out;
    if (b->feedback)
        out = Py_BuildValue("(OOOOOOO)", b->event_id, b->ts, ts_text, b->model, b->version,
                            b->prediction, spans);
    else  /* no event had a features object: None for the names and the columns */
        out = Py_BuildValue("(OOOOOOOOOOOO)", b->event_id, b->ts, ts_text, b->model,
                            b->version, b->latency, b->cohort, b->error, b->prediction,
                            b->names ? b->names : Py_None,
                            b->columns ? b->columns : Py_None, spans);
    Py_DECREF(spans);
    return out;
}

static void batch_release(Batch *b)
{
    PyObject **lists[] = {&b->event_id, &b->ts, &b->model, &b->version, &b->latency,
                          &b->cohort, &b->error, &b->prediction};
    for (size_t i = 0; i < sizeof lists / sizeof *lists; i++)
        Py_XDECREF(*lists[i]);
    PyMem_Free(b->spans);
    Py_XDECREF(b->names);
    Py_XDECREF(b->columns);
    PyMem_Free(b->name_s);
    PyMem_Free(b->name_n);
    for (Py_ssize_t k = 0; k < b->nf; k++)
        PyMem_Free(b->cols[k].d);
    PyMem_Free(b->cols);
}

/* What a reader returns: its result, or None (no exception set: outside the fast
   path); the Batch released either way. */
static PyObject *batch_done(Batch *b, PyObject *result)
{
    batch_release(b);
    if (result == NULL && !PyErr_Occurred())
        Py_RETURN_NONE;
    return result;
}

static PyObject *parse(PyObject *args, int feedback)
{
    Py_buffer data;
    PyObject *key;
    Py_ssize_t max_id, max_features, max_events;
    double min_ts, max_ts;
    if (!PyArg_ParseTuple(args, "y*Onnndd", &data, &key, &max_id, &max_features, &max_events,
                          &min_ts, &max_ts))
        return NULL;
    if (key != Py_None && !PyBytes_Check(key)) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_TypeError, "key must be bytes or None");
        return NULL;
    }
    Batch b;
    PyObject *result = NULL;
    if (batch_init(&b, feedback, max_id, max_features, min_ts, max_ts) < 0)
        goto done;
    if (key != Py_None) {
        b.key = PyBytes_AS_STRING(key);
        b.key_n = PyBytes_GET_SIZE(key);
    }
    const char *base = data.buf;
    Cur c = {base, base + data.len};
    Py_ssize_t count = 0;
    if (expect(&c, '[') < 0)
        goto done;
    ws(&c);
    if (c.p < c.end && *c.p == ']')
        c.p++;
    else
        for (;;) {
            if (++count > max_events)
                goto done;
            ws(&c);
            const char *start = c.p;
            if (event(&c, &b) < 0 || span(&b, start - base, c.p - base) < 0)
                goto done;
            int more = next_member(&c, ']');
            if (more < 0)
                goto done;
            if (more == 0)
                break;
        }
    ws(&c);
    if (c.p == c.end)
        result = batch_result(&b);
done:
    PyBuffer_Release(&data);
    return batch_done(&b, result);
}

/* The single-event form: a list of messages of one event each (a JSON object, not
   an array), each with its key, read as one batch. None unless every message is
   bytes, every key is bytes, and every event is plainly valid; spans are empty
   (each event is its whole message). */
static PyObject *singles(PyObject *args, int feedback)
{
    PyObject *values, *keys;
    Py_ssize_t max_id, max_features;
    double min_ts, max_ts;
    if (!PyArg_ParseTuple(args, "O!O!nndd", &PyList_Type, &values, &PyList_Type, &keys,
                          &max_id, &max_features, &min_ts, &max_ts))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(values);
    if (PyList_GET_SIZE(keys) != n) {
        PyErr_SetString(PyExc_ValueError, "values and keys differ in length");
        return NULL;
    }
    Batch b;
    PyObject *result = NULL;
    if (batch_init(&b, feedback, max_id, max_features, min_ts, max_ts) < 0)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *value = PyList_GET_ITEM(values, i), *key = PyList_GET_ITEM(keys, i);
        if (!PyBytes_CheckExact(value) || !PyBytes_CheckExact(key))
            goto done;
        b.key = PyBytes_AS_STRING(key);
        b.key_n = PyBytes_GET_SIZE(key);
        const char *p = PyBytes_AS_STRING(value);
        Cur c = {p, p + PyBytes_GET_SIZE(value)};
        ws(&c);
        if (event(&c, &b) < 0)
            goto done;
        ws(&c);
        if (c.p != c.end)
            goto done;
    }
    result = batch_result(&b);
done:
    return batch_done(&b, result);
}

static PyObject *predictions(PyObject *self, PyObject *args) { return parse(args, 0); }

static PyObject *feedback(PyObject *self, PyObject *args) { return parse(args, 1); }

static PyObject *prediction_singles(PyObject *self, PyObject *args) { return singles(args, 0); }

static PyObject *feedback_singles(PyObject *self, PyObject *args) { return singles(args, 1); }

static PyMethodDef methods[] = {
    {"predictions", predictions, METH_VARARGS,
     "predictions(data, key, max_id_chars, max_features, max_events, min_ts, max_ts)\n"
     "--\n\nThe columns of a batch of prediction events, or None (see the module)."},
    {"feedback", feedback, METH_VARARGS,
     "feedback(data, key, max_id_chars, max_features, max_events, min_ts, max_ts)\n"
     "--\n\nThe columns of a batch of label events, or None (see the module)."},
    {"prediction_singles", prediction_singles, METH_VARARGS,
     "prediction_singles(values, keys, max_id_chars, max_features, min_ts, max_ts)\n"
     "--\n\nThe columns of messages of one prediction each, or None (see the module)."},
    {"feedback_singles", feedback_singles, METH_VARARGS,
     "feedback_singles(values, keys, max_id_chars, max_features, min_ts, max_ts)\n"
     "--\n\nThe columns of messages of one label each, or None (see the module)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_batchparse",
                                    "The batch form's fast path (streams/core/_batchparse.c).",
                                    -1, methods};

PyMODINIT_FUNC PyInit__batchparse(void)
{
    S_STABLE = PyUnicode_InternFromString("stable");
    S_CANARY = PyUnicode_InternFromString("canary");
    if (S_STABLE == NULL || S_CANARY == NULL)
        return NULL;
    return PyModule_Create(&module);
}
