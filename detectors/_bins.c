/* A micro-batch's category keys to their bins on a reference profile, compiled.

   categories(values, index, fallback) is
   numpy.fromiter(map(index.get, values, repeat(fallback)), numpy.int64): each
   value's bin in the profile's category index (a dict), fallback when absent, in
   a bytearray of int64 (numpy.frombuffer reads it as a writable array; no numpy
   headers at build time). About 8 ns a value against 24 (measured on 10,000
   values of 5 categories); a column repeats a few string objects (the batch
   reader shares them), so the last one's bin is remembered.
   detectors.profile keeps the numpy version for a build without a C compiler;
   tests/test_bins.py compares the two.

   numeric(values, edges) is numpy.searchsorted(edges, values, side="right")
   for float64 buffers (edges sorted and finite): each value's count of the
   edges it is not below, NaN past them all, as numpy puts it. A branchless
   binary search: on fresh serving values numpy's branches mispredict (15-22 ns
   a value against 19 edges; a benchmark that searches the same values again
   and again trains the predictor and shows 3 ns, which is how an earlier
   branchless count looked no faster). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* Bump when a function's signature changes: detectors.profile refuses a stale build. */
#define ABI 2

static PyObject *categories(PyObject *self, PyObject *args)
{
    PyObject *values, *index;
    long long fallback;
    if (!PyArg_ParseTuple(args, "OO!L:categories", &values, &PyDict_Type, &index, &fallback))
        return NULL;
    PyObject *seq = PySequence_Fast(values, "categories() needs a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    PyObject *out = PyByteArray_FromStringAndSize(NULL, n * 8);
    if (out == NULL)
        goto fail;
    int64_t *bins = (int64_t *)PyByteArray_AS_STRING(out);
    PyObject *last = NULL; /* a column repeats a few string objects: remember the last */
    int64_t last_bin = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = items[i];
        if (v == last) {
            bins[i] = last_bin;
            continue;
        }
        PyObject *found = PyDict_GetItemWithError(index, v); /* borrowed */
        int64_t b;
        if (found == NULL) {
            if (PyErr_Occurred()) /* an unhashable value, as index.get would raise */
                goto fail;
            b = fallback;
        } else {
            b = PyLong_AsLongLong(found);
            if (b == -1 && PyErr_Occurred())
                goto fail;
        }
        bins[i] = b;
        last = v;
        last_bin = b;
    }
    Py_DECREF(seq);
    return out;
fail:
    Py_DECREF(seq);
    Py_XDECREF(out);
    return NULL;
}

/* One value's bin: the number of edges e with !(v < e) (e <= v, and all of
   them for NaN), by halving without a branch on the data. */
static inline int64_t upper(const double *edges, Py_ssize_t n, double v)
{
    if (n == 0)
        return 0;
    const double *base = edges;
    while (n > 1) {
        Py_ssize_t half = n / 2;
        base = (v < base[half]) ? base : base + half;
        n -= half;
    }
    return (int64_t)(base - edges) + !(v < *base);
}

static int float64_buffer(PyObject *obj, Py_buffer *view, const char *what)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return -1;
    if (view->itemsize != 8 || view->format == NULL || strcmp(view->format, "d") != 0
        || view->ndim > 1) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_TypeError, "numeric() needs %s as a 1-d float64 buffer", what);
        return -1;
    }
    return 0;
}

static PyObject *numeric(PyObject *self, PyObject *args)
{
    PyObject *values_obj, *edges_obj;
    if (!PyArg_ParseTuple(args, "OO:numeric", &values_obj, &edges_obj))
        return NULL;
    Py_buffer values, edges;
    if (float64_buffer(values_obj, &values, "values") < 0)
        return NULL;
    if (float64_buffer(edges_obj, &edges, "edges") < 0) {
        PyBuffer_Release(&values);
        return NULL;
    }
    Py_ssize_t n = values.len / 8, ne = edges.len / 8;
    PyObject *out = PyByteArray_FromStringAndSize(NULL, n * 8);
    if (out != NULL) {
        const double *v = (const double *)values.buf, *e = (const double *)edges.buf;
        int64_t *bins = (int64_t *)PyByteArray_AS_STRING(out);
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++)
            bins[i] = upper(e, ne, v[i]);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&values);
    PyBuffer_Release(&edges);
    return out;
}

static PyMethodDef methods[] = {
    {"numeric", numeric, METH_VARARGS,
     "numeric(values, edges) -> bytearray of int64: numpy.searchsorted(edges, values, "
     "side='right') for float64 buffers, edges sorted and finite"},
    {"categories", categories, METH_VARARGS,
     "categories(values, index, fallback) -> bytearray of int64: index.get(value, fallback)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_bins",
    "Category keys to a reference profile's bins (detectors.profile.FeatureBins), compiled.", -1,
    methods};

PyMODINIT_FUNC PyInit__bins(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "ABI", ABI) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
