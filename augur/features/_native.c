/* augur.features._native: the read path's per-entity loops in C, for reads of many entities.
 *
 * Optional: setup.py builds it where a C compiler is present; without it the reader's
 * numpy and hiredis paths do the same work (augur.features.native says which is in use).
 * Measured on the fraud plan, 100 entities, these loops were most of a read's time above the
 * Redis round trip: deduplicating the entities and building their commands, hiredis making a
 * Python object per reply, and checking and decoding the packed vectors in numpy passes.
 *
 *   dedupe_int64(columns, inverse, first) -> distinct
 *   commands_int64(columns, first, distinct, before, between, after) -> bytes
 *   scan(buf, pos, count) -> (end, errors)
 *   decode_vectors(buf, pos, count, views, vals, ts, flags) -> (end, fallbacks, with data)
 *   assemble(groups, now, enforce_ttl, defaults, values, missing, stale, event_ts)
 *   read_few(buf, pos, groups, now, enforce_ttl, defaults, values, ...) -> (end, fallbacks)
 *
 * Every buffer is checked for size before it is touched: the replies are Redis's, but a
 * reader must never read past what it was given. A reply of a shape this file does not
 * expect is not an error here: decode_vectors returns -2 and the caller parses those replies
 * with hiredis instead.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "augur.features._native assumes a little-endian machine (keys and vectors are little-endian)"
#endif

#define MAX_DEPTH 16
#define STAMP_AT 19   /* augur.features.packed: magic 2, layout 4, seconds 8, nanos 4, size 1 */
#define STAMP_BYTES 20
#define HEADER_BYTES 39

/* ---- buffers ---------------------------------------------------------------------- */

static int get_buffer(PyObject *obj, Py_buffer *view, int writable, Py_ssize_t itemsize,
                      Py_ssize_t items, const char *what) {
    if (PyObject_GetBuffer(obj, view, (writable ? PyBUF_WRITABLE : 0) | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (items >= 0 && view->len < itemsize * items) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes, need %zd", what, view->len,
                     itemsize * items);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* Up to 8 int64 columns of n rows each: int64 arrays (read in place) or lists of ints
 * (the request decoder's; converted here, at a few ns a value, where numpy takes ~40). */
typedef struct {
    Py_buffer views[8];
    int held[8];
    int64_t *owned[8];
    const int64_t *data[8];
    Py_ssize_t k, n;
} Columns;

static void columns_release(Columns *c) {
    for (Py_ssize_t j = 0; j < c->k; j++) {
        if (c->held[j]) PyBuffer_Release(&c->views[j]);
        PyMem_Free(c->owned[j]);
    }
    c->k = 0;
}

static int is_int64(const char *format) {
    if (format == NULL) return 0;
    if (*format == '<' || *format == '=' || *format == '@') format++;
    return (format[0] == 'q' || format[0] == 'l') && format[1] == '\0';
}

/* One column into c's slot j: its values and how many. */
static Py_ssize_t column_get(PyObject *obj, Columns *c, Py_ssize_t j) {
    c->held[j] = 0;
    c->owned[j] = NULL;
    if (PyList_Check(obj) || PyTuple_Check(obj)) {
        Py_ssize_t n = PySequence_Fast_GET_SIZE(obj);
        PyObject **items = PySequence_Fast_ITEMS(obj);
        int64_t *out = PyMem_Malloc(sizeof(int64_t) * (n ? n : 1));
        if (out == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        c->owned[j] = out;
        for (Py_ssize_t i = 0; i < n; i++) {
            long long v = PyLong_AsLongLong(items[i]);
            if (v == -1 && PyErr_Occurred()) return -1;
            out[i] = v;
        }
        c->data[j] = out;
        return n;
    }
    if (PyObject_GetBuffer(obj, &c->views[j], PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) return -1;
    c->held[j] = 1;
    if (c->views[j].itemsize != 8 || !is_int64(c->views[j].format)) {
        PyErr_SetString(PyExc_ValueError, "columns: int64 arrays or lists of ints");
        return -1;
    }
    c->data[j] = (const int64_t *)c->views[j].buf;
    return c->views[j].len / 8;
}

static int columns_get(PyObject *seq, Columns *c) {
    c->k = 0;
    PyObject *fast = PySequence_Fast(seq, "columns: expected a sequence of int64 columns");
    if (fast == NULL) return -1;
    Py_ssize_t k = PySequence_Fast_GET_SIZE(fast);
    if (k < 1 || k > 8) {
        Py_DECREF(fast);
        PyErr_SetString(PyExc_ValueError, "columns: 1 to 8 join keys");
        return -1;
    }
    for (Py_ssize_t j = 0; j < k; j++) {
        c->k = j + 1;
        Py_ssize_t n = column_get(PySequence_Fast_GET_ITEM(fast, j), c, j);
        if (n >= 0 && j && n != c->n) {
            PyErr_SetString(PyExc_ValueError, "columns: of one length");
            n = -1;
        }
        if (n < 0) {
            Py_DECREF(fast);
            columns_release(c);
            return -1;
        }
        c->n = n;
    }
    Py_DECREF(fast);
    return 0;
}

/* ---- entities: dedupe and commands ------------------------------------------------- */

static inline uint64_t mix(uint64_t x) { /* splitmix64's finaliser */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static PyObject *dedupe_int64(PyObject *self, PyObject *args) {
    PyObject *cols, *inv_obj, *first_obj;
    if (!PyArg_ParseTuple(args, "OOO", &cols, &inv_obj, &first_obj)) return NULL;
    Columns c;
    if (columns_get(cols, &c) < 0) return NULL;
    Py_buffer inv, first;
    if (get_buffer(inv_obj, &inv, 1, 8, c.n, "inverse") < 0) {
        columns_release(&c);
        return NULL;
    }
    if (get_buffer(first_obj, &first, 1, 8, c.n, "first") < 0) {
        PyBuffer_Release(&inv);
        columns_release(&c);
        return NULL;
    }
    Py_ssize_t cap = 16;
    while (cap < 2 * c.n) cap <<= 1;
    int64_t *table = PyMem_Malloc(sizeof(int64_t) * cap); /* slot -> distinct index, -1 empty */
    int64_t *out_inv = inv.buf, *out_first = first.buf;
    Py_ssize_t distinct = 0;
    if (table == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    memset(table, 0xff, sizeof(int64_t) * cap);
    for (Py_ssize_t i = 0; i < c.n; i++) {
        uint64_t h = 0;
        for (Py_ssize_t j = 0; j < c.k; j++) h = mix(h ^ (uint64_t)c.data[j][i]);
        Py_ssize_t slot = (Py_ssize_t)(h & (uint64_t)(cap - 1));
        for (;;) {
            int64_t d = table[slot];
            if (d < 0) {
                table[slot] = distinct;
                out_first[distinct] = i;
                out_inv[i] = distinct++;
                break;
            }
            int64_t row = out_first[d];
            Py_ssize_t j = 0;
            while (j < c.k && c.data[j][row] == c.data[j][i]) j++;
            if (j == c.k) {
                out_inv[i] = d;
                break;
            }
            slot = (slot + 1) & (cap - 1);
        }
    }
    PyMem_Free(table);
done:
    PyBuffer_Release(&first);
    PyBuffer_Release(&inv);
    columns_release(&c);
    if (PyErr_Occurred()) return NULL;
    return PyLong_FromSsize_t(distinct);
}

/* One command per distinct entity: before, then per join key `between` and its 8 bytes,
 * then after. For HMGET of a Feast key: before = the command's head, the key's length and
 * the key's head; between = an int64 value's type and size; after = the project, the key's
 * end and the fields. The parts come from augur.features.commands.around_int64_ids, the one
 * place a command's bytes are laid out: this loop only copies them around the ids. */
static PyObject *commands_int64(PyObject *self, PyObject *args) {
    PyObject *cols, *first_obj;
    Py_ssize_t distinct;
    Py_buffer before, between, after;
    if (!PyArg_ParseTuple(args, "OOny*y*y*", &cols, &first_obj, &distinct, &before, &between,
                          &after))
        return NULL;
    PyObject *out = NULL;
    Columns c;
    Py_buffer first;
    if (columns_get(cols, &c) < 0) goto release_args;
    if (distinct < 0 || distinct > c.n) {
        PyErr_SetString(PyExc_ValueError, "distinct: out of range");
        goto release_columns;
    }
    if (get_buffer(first_obj, &first, 0, 8, distinct, "first") < 0) goto release_columns;
    const int64_t *rows = first.buf;
    Py_ssize_t one = before.len + c.k * (between.len + 8) + after.len;
    out = PyBytes_FromStringAndSize(NULL, one * distinct);
    if (out != NULL) {
        char *p = PyBytes_AS_STRING(out);
        for (Py_ssize_t d = 0; d < distinct; d++) {
            int64_t row = rows[d];
            if (row < 0 || row >= c.n) {
                Py_CLEAR(out);
                PyErr_SetString(PyExc_ValueError, "first: row out of range");
                break;
            }
            memcpy(p, before.buf, before.len);
            p += before.len;
            for (Py_ssize_t j = 0; j < c.k; j++) {
                memcpy(p, between.buf, between.len);
                p += between.len;
                memcpy(p, &c.data[j][row], 8);
                p += 8;
            }
            memcpy(p, after.buf, after.len);
            p += after.len;
        }
    }
    PyBuffer_Release(&first);
release_columns:
    columns_release(&c);
release_args:
    PyBuffer_Release(&before);
    PyBuffer_Release(&between);
    PyBuffer_Release(&after);
    return out;
}

/* ---- RESP ---------------------------------------------------------------------------- */

/* The end of the line starting at p (the index of its '\r'), or -1 if not all here. */
static inline Py_ssize_t line_end(const char *b, Py_ssize_t p, Py_ssize_t len) {
    const char *cr = memchr(b + p, '\r', len - p);
    if (cr == NULL) return -1;
    Py_ssize_t at = cr - b;
    return at + 1 < len ? at : -1;
}

/* The integer on the line from p to e; 0 on success, -2 if it is not one. */
static inline int line_int(const char *b, Py_ssize_t p, Py_ssize_t e, long long *out) {
    int neg = 0;
    long long v = 0;
    if (p < e && b[p] == '-') {
        neg = 1;
        p++;
    }
    if (p >= e || e - p > 18) return -2;
    for (; p < e; p++) {
        if (b[p] < '0' || b[p] > '9') return -2;
        v = v * 10 + (b[p] - '0');
    }
    *out = neg ? -v : v;
    return 0;
}

/* Skip one reply from p: its end, -1 if not all here, -2 if not RESP this file knows.
 * `errors` counts error replies met. */
static Py_ssize_t skip(const char *b, Py_ssize_t p, Py_ssize_t len, int depth, long long *errors) {
    if (p >= len) return -1;
    if (depth > MAX_DEPTH) return -2;
    char kind = b[p];
    Py_ssize_t e = line_end(b, p + 1, len);
    if (e < 0) return -1;
    long long n;
    switch (kind) {
    case '-':
        (*errors)++;
        /* fall through */
    case '+': case ':': case '_': case ',': case '#': case '(':
        return e + 2;
    case '!':
        (*errors)++;
        /* fall through */
    case '$': case '=':
        if (line_int(b, p + 1, e, &n) < 0) return -2;
        if (n < 0) return e + 2;
        if (n > (long long)(len - (e + 2))) return -1;
        if (e + 2 + n + 2 > len) return -1;
        return e + 2 + (Py_ssize_t)n + 2;
    case '*': case '~': case '%': case '>':
        if (line_int(b, p + 1, e, &n) < 0) return -2;
        if (kind == '%') n *= 2;
        p = e + 2;
        for (long long i = 0; i < n; i++) {
            p = skip(b, p, len, depth + 1, errors);
            if (p < 0) return p;
        }
        return p;
    default:
        return -2;
    }
}

static PyObject *scan(PyObject *self, PyObject *args) {
    Py_buffer buf;
    Py_ssize_t pos, count;
    if (!PyArg_ParseTuple(args, "y*nn", &buf, &pos, &count)) return NULL;
    long long errors = 0;
    Py_ssize_t p = pos;
    if (p < 0 || p > buf.len) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "pos: out of range");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count && p >= 0; i++) p = skip(buf.buf, p, buf.len, 0, &errors);
    PyBuffer_Release(&buf);
    return Py_BuildValue("nL", p, errors);
}

/* A bulk string at p: its data's offset and length (-1: null), and the reply's end;
 * -2 for anything else, -1 if not all here. */
static inline Py_ssize_t bulk(const char *b, Py_ssize_t p, Py_ssize_t len, Py_ssize_t *at,
                              Py_ssize_t *size) {
    if (p >= len) return -1;
    Py_ssize_t e = line_end(b, p + 1, len);
    if (e < 0) return -1;
    *at = e + 2;
    if (b[p] == '_') { /* RESP3 null */
        *size = -1;
        return e + 2;
    }
    if (b[p] != '$') return -2;
    long long n;
    if (line_int(b, p + 1, e, &n) < 0) return -2;
    if (n < 0) {
        *size = -1;
        return e + 2;
    }
    if (n > (long long)(len - (e + 2)) || e + 2 + n + 2 > len) return -1;
    *size = (Py_ssize_t)n;
    return e + 2 + (Py_ssize_t)n + 2;
}

/* views: a tuple per view of (layout, stored width, first column, pick), pick a buffer of
 * int32: for each of the view's plan columns, its position in the stored vector.
 * vals: float32 (count, columns); ts: float64 (count, views); flags: uint8 (count,), bit 0
 * set when an entity's vector is absent or outdated while its `_ts` is there (Feast's
 * fields are needed), bit 1 when any view has data. Each reply must be HMGET's array of
 * the views' vectors, then their `_ts`. */
typedef struct {
    uint32_t layout;
    Py_ssize_t width, column, size;
    Py_buffer pick;
    Py_ssize_t picks;
} View;

/* The views of a group from Python (see decode_vectors); 0, or -1 with an exception set.
 * Whatever it got, `*got` says how many picks to release, even on failure. */
static int views_get(PyObject *views_obj, Py_ssize_t columns, View *views, Py_ssize_t *nv,
                     Py_ssize_t *got) {
    *got = 0;
    int failed = 0;
    PyObject *fast = PySequence_Fast(views_obj, "views: expected a sequence");
    if (fast == NULL) return -1;
    *nv = PySequence_Fast_GET_SIZE(fast);
    if (*nv < 1 || *nv > 64 || columns < 0) {
        Py_DECREF(fast);
        PyErr_SetString(PyExc_ValueError, "views: 1 to 64 views");
        return -1;
    }
    for (; *got < *nv; (*got)++) {
        View *v = &views[*got];
        PyObject *pick;
        unsigned long layout;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, *got), "knnO", &layout, &v->width,
                              &v->column, &pick) ||
            get_buffer(pick, &v->pick, 0, 4, -1, "pick") < 0) {
            failed = 1;
            break;
        }
        v->layout = (uint32_t)layout;
        v->picks = v->pick.len / 4;
        v->size = HEADER_BYTES + 4 * v->width;
        const int32_t *idx = v->pick.buf;
        int bad = v->width < 0 || v->column < 0 || v->column + v->picks > columns;
        for (Py_ssize_t f = 0; f < v->picks && !bad; f++) bad = idx[f] < 0 || idx[f] >= v->width;
        if (bad) {
            (*got)++; /* its pick is held: released with the others */
            PyErr_SetString(PyExc_ValueError, "views: a column or pick out of range");
            failed = 1;
            break;
        }
    }
    Py_DECREF(fast);
    return failed ? -1 : 0;
}

static void views_release(View *views, Py_ssize_t got) {
    for (Py_ssize_t j = 0; j < got; j++) PyBuffer_Release(&views[j].pick);
}

/* `count` HMGET replies of the views' vectors and `_ts` from p, checked and decoded into
 * vals (count, columns), ts (count, views) and flags (count,): the end, -1 if not all here,
 * -2 for a reply of another shape. */
static Py_ssize_t decode_replies(const char *b, Py_ssize_t len, Py_ssize_t p, Py_ssize_t count,
                                 const View *views, Py_ssize_t nv, Py_ssize_t columns,
                                 float *out_vals, double *out_ts, uint8_t *out_flags,
                                 Py_ssize_t *fallbacks, Py_ssize_t *with_data) {
    Py_ssize_t at[128], size[128];
    *fallbacks = *with_data = 0;
    for (Py_ssize_t i = 0; i < count && p >= 0; i++) {
        /* the array header: exactly 2 * views elements */
        if (p >= len || b[p] != '*') return -2;
        Py_ssize_t e = line_end(b, p + 1, len);
        long long n;
        if (e < 0) return -1;
        if (line_int(b, p + 1, e, &n) < 0 || n != 2 * nv) return -2;
        p = e + 2;
        for (Py_ssize_t f = 0; f < 2 * nv && p >= 0; f++) p = bulk(b, p, len, &at[f], &size[f]);
        if (p < 0) return p;
        float *row = out_vals + i * columns;
        uint8_t flag = 0;
        for (Py_ssize_t j = 0; j < nv; j++) {
            const View *v = &views[j];
            Py_ssize_t stamp = size[nv + j], vec = size[j];
            const char *raw = b + at[j];
            int valid = 0;
            if (stamp >= 0) {
                flag |= 2;
                if (vec == v->size && raw[0] == 'A' && raw[1] == 'V' && stamp <= STAMP_BYTES &&
                    (uint8_t)raw[18] == stamp && memcmp(raw + STAMP_AT, b + at[nv + j], stamp) == 0) {
                    uint32_t layout;
                    memcpy(&layout, raw + 2, 4);
                    valid = layout == v->layout;
                }
                if (!valid) flag |= 1;
            }
            const int32_t *idx = v->pick.buf;
            if (valid) {
                int64_t seconds;
                int32_t nanos;
                memcpy(&seconds, raw + 6, 8);
                memcpy(&nanos, raw + 14, 4);
                out_ts[i * nv + j] = (double)seconds + (double)nanos / 1e9;
                const char *values = raw + HEADER_BYTES;
                for (Py_ssize_t f = 0; f < v->picks; f++)
                    memcpy(&row[v->column + f], values + 4 * (Py_ssize_t)idx[f], 4);
            } else {
                out_ts[i * nv + j] = NAN;
                for (Py_ssize_t f = 0; f < v->picks; f++) row[v->column + f] = NAN;
            }
        }
        out_flags[i] = flag;
        *fallbacks += flag & 1;
        *with_data += (flag & 2) >> 1;
    }
    return p;
}

static PyObject *decode_vectors(PyObject *self, PyObject *args) {
    Py_buffer buf, vals, ts, flags;
    Py_ssize_t pos, count, columns;
    PyObject *views_obj, *vals_obj, *ts_obj, *flags_obj;
    if (!PyArg_ParseTuple(args, "y*nnOnOOO", &buf, &pos, &count, &views_obj, &columns, &vals_obj,
                          &ts_obj, &flags_obj))
        return NULL;
    PyObject *result = NULL;
    View views[64];
    Py_ssize_t nv = 0, got = 0;
    int have_vals = 0, have_ts = 0, have_flags = 0;
    if (pos < 0 || pos > buf.len || count < 0) {
        PyErr_SetString(PyExc_ValueError, "decode_vectors: arguments out of range");
        goto out;
    }
    if (views_get(views_obj, columns, views, &nv, &got) < 0) goto out;
    if (get_buffer(vals_obj, &vals, 1, 4, count * columns, "vals") < 0) goto out;
    have_vals = 1;
    if (get_buffer(ts_obj, &ts, 1, 8, count * nv, "ts") < 0) goto out;
    have_ts = 1;
    if (get_buffer(flags_obj, &flags, 1, 1, count, "flags") < 0) goto out;
    have_flags = 1;
    Py_ssize_t fallbacks, with_data;
    Py_ssize_t p = decode_replies(buf.buf, buf.len, pos, count, views, nv, columns, vals.buf,
                                  ts.buf, flags.buf, &fallbacks, &with_data);
    result = Py_BuildValue("nnn", p, fallbacks, with_data);
out:
    views_release(views, got);
    if (have_vals) PyBuffer_Release(&vals);
    if (have_ts) PyBuffer_Release(&ts);
    if (have_flags) PyBuffer_Release(&flags);
    PyBuffer_Release(&buf);
    return result;
}

/* ---- assembly --------------------------------------------------------------------- */

/* The request's rows from each group's distinct entities: values past their view's TTL
 * blanked and counted stale, event times placed, then, per row, missing values counted and
 * replaced by the declared defaults (NaN where none). What the reader's numpy assembly
 * does in some twenty array operations per read. Each group is a tuple of
 * (vals float32 (d, c), ts float64 (d, v), inverse int64 (n,), column int64 (c,),
 *  view int64 (c,), ttl float64 (c,), position int64 (v,)). */
/* A read's outputs: values float32 (n, width), missing and stale int32 (n,), event times
 * float64 (n, views), and the declared defaults float32 (width,) or None. */
typedef struct {
    Py_buffer values, missing, stale, event, defaults;
    int held; /* how many of the five are held, in that order */
    Py_ssize_t n, width, n_views;
    long long missing_total, stale_total; /* out_fill's sums: what the metrics count */
} Out;

static void out_release(Out *o) {
    Py_buffer *b[5] = {&o->values, &o->missing, &o->stale, &o->event, &o->defaults};
    for (int k = o->held - 1; k >= 0; k--) PyBuffer_Release(b[k]);
    o->held = 0;
}

static int out_get(PyObject *defaults, PyObject *values, PyObject *missing, PyObject *stale,
                   PyObject *event, Out *o) {
    o->held = 0;
    if (get_buffer(values, &o->values, 1, 4, -1, "values") < 0) goto fail;
    o->held = 1;
    if (get_buffer(missing, &o->missing, 1, 4, -1, "missing") < 0) goto fail;
    o->held = 2;
    o->n = o->missing.len / 4;
    if (o->n == 0 || o->values.len % (4 * o->n)) {
        PyErr_SetString(PyExc_ValueError, "values: not (rows, columns) for the rows of missing");
        goto fail;
    }
    o->width = o->values.len / (4 * o->n);
    if (get_buffer(stale, &o->stale, 1, 4, o->n, "stale") < 0) goto fail;
    o->held = 3;
    if (get_buffer(event, &o->event, 1, 8, -1, "event_ts") < 0) goto fail;
    o->held = 4;
    if (o->event.len % (8 * o->n)) {
        PyErr_SetString(PyExc_ValueError, "event_ts: not (rows, views)");
        goto fail;
    }
    o->n_views = o->event.len / (8 * o->n);
    if (defaults != Py_None) {
        if (get_buffer(defaults, &o->defaults, 0, 4, o->width, "defaults") < 0) goto fail;
        o->held = 5;
    }
    memset(o->stale.buf, 0, 4 * o->n);
    return 0;
fail:
    out_release(o);
    return -1;
}

/* One group's distinct entities (vals (d, c), ts (d, v)) into the rows, through inverse
 * (n,): values past their view's TTL blanked and counted stale, event times placed. The
 * lengths are of each array, in items; 0, or -1 with an exception if they do not fit. */
static int assemble_group(Out *o, const float *vals, Py_ssize_t vals_len, const double *ts,
                          Py_ssize_t ts_len, const int64_t *inv, Py_ssize_t inv_len,
                          const int64_t *column, Py_ssize_t c, const int64_t *view,
                          Py_ssize_t view_len, const double *ttl, Py_ssize_t ttl_len,
                          const int64_t *position, Py_ssize_t v, double now, int enforce) {
    Py_ssize_t n = o->n, width = o->width, n_views = o->n_views;
    Py_ssize_t d = c ? vals_len / c : 0;
    int bad = inv_len != n || view_len != c || ttl_len != c || (c && vals_len != c * d) ||
              ts_len != v * d;
    for (Py_ssize_t k = 0; k < c && !bad; k++)
        bad = column[k] < 0 || column[k] >= width || view[k] < 0 || view[k] >= v;
    for (Py_ssize_t j = 0; j < v && !bad; j++) bad = position[j] < 0 || position[j] >= n_views;
    for (Py_ssize_t r = 0; r < n && !bad; r++) bad = inv[r] < 0 || inv[r] >= d;
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "assemble: a group's arrays do not fit");
        return -1;
    }
    float *out = o->values.buf;
    int32_t *out_stale = o->stale.buf;
    double *out_event = o->event.buf;
    for (Py_ssize_t r = 0; r < n; r++) {
        const float *src = vals + inv[r] * c;
        const double *at = ts + inv[r] * v;
        float *row = out + r * width;
        int32_t blanked = 0;
        for (Py_ssize_t k = 0; k < c; k++) {
            float x = src[k];
            if (enforce && now - at[view[k]] > ttl[k]) { /* NaN age: never */
                blanked += x == x;
                x = NAN;
            }
            row[column[k]] = x;
        }
        out_stale[r] += blanked;
        for (Py_ssize_t j = 0; j < v; j++) out_event[r * n_views + position[j]] = at[j];
    }
    return 0;
}

/* Per row: missing values counted, and replaced by the declared defaults where given; the
 * read's totals of missing and stale values kept. */
static void out_fill(Out *o) {
    o->missing_total = o->stale_total = 0;
    const float *fill = o->held >= 5 ? o->defaults.buf : NULL;
    float *out = o->values.buf;
    int32_t *out_missing = o->missing.buf;
    for (Py_ssize_t r = 0; r < o->n; r++) {
        float *row = out + r * o->width;
        int32_t gaps = 0;
        for (Py_ssize_t k = 0; k < o->width; k++) {
            if (row[k] != row[k]) {
                gaps++;
                if (fill) row[k] = fill[k];
            }
        }
        out_missing[r] = gaps;
        o->missing_total += gaps;
        o->stale_total += ((const int32_t *)o->stale.buf)[r];
    }
}

/* The request's rows from each group's distinct entities: values past their view's TTL
 * blanked and counted stale, event times placed, then, per row, missing values counted and
 * replaced by the declared defaults (NaN where none). What the reader's numpy assembly
 * does in some twenty array operations per read. Each group is a tuple of
 * (vals float32 (d, c), ts float64 (d, v), inverse int64 (n,), column int64 (c,),
 *  view int64 (c,), ttl float64 (c,), position int64 (v,)). */
static PyObject *assemble(PyObject *self, PyObject *args) {
    PyObject *groups_obj, *defaults_obj, *values_obj, *missing_obj, *stale_obj, *event_obj;
    double now;
    int enforce;
    if (!PyArg_ParseTuple(args, "OdpOOOOO", &groups_obj, &now, &enforce, &defaults_obj,
                          &values_obj, &missing_obj, &stale_obj, &event_obj))
        return NULL;
    Out o;
    if (out_get(defaults_obj, values_obj, missing_obj, stale_obj, event_obj, &o) < 0) return NULL;
    PyObject *result = NULL;
    PyObject *fast = PySequence_Fast(groups_obj, "groups: expected a sequence");
    if (fast == NULL) goto out;
    for (Py_ssize_t g = 0; g < PySequence_Fast_GET_SIZE(fast); g++) {
        PyObject *obj[7];
        Py_buffer b[7];
        int got = 0, failed = 1;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, g), "OOOOOOO", &obj[0], &obj[1],
                              &obj[2], &obj[3], &obj[4], &obj[5], &obj[6]))
            goto out;
        static const Py_ssize_t size[7] = {4, 8, 8, 8, 8, 8, 8};
        static const char *what[7] = {"vals", "ts", "inverse", "column", "view", "ttl", "position"};
        for (; got < 7; got++)
            if (get_buffer(obj[got], &b[got], 0, size[got], -1, what[got]) < 0) break;
        if (got == 7)
            failed = assemble_group(&o, b[0].buf, b[0].len / 4, b[1].buf, b[1].len / 8, b[2].buf,
                                    b[2].len / 8, b[3].buf, b[3].len / 8, b[4].buf, b[4].len / 8,
                                    b[5].buf, b[5].len / 8, b[6].buf, b[6].len / 8, now, enforce);
        for (int k = 0; k < got; k++) PyBuffer_Release(&b[k]);
        if (failed) goto out;
    }
    out_fill(&o);
    result = Py_BuildValue("LL", o.missing_total, o.stale_total);
out:
    Py_XDECREF(fast);
    out_release(&o);
    return result;
}

/* A read of a few rows in one call: per group, its `count` HMGET replies of vectors from
 * pos, decoded and assembled into the rows as `decode_vectors` and `assemble` do, without a
 * numpy array per group (their allocations were most of a one-entity read's C path). Each
 * group is a tuple of (count, views, columns, inverse, column, view, ttl, position), inverse
 * a list of ints or an int64 array. Returns (end, fallbacks): when an entity needs Feast's
 * fields (fallbacks > 0) or a reply is of another shape (end < 0), the rows are not whole
 * and the caller reads another way. */
static PyObject *read_few(PyObject *self, PyObject *args) {
    Py_buffer buf;
    Py_ssize_t pos;
    PyObject *groups_obj, *defaults_obj, *values_obj, *missing_obj, *stale_obj, *event_obj;
    double now;
    int enforce;
    if (!PyArg_ParseTuple(args, "y*nOdpOOOOO", &buf, &pos, &groups_obj, &now, &enforce,
                          &defaults_obj, &values_obj, &missing_obj, &stale_obj, &event_obj))
        return NULL;
    PyObject *result = NULL, *fast = NULL;
    Out o;
    o.held = 0;
    if (pos < 0 || pos > buf.len) {
        PyErr_SetString(PyExc_ValueError, "pos: out of range");
        goto out;
    }
    if (out_get(defaults_obj, values_obj, missing_obj, stale_obj, event_obj, &o) < 0) goto out;
    fast = PySequence_Fast(groups_obj, "groups: expected a sequence");
    if (fast == NULL) goto out;
    Py_ssize_t p = pos, fallbacks = 0;
    for (Py_ssize_t g = 0; g < PySequence_Fast_GET_SIZE(fast) && p >= 0 && !fallbacks; g++) {
        Py_ssize_t count, columns, nv = 0, got_views = 0, with_data;
        PyObject *views_obj, *inv_obj, *obj[4];
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, g), "nOnOOOOO", &count, &views_obj,
                              &columns, &inv_obj, &obj[0], &obj[1], &obj[2], &obj[3]))
            goto out;
        View views[64];
        Columns inv;
        inv.k = 0;
        Py_buffer b[4];
        int got = 0, failed = 1;
        float *vals = NULL;
        double *ts = NULL;
        uint8_t *flags = NULL;
        if (count < 0 || columns < 0) {
            PyErr_SetString(PyExc_ValueError, "read_few: a group's count or columns out of range");
            goto group_done;
        }
        if (views_get(views_obj, columns, views, &nv, &got_views) < 0) goto group_done;
        PyObject *one = PyTuple_Pack(1, inv_obj);
        if (one == NULL) goto group_done;
        int inv_bad = columns_get(one, &inv);
        Py_DECREF(one);
        if (inv_bad < 0) goto group_done;
        static const Py_ssize_t size[4] = {8, 8, 8, 8};
        static const char *what[4] = {"column", "view", "ttl", "position"};
        for (; got < 4; got++)
            if (get_buffer(obj[got], &b[got], 0, size[got], -1, what[got]) < 0) break;
        if (got < 4) goto group_done;
        vals = PyMem_Malloc(sizeof(float) * (count * columns + 1));
        ts = PyMem_Malloc(sizeof(double) * (count * nv + 1));
        flags = PyMem_Malloc(count + 1);
        if (vals == NULL || ts == NULL || flags == NULL) {
            PyErr_NoMemory();
            goto group_done;
        }
        p = decode_replies(buf.buf, buf.len, p, count, views, nv, columns, vals, ts, flags,
                           &fallbacks, &with_data);
        if (p >= 0 && !fallbacks &&
            assemble_group(&o, vals, count * columns, ts, count * nv, inv.data[0], inv.n,
                           b[0].buf, b[0].len / 8, b[1].buf, b[1].len / 8, b[2].buf,
                           b[2].len / 8, b[3].buf, b[3].len / 8, now, enforce) < 0)
            goto group_done;
        failed = 0;
    group_done:
        PyMem_Free(vals);
        PyMem_Free(ts);
        PyMem_Free(flags);
        for (int k = 0; k < got; k++) PyBuffer_Release(&b[k]);
        columns_release(&inv);
        views_release(views, got_views);
        if (failed) goto out;
    }
    o.missing_total = o.stale_total = 0;
    if (p >= 0 && !fallbacks) out_fill(&o);
    result = Py_BuildValue("nnLL", p, fallbacks, o.missing_total, o.stale_total);
out:
    Py_XDECREF(fast);
    out_release(&o);
    PyBuffer_Release(&buf);
    return result;
}

/* ---- Redis Cluster ------------------------------------------------------------------- */

/* CRC16-CCITT (XMODEM), Redis Cluster's key hash, a byte at a time from a 256-entry table
 * (as Redis computes it): bit by bit, the hashing of a 1,000-entity read's keys cost more
 * than the whole read on one node. */
static uint16_t crc16_table[256];

static void crc16_init(void) {
    for (int byte = 0; byte < 256; byte++) {
        uint16_t crc = (uint16_t)(byte << 8);
        for (int b = 0; b < 8; b++) crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
        crc16_table[byte] = crc;
    }
}

static uint16_t crc16(const char *p, Py_ssize_t n) {
    uint16_t crc = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        crc = (uint16_t)(crc << 8) ^ crc16_table[((crc >> 8) ^ (unsigned char)p[i]) & 0xff];
    return crc;
}

/* The key's hash slot, with Redis's hash tags: the part between the first '{' and the next
 * '}' when it is not empty. */
static uint16_t key_slot(const char *k, Py_ssize_t n) {
    const char *open = memchr(k, '{', n);
    if (open) {
        Py_ssize_t from = open - k + 1;
        const char *close = memchr(k + from, '}', n - from);
        if (close && close - (k + from) > 0) return crc16(k + from, close - (k + from)) & 16383;
    }
    return crc16(k, n) & 16383;
}

/* The length after a '*' or '$' at p, its digits read up to the "\r\n" (no memchr: these
 * lines are a few bytes, and a 1,000-entity read has tens of thousands of them); the
 * position after the "\r\n", or -1. */
static inline Py_ssize_t header_at(const char *b, Py_ssize_t p, Py_ssize_t len, long long *n) {
    long long v = 0;
    Py_ssize_t q = p + 1, digits = 0;
    for (; q < len && b[q] >= '0' && b[q] <= '9' && digits < 18; q++, digits++) v = v * 10 + (b[q] - '0');
    if (!digits || q + 1 >= len || b[q] != '\r' || b[q + 1] != '\n') return -1;
    *n = v;
    return q + 2;
}

/* The arguments after the key of the command parsed last: the commands of one group (an
 * HMGET per entity) repeat the same field names, so a command whose bytes after its key are
 * the same as the last one's ends the same way, found with one memcmp instead of a parse of
 * every field (most of a 1,000-entity read's partition). */
typedef struct {
    long long argc;
    const char *tail;
    Py_ssize_t tail_len;
} LastCommand;

/* One command from p (an array of bulk strings): its end, and its key's (argument 1's)
 * slot; -1 if it is not such a command. */
static Py_ssize_t command_at(const char *b, Py_ssize_t p, Py_ssize_t len, uint16_t *slot, LastCommand *last) {
    long long n, size;
    if (p >= len || b[p] != '*' || (p = header_at(b, p, len, &n)) < 0 || n < 2) return -1;
    Py_ssize_t tail = -1;
    for (long long i = 0; i < n; i++) {
        if (i == 2) {
            tail = p;
            if (n == last->argc && last->tail_len <= len - p && memcmp(b + p, last->tail, last->tail_len) == 0)
                return p + last->tail_len;
        }
        if (p >= len || b[p] != '$' || (p = header_at(b, p, len, &size)) < 0) return -1;
        if (p + size + 2 > len) return -1;
        if (i == 1) *slot = key_slot(b + p, (Py_ssize_t)size);
        p += (Py_ssize_t)size + 2;
    }
    last->argc = n;
    last->tail = tail < 0 ? b + p : b + tail;
    last->tail_len = tail < 0 ? 0 : p - tail;
    return p;
}

static PyObject *partition(PyObject *self, PyObject *args) {
    Py_buffer buf, owner_of, owners;
    Py_ssize_t count, nodes;
    if (!PyArg_ParseTuple(args, "y*ny*nw*", &buf, &count, &owner_of, &nodes, &owners)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t *ends = NULL, *sizes = NULL;
    if (owner_of.len != 16384 || owners.len < count || nodes < 1 || nodes > 255) {
        PyErr_SetString(PyExc_ValueError, "partition: owner_of must be 16384 bytes, owners count");
        goto out;
    }
    ends = PyMem_Malloc(sizeof(Py_ssize_t) * (count + 1));
    sizes = PyMem_Calloc(nodes, sizeof(Py_ssize_t));
    if (!ends || !sizes) {
        PyErr_NoMemory();
        goto out;
    }
    const char *b = buf.buf;
    unsigned char *own = owners.buf;
    const unsigned char *map = owner_of.buf;
    Py_ssize_t p = 0;
    LastCommand last = {-1, NULL, 0};
    for (Py_ssize_t i = 0; i < count; i++) {
        uint16_t slot = 0;
        Py_ssize_t e = command_at(b, p, buf.len, &slot, &last);
        if (e < 0) {
            PyErr_Format(PyExc_ValueError, "partition: command %zd is not an array of bulk strings with a key", i);
            goto out;
        }
        own[i] = map[slot];
        if (own[i] >= nodes) {
            PyErr_Format(PyExc_ValueError, "partition: slot %d has no node", (int)slot);
            goto out;
        }
        sizes[own[i]] += e - p;
        ends[i] = e;
        p = e;
    }
    result = PyList_New(nodes);
    if (!result) goto out;
    for (Py_ssize_t k = 0; k < nodes; k++) {
        PyObject *part = PyBytes_FromStringAndSize(NULL, sizes[k]);
        if (!part) {
            Py_CLEAR(result);
            goto out;
        }
        PyList_SET_ITEM(result, k, part);
        sizes[k] = 0; /* now the fill position */
    }
    p = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        char *to = PyBytes_AS_STRING(PyList_GET_ITEM(result, own[i]));
        memcpy(to + sizes[own[i]], b + p, ends[i] - p);
        sizes[own[i]] += ends[i] - p;
        p = ends[i];
    }
out:
    PyMem_Free(ends);
    PyMem_Free(sizes);
    PyBuffer_Release(&buf);
    PyBuffer_Release(&owner_of);
    PyBuffer_Release(&owners);
    return result;
}

static PyObject *merge(PyObject *self, PyObject *args) {
    PyObject *parts;
    Py_buffer owners;
    Py_ssize_t count;
    if (!PyArg_ParseTuple(args, "O!y*n", &PyList_Type, &parts, &owners, &count)) return NULL;
    Py_ssize_t nodes = PyList_GET_SIZE(parts);
    PyObject *result = NULL;
    Py_buffer *views = PyMem_Calloc(nodes ? nodes : 1, sizeof(Py_buffer));
    Py_ssize_t *at = PyMem_Calloc(nodes ? nodes : 1, sizeof(Py_ssize_t));
    Py_ssize_t got = 0, total = 0;
    if (!views || !at) {
        PyErr_NoMemory();
        goto out;
    }
    for (; got < nodes; got++) {
        if (PyObject_GetBuffer(PyList_GET_ITEM(parts, got), &views[got], PyBUF_SIMPLE) < 0) goto out;
        total += views[got].len;
    }
    if (owners.len < count) {
        PyErr_SetString(PyExc_ValueError, "merge: owners shorter than count");
        goto out;
    }
    result = PyByteArray_FromStringAndSize(NULL, total);
    if (!result) goto out;
    char *to = PyByteArray_AS_STRING(result);
    const unsigned char *own = owners.buf;
    Py_ssize_t w = 0;
    long long errors = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t k = own[i];
        Py_ssize_t e = k < nodes ? skip(views[k].buf, at[k], views[k].len, 0, &errors) : -3;
        if (e < 0) {
            PyErr_Format(PyExc_ValueError, "merge: reply %zd is not whole in node %zd's replies", i, k);
            Py_CLEAR(result);
            goto out;
        }
        memcpy(to + w, (const char *)views[k].buf + at[k], e - at[k]);
        w += e - at[k];
        at[k] = e;
    }
out:
    for (Py_ssize_t k = 0; k < got; k++) PyBuffer_Release(&views[k]);
    PyMem_Free(views);
    PyMem_Free(at);
    PyBuffer_Release(&owners);
    return result;
}

/* ---- Request features ------------------------------------------------------------- */

/* A request's doubles as float32, each checked first (a finite double past float32's range
 * would reach the model as inf): one call where numpy took six, each paid cold per call. */
static PyObject *float32s(PyObject *self, PyObject *args) {
    PyObject *seq_obj, *out_obj;
    double limit;
    if (!PyArg_ParseTuple(args, "OOd", &seq_obj, &out_obj, &limit)) return NULL;
    PyObject *fast = PySequence_Fast(seq_obj, "doubles: expected a sequence");
    if (fast == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast), bad = -1;
    Py_buffer out;
    if (get_buffer(out_obj, &out, 1, 4, n, "out") < 0) {
        Py_DECREF(fast);
        return NULL;
    }
    float *dst = out.buf;
    PyObject **items = PySequence_Fast_ITEMS(fast);
    for (Py_ssize_t i = 0; i < n; i++) {
        double v = PyFloat_AsDouble(items[i]);
        if (v == -1.0 && PyErr_Occurred()) {
            bad = -2;
            break;
        }
        if (!(fabs(v) < limit)) {
            bad = i;
            break;
        }
        dst[i] = (float)v;
    }
    PyBuffer_Release(&out);
    Py_DECREF(fast);
    return bad == -2 ? NULL : PyLong_FromSsize_t(bad);
}

static PyMethodDef methods[] = {
    {"partition", partition, METH_VARARGS,
     "partition(payload, count, owner_of, nodes, owners) -> list of bytes: the `count` commands "
     "of payload split by the node owning their key's slot (owner_of: 16384 bytes, a node per "
     "slot), each node's in their order; owners[i] gets command i's node."},
    {"merge", merge, METH_VARARGS,
     "merge(parts, owners, count) -> bytearray: the replies of each node (parts[k], in order) "
     "put back in the order of the commands (owners[i]: command i's node)."},
    {"dedupe_int64", dedupe_int64, METH_VARARGS,
     "dedupe_int64(columns, inverse, first) -> distinct: number the distinct rows of int64 "
     "columns in order of first appearance; inverse[i] is row i's number, first[d] the row "
     "where number d first appears (both int64, len(rows))."},
    {"commands_int64", commands_int64, METH_VARARGS,
     "commands_int64(columns, first, distinct, before, between, after) -> bytes: per distinct "
     "row, before + (between + its 8-byte value, per column) + after."},
    {"scan", scan, METH_VARARGS,
     "scan(buf, pos, count) -> (end, errors): the end of `count` RESP replies from pos "
     "(-1: not all received; -2: not RESP) and how many are error replies."},
    {"decode_vectors", decode_vectors, METH_VARARGS,
     "decode_vectors(buf, pos, count, views, columns, vals, ts, flags) -> (end, fallbacks, "
     "with_data): HMGET replies of packed vectors and their _ts, checked and decoded (end "
     "-2: a reply of another shape), and how many entities have bit 0 and bit 1 of flags."},
    {"read_few", read_few, METH_VARARGS,
     "read_few(buf, pos, groups, now, enforce_ttl, defaults, values, missing, stale, event_ts) "
     "-> (end, fallbacks, missing, stale): decode_vectors and assemble for a read of a few "
     "rows, in one call; missing and stale: the totals of those arrays."},
    {"assemble", assemble, METH_VARARGS,
     "assemble(groups, now, enforce_ttl, defaults, values, missing, stale, event_ts) -> "
     "(missing, stale): the request's rows from each group's distinct entities, TTL applied, "
     "gaps counted and filled with defaults (None: left NaN); the totals of missing and stale."},
    {"float32s", float32s, METH_VARARGS,
     "float32s(doubles, out, limit) -> bad: a sequence of floats into out (float32, len(doubles)) "
     "when every |value| < limit (NaN fails), else the index of the first that is not (-1: all "
     "fit)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_native", "The read path's per-entity loops in C.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) {
    crc16_init();
    return PyModule_Create(&module);
}
