/* augur.serving._tally: a prometheus_client child's value updated in one C call.
 *
 * Optional, like augur.serving._wire: setup.py builds it where a C compiler is present, and
 * augur/serving/metric_children.py uses it where it was built and the child keeps its value
 * in prometheus_client's MutexValue (one process; the multiprocess mode's values are left to
 * the library). A Predict makes a dozen metric updates; each of the library's takes a Python
 * call into MutexValue.inc and its lock, a histogram's two of them and a bisection: about
 * 1 us an update in a loop on this project's 2-core machine, more with the code cold.
 *
 *   Value(mutex_value)                 .inc(amount=1.0) .dec(amount=1.0) .set(value)
 *   Buckets(sum_value, bucket_values, upper_bounds)    .observe(amount)
 *
 * Each update reads and writes the MutexValue's `_value` in its instance dict while holding
 * the GIL. That is atomic with MutexValue's own inc/set on other threads as well: theirs hold
 * its lock and make the same read-add-write in bytecode that has no point where the GIL can
 * be handed over (no call, no backward jump), so neither can land in the middle of the other.
 * The exposition reads `_value` through MutexValue.get, unchanged.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *VALUE_KEY; /* "_value", interned */

/* The instance dict of a MutexValue whose `_value` is a number; NULL with an exception
 * set otherwise. */
static PyObject *value_dict(PyObject *value) {
    PyObject *dict = PyObject_GenericGetDict(value, NULL);
    if (dict == NULL) return NULL;
    PyObject *held = PyDict_GetItemWithError(dict, VALUE_KEY);
    if (held == NULL || !PyNumber_Check(held)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "not a value with a numeric _value");
        Py_DECREF(dict);
        return NULL;
    }
    return dict;
}

/* dict["_value"] += amount; -1 with an exception set on failure. */
static int add(PyObject *dict, double amount) {
    PyObject *held = PyDict_GetItemWithError(dict, VALUE_KEY);
    if (held == NULL) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_KeyError, "_value");
        return -1;
    }
    double now = PyFloat_CheckExact(held) ? PyFloat_AS_DOUBLE(held) : PyFloat_AsDouble(held);
    if (now == -1.0 && PyErr_Occurred()) return -1;
    PyObject *sum = PyFloat_FromDouble(now + amount);
    if (sum == NULL) return -1;
    int failed = PyDict_SetItem(dict, VALUE_KEY, sum);
    Py_DECREF(sum);
    return failed;
}

/* The optional amount of inc/dec (1.0 when absent); -1 with an exception set. */
static int amount_of(PyObject *const *args, Py_ssize_t n, double *out) {
    if (n > 1) {
        PyErr_SetString(PyExc_TypeError, "takes at most one amount");
        return -1;
    }
    *out = 1.0;
    if (n == 1) {
        *out = PyFloat_AsDouble(args[0]);
        if (*out == -1.0 && PyErr_Occurred()) return -1;
    }
    return 0;
}

/* ---- Value ------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PyObject *dict; /* the MutexValue's instance dict */
} Value;

static int Value_init(Value *self, PyObject *args, PyObject *kwargs) {
    PyObject *value;
    if (!PyArg_ParseTuple(args, "O:Value", &value)) return -1;
    PyObject *dict = value_dict(value);
    if (dict == NULL) return -1;
    Py_XSETREF(self->dict, dict);
    return 0;
}

static void Value_dealloc(Value *self) {
    Py_XDECREF(self->dict);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Value_inc(Value *self, PyObject *const *args, Py_ssize_t n) {
    double amount;
    if (amount_of(args, n, &amount) < 0 || add(self->dict, amount) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Value_dec(Value *self, PyObject *const *args, Py_ssize_t n) {
    double amount;
    if (amount_of(args, n, &amount) < 0 || add(self->dict, -amount) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Value_set(Value *self, PyObject *value) {
    double v = PyFloat_AsDouble(value);
    if (v == -1.0 && PyErr_Occurred()) return NULL;
    PyObject *f = PyFloat_FromDouble(v);
    if (f == NULL) return NULL;
    int failed = PyDict_SetItem(self->dict, VALUE_KEY, f);
    Py_DECREF(f);
    if (failed) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef Value_methods[] = {
    {"inc", (PyCFunction)(void (*)(void))Value_inc, METH_FASTCALL, "add an amount (1.0)"},
    {"dec", (PyCFunction)(void (*)(void))Value_dec, METH_FASTCALL, "take an amount (1.0)"},
    {"set", (PyCFunction)Value_set, METH_O, "set the value"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ValueType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "augur.serving._tally.Value",
    .tp_basicsize = sizeof(Value),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A counter's or gauge's MutexValue, updated in one call.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Value_init,
    .tp_dealloc = (destructor)Value_dealloc,
    .tp_methods = Value_methods,
};

/* ---- Buckets ---------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *sum;      /* the sum's MutexValue's dict */
    PyObject *buckets;  /* a tuple of the buckets' MutexValue dicts */
    double *upper;      /* the buckets' upper bounds, ascending, the last +Inf */
    Py_ssize_t n;
} Buckets;

static void Buckets_dealloc(Buckets *self) {
    Py_XDECREF(self->sum);
    Py_XDECREF(self->buckets);
    PyMem_Free(self->upper);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Buckets_init(Buckets *self, PyObject *args, PyObject *kwargs) {
    PyObject *sum, *values, *bounds;
    if (!PyArg_ParseTuple(args, "OOO:Buckets", &sum, &values, &bounds)) return -1;
    PyObject *v = PySequence_Tuple(values), *b = PySequence_Tuple(bounds);
    PyObject *dicts = NULL, *sum_dict = NULL;
    double *upper = NULL;
    if (v == NULL || b == NULL) goto fail;
    Py_ssize_t n = PyTuple_GET_SIZE(v);
    if (n == 0 || PyTuple_GET_SIZE(b) != n) {
        PyErr_SetString(PyExc_ValueError, "one upper bound per bucket, at least one bucket");
        goto fail;
    }
    upper = PyMem_Malloc(n * sizeof(double));
    dicts = PyTuple_New(n);
    if (upper == NULL || dicts == NULL) goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        upper[i] = PyFloat_AsDouble(PyTuple_GET_ITEM(b, i));
        if (upper[i] == -1.0 && PyErr_Occurred()) goto fail;
        PyObject *d = value_dict(PyTuple_GET_ITEM(v, i));
        if (d == NULL) goto fail;
        PyTuple_SET_ITEM(dicts, i, d);
    }
    sum_dict = value_dict(sum);
    if (sum_dict == NULL) goto fail;
    Py_DECREF(v);
    Py_DECREF(b);
    Py_XSETREF(self->sum, sum_dict);
    Py_XSETREF(self->buckets, dicts);
    PyMem_Free(self->upper);
    self->upper = upper;
    self->n = n;
    return 0;
fail:
    Py_XDECREF(v);
    Py_XDECREF(b);
    Py_XDECREF(dicts);
    PyMem_Free(upper);
    return -1;
}

/* prometheus_client's Histogram.observe: the sum, and the first bucket whose upper bound is
 * >= amount (bisect_left over the bounds, as metric_children's Python does). */
static PyObject *Buckets_observe(Buckets *self, PyObject *arg) {
    double amount = PyFloat_AsDouble(arg);
    if (amount == -1.0 && PyErr_Occurred()) return NULL;
    Py_ssize_t lo = 0, hi = self->n;
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (self->upper[mid] < amount)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (add(self->sum, amount) < 0) return NULL;
    /* NaN is <= no bound: the library counts it in the sum and in no bucket */
    if (amount == amount && lo < self->n && add(PyTuple_GET_ITEM(self->buckets, lo), 1.0) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef Buckets_methods[] = {
    {"observe", (PyCFunction)Buckets_observe, METH_O, "count one observation"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject BucketsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "augur.serving._tally.Buckets",
    .tp_basicsize = sizeof(Buckets),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A histogram child's sum and bucket MutexValues, observed in one call.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Buckets_init,
    .tp_dealloc = (destructor)Buckets_dealloc,
    .tp_methods = Buckets_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_tally", "prometheus_client children's values updated in one C call.",
    -1, NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__tally(void) {
    VALUE_KEY = PyUnicode_InternFromString("_value");
    if (VALUE_KEY == NULL || PyType_Ready(&ValueType) < 0 || PyType_Ready(&BucketsType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&ValueType);
    Py_INCREF(&BucketsType);
    if (PyModule_AddObject(m, "Value", (PyObject *)&ValueType) < 0 ||
        PyModule_AddObject(m, "Buckets", (PyObject *)&BucketsType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
