/* augur.serving._wire: a Predict call's request bytes read, and its answer written, in C.
 *
 * Optional, like augur.features._native: setup.py builds it where a C compiler is present,
 * and the servicer parses and serializes through the protobuf messages otherwise
 * (augur.serving.wire says which is in use). In a running server a call's steps find their
 * code cold (bench/README.md, "Runs 29-31"): the message wrappers' map, oneof and repeated
 * accessors cost 30 us of a one-row call where one pass over the bytes costs a few.
 *
 *   predict_request(raw) -> (model, version, entities, request_features, return_features,
 *                            return_feature_status) | None
 *   predict_response(model, version, rows, outputs, scores, degraded) -> bytes
 *
 * predict_request reads the encoding protobuf writers produce (each field once, repeated
 * numbers packed) and returns None for anything else - an unknown field, a repeated field
 * split in two, a map key given twice, bytes that are not a message, a string that is not
 * UTF-8 - for the protobuf parser to read or refuse, as it does every request without this
 * module: what this one returns, the parser would have.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "augur.serving._wire assumes a little-endian machine (protobuf's fixed-width numbers are)"
#endif

/* ---- reading ---------------------------------------------------------------------- */

typedef struct {
    const uint8_t *p, *end;
} Span;

/* A varint into *out; 0 when the span ends first or it runs past 10 bytes. */
static int varint(Span *s, uint64_t *out) {
    uint64_t v = 0;
    for (int shift = 0; shift < 70 && s->p < s->end; shift += 7) {
        uint8_t b = *s->p++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 1;
        }
    }
    return 0;
}

/* A length-delimited field's bytes into *inner; 0 when they run past the span. */
static int delimited(Span *s, Span *inner) {
    uint64_t n;
    if (!varint(s, &n) || n > (uint64_t)(s->end - s->p)) return 0;
    inner->p = s->p;
    inner->end = s->p + n;
    s->p += n;
    return 1;
}

/* The span as a str; NULL with no exception set when it is not UTF-8. */
static PyObject *text(Span s) {
    PyObject *str = PyUnicode_DecodeUTF8((const char *)s.p, s.end - s.p, NULL);
    if (str == NULL) PyErr_Clear();
    return str;
}

/* Int64List / StringList / DoubleList: field 1, once (packed for numbers; each string its
 * own field 1). A new list, or NULL with no exception set for an encoding left to protobuf. */
static PyObject *values(Span s, int kind) {
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    int seen = 0;
    while (s.p < s.end) {
        uint64_t tag;
        Span inner;
        if (!varint(&s, &tag) || tag != ((1 << 3) | 2) || !delimited(&s, &inner)) goto other;
        if (kind == 's') {
            PyObject *v = text(inner);
            if (v == NULL || PyList_Append(out, v) < 0) {
                Py_XDECREF(v);
                goto other;
            }
            Py_DECREF(v);
            continue;
        }
        if (seen++) goto other;
        while (inner.p < inner.end) {
            PyObject *v;
            if (kind == 'd') {
                double d;
                if (inner.end - inner.p < 8) goto other;
                memcpy(&d, inner.p, 8);
                inner.p += 8;
                v = PyFloat_FromDouble(d);
            } else {
                uint64_t u;
                if (!varint(&inner, &u)) goto other;
                v = PyLong_FromLongLong((long long)u);
            }
            if (v == NULL || PyList_Append(out, v) < 0) {
                Py_XDECREF(v);
                goto other;
            }
            Py_DECREF(v);
        }
    }
    return out;
other:
    Py_DECREF(out);
    PyErr_Clear();
    return NULL;
}

/* EntityColumn: its oneof as ("int64s" | "strings", values), or (None, None) when unset. */
static PyObject *entity_column(Span s) {
    PyObject *which = Py_None, *list = Py_None;
    Py_INCREF(Py_None);
    Py_INCREF(Py_None);
    int seen = 0;
    while (s.p < s.end) {
        uint64_t tag;
        Span inner;
        if (!varint(&s, &tag) || (tag != ((1 << 3) | 2) && tag != ((2 << 3) | 2)) || seen++ ||
            !delimited(&s, &inner))
            goto other;
        Py_DECREF(list);
        Py_DECREF(which);
        which = PyUnicode_FromString(tag >> 3 == 1 ? "int64s" : "strings");
        list = values(inner, tag >> 3 == 1 ? 'q' : 's');
        if (which == NULL || list == NULL) {
            Py_XDECREF(which);
            Py_XDECREF(list);
            PyErr_Clear();
            return NULL;
        }
    }
    PyObject *out = PyTuple_Pack(2, which, list);
    Py_DECREF(which);
    Py_DECREF(list);
    return out;
other:
    Py_DECREF(which);
    Py_DECREF(list);
    return NULL;
}

/* A map entry (key 1: string, value 2: message) into dict; 0 for protobuf to read. The
 * value's reader `read` is called on its bytes (empty when absent, as protobuf defaults). */
static int map_entry(Span s, PyObject *dict, PyObject *(*read)(Span, int), int kind) {
    Span key = {s.p, s.p}, value = {s.p, s.p};
    int seen_key = 0, seen_value = 0;
    while (s.p < s.end) {
        uint64_t tag;
        if (!varint(&s, &tag)) return 0;
        if (tag == ((1 << 3) | 2) && !seen_key++) {
            if (!delimited(&s, &key)) return 0;
        } else if (tag == ((2 << 3) | 2) && !seen_value++) {
            if (!delimited(&s, &value)) return 0;
        } else {
            return 0;
        }
    }
    PyObject *name = text(key);
    if (name == NULL) return 0;
    int ok = 0;
    if (!PyDict_Contains(dict, name)) {  /* a key given twice is left to protobuf */
        PyObject *v = read(value, kind);
        ok = v != NULL && PyDict_SetItem(dict, name, v) == 0;
        Py_XDECREF(v);
    }
    Py_DECREF(name);
    PyErr_Clear();
    return ok;
}

static PyObject *entity_reader(Span s, int kind) { return entity_column(s); }

static PyObject *predict_request(PyObject *self, PyObject *arg) {
    Py_buffer raw;
    if (PyObject_GetBuffer(arg, &raw, PyBUF_SIMPLE) < 0) return NULL;
    Span s = {raw.buf, (const uint8_t *)raw.buf + raw.len};
    PyObject *model = NULL, *version = NULL, *result = NULL;
    PyObject *entities = PyDict_New(), *features = PyDict_New();
    int return_features = 0, return_status = 0, seen_options = 0;
    if (entities == NULL || features == NULL) goto done;
    while (s.p < s.end) {
        uint64_t tag;
        Span inner;
        if (!varint(&s, &tag)) goto other;
        switch (tag) {
        case (1 << 3) | 2:
        case (2 << 3) | 2: {
            if (!delimited(&s, &inner)) goto other;
            PyObject **slot = tag >> 3 == 1 ? &model : &version;
            if (*slot != NULL) goto other;
            if ((*slot = text(inner)) == NULL) goto other;
            break;
        }
        case (3 << 3) | 2:
            if (!delimited(&s, &inner) || !map_entry(inner, entities, entity_reader, 0))
                goto other;
            break;
        case (4 << 3) | 2:
            if (!delimited(&s, &inner) || !map_entry(inner, features, values, 'd')) goto other;
            break;
        case (5 << 3) | 2: {
            if (seen_options++ || !delimited(&s, &inner)) goto other;
            int seen[3] = {0, 0, 0};
            while (inner.p < inner.end) {
                uint64_t t, v;
                if (!varint(&inner, &t) || (t != ((1 << 3) | 0) && t != ((2 << 3) | 0)) ||
                    seen[t >> 3]++ || !varint(&inner, &v))
                    goto other;
                *(t >> 3 == 1 ? &return_features : &return_status) = v != 0;
            }
            break;
        }
        default:
            goto other;
        }
    }
    if (model == NULL) model = PyUnicode_FromString("");
    if (version == NULL) version = PyUnicode_FromString("");
    if (model == NULL || version == NULL) goto done;
    result = Py_BuildValue("(OOOOOO)", model, version, entities, features,
                           return_features ? Py_True : Py_False,
                           return_status ? Py_True : Py_False);
    goto done;
other:
    PyErr_Clear();
    Py_INCREF(Py_None);
    result = Py_None;
done:
    Py_XDECREF(model);
    Py_XDECREF(version);
    Py_XDECREF(entities);
    Py_XDECREF(features);
    PyBuffer_Release(&raw);
    return result;
}

/* ---- writing ---------------------------------------------------------------------- */

static uint8_t *put_varint(uint8_t *p, uint64_t v) {
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

static uint8_t *put_text(uint8_t *p, int field, const char *s, Py_ssize_t n) {
    if (n == 0) return p;  /* proto3 leaves a default out */
    *p++ = (uint8_t)((field << 3) | 2);
    p = put_varint(p, (uint64_t)n);
    memcpy(p, s, n);
    return p + n;
}

/* PredictResponse with fields 1-5 and 9, in field order as protobuf writes them: scores
 * float32 or float64 (cast to float32, as protobuf does), C-contiguous. */
static PyObject *predict_response(PyObject *self, PyObject *args) {
    PyObject *model_obj, *version_obj, *scores_obj;
    long long rows, outputs;
    int degraded;
    if (!PyArg_ParseTuple(args, "UULLOp", &model_obj, &version_obj, &rows, &outputs,
                          &scores_obj, &degraded))
        return NULL;
    if (rows < 0 || outputs < 0 || rows > INT32_MAX || outputs > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "rows and outputs: int32, not negative");
        return NULL;
    }
    Py_ssize_t model_n, version_n;
    const char *model = PyUnicode_AsUTF8AndSize(model_obj, &model_n);
    const char *version = PyUnicode_AsUTF8AndSize(version_obj, &version_n);
    if (model == NULL || version == NULL) return NULL;
    Py_buffer scores;
    if (PyObject_GetBuffer(scores_obj, &scores, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return NULL;
    int is_double = scores.itemsize == 8 && scores.format && strcmp(scores.format, "d") == 0;
    int is_float = scores.itemsize == 4 && scores.format && strcmp(scores.format, "f") == 0;
    if (!is_double && !is_float) {
        PyBuffer_Release(&scores);
        PyErr_SetString(PyExc_TypeError, "scores: float32 or float64");
        return NULL;
    }
    Py_ssize_t count = scores.len / scores.itemsize;
    /* each field: a tag, a length or value of at most 10 bytes, its bytes */
    Py_ssize_t most = 4 * 11 + model_n + version_n + 11 + 4 * count + 2;
    PyObject *out = PyBytes_FromStringAndSize(NULL, most);
    if (out == NULL) {
        PyBuffer_Release(&scores);
        return NULL;
    }
    uint8_t *start = (uint8_t *)PyBytes_AS_STRING(out), *p = start;
    p = put_text(p, 1, model, model_n);
    p = put_text(p, 2, version, version_n);
    if (rows) {
        *p++ = (3 << 3) | 0;
        p = put_varint(p, (uint64_t)rows);
    }
    if (outputs) {
        *p++ = (4 << 3) | 0;
        p = put_varint(p, (uint64_t)outputs);
    }
    if (count) {
        *p++ = (5 << 3) | 2;
        p = put_varint(p, (uint64_t)count * 4);
        if (is_float) {
            memcpy(p, scores.buf, 4 * count);
        } else {
            const double *d = scores.buf;
            for (Py_ssize_t i = 0; i < count; i++) {
                float f = (float)d[i];
                memcpy(p + 4 * i, &f, 4);
            }
        }
        p += 4 * count;
    }
    if (degraded) {
        *p++ = (9 << 3) | 0;
        *p++ = 1;
    }
    PyBuffer_Release(&scores);
    if (_PyBytes_Resize(&out, p - start) < 0) return NULL;
    return out;
}

static PyMethodDef methods[] = {
    {"predict_request", predict_request, METH_O,
     "predict_request(raw) -> (model, version, entities, request_features, return_features, "
     "return_feature_status), or None for an encoding protobuf's parser should read: entities "
     "{name: ('int64s' | 'strings' | None, list | None)}, request_features {name: [float]}."},
    {"predict_response", predict_response, METH_VARARGS,
     "predict_response(model, version, rows, outputs, scores, degraded) -> bytes: a "
     "serialized augur.v1.PredictResponse with those fields (scores: float32 or float64)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_wire", "A Predict call's bytes read and its answer written, in C.",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__wire(void) { return PyModule_Create(&module); }
