/* Device IDs -> indices for GetPreferredAllocation, straight from the request's bytes.
 *
 * The kubelet lists every free device of the resource in each GetPreferredAllocation (4,096 IDs on a 4,096-core
 * node). In CPython, turning those into core indices costs ~0.35 ms: protobuf makes a str per ID and a dict
 * lookup hashes each one again; that alone is more than half of the trivial server's whole round trip. This
 * module reads the request's wire bytes (https://protobuf.dev/programming-guides/encoding/) and looks each ID up
 * in an open-addressing table built once from the advertised IDs, without making any Python object per ID.
 *
 * It decodes only the plain encoding a protobuf encoder writes for
 * k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1 PreferredAllocationRequest (one-byte tags of the known fields,
 * shortest-form varints, every ID advertised, allocation_size a non-negative int32) and answers None for anything
 * else: unknown fields, unknown IDs, bad UTF-8, truncation, too many containers. The caller then parses the request with
 * protobuf itself, so the answer for any input is protobuf's; snnrm/kubelet/id_index.py and its tests hold
 * that contract.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* A growable array of indices, kept between calls (it grows to the largest request seen, no further). */
typedef struct {
    int64_t *at;
    Py_ssize_t len, cap;
} Indices;

static int push(Indices *a, int64_t value) {
    if (a->len == a->cap) {
        Py_ssize_t cap = a->cap ? 2 * a->cap : 1024;
        int64_t *grown = PyMem_Realloc(a->at, sizeof(int64_t) * (size_t)cap);
        if (grown == NULL) {
            PyErr_NoMemory();
            return 0;
        }
        a->at = grown;
        a->cap = cap;
    }
    a->at[a->len++] = value;
    return 1;
}

typedef struct {
    PyObject_HEAD
    char *keys;          /* every ID's UTF-8 bytes, back to back */
    Py_ssize_t *offset;  /* n + 1 offsets into keys */
    int32_t *slots;      /* index + 1 of the ID hashed to each slot; 0: empty (linear probing) */
    uint64_t mask;       /* number of slots - 1, a power of two at least twice n */
    Indices avail;       /* the container being decoded: its available IDs' indices */
    Indices must;        /* and its must-include IDs' */
} IdIndex;

/* A 64-bit mix of p[0:len], eight bytes at a time (IDs are short: chip12-core255 is two words). The table holds
 * only the advertised IDs, so a request cannot flood it; probes stay short at half load whatever it asks. */
static uint64_t hash_id(const unsigned char *p, Py_ssize_t len) {
    uint64_t h = 0x9e3779b97f4a7c15ULL ^ (uint64_t)len;
    uint64_t w;
    for (; len >= 8; p += 8, len -= 8) {
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xbf58476d1ce4e5b9ULL;
        h ^= h >> 31;
    }
    if (len > 0) {
        w = 0;
        for (Py_ssize_t k = 0; k < len; k++) {
            w |= (uint64_t)p[k] << (8 * k);
        }
        h = (h ^ w) * 0x94d049bb133111ebULL;
        h ^= h >> 29;
    }
    h = (h ^ (h >> 32)) * 0xbf58476d1ce4e5b9ULL;
    return h ^ (h >> 29);
}

/* Index of the ID p[0:len], or -1. */
static int64_t find(const IdIndex *self, const unsigned char *p, Py_ssize_t len) {
    uint64_t slot = hash_id(p, len) & self->mask;
    for (;;) {
        int32_t at = self->slots[slot];
        if (at == 0) {
            return -1;
        }
        Py_ssize_t i = at - 1;
        Py_ssize_t start = self->offset[i];
        if (self->offset[i + 1] - start == len && memcmp(self->keys + start, p, (size_t)len) == 0) {
            return i;
        }
        slot = (slot + 1) & self->mask;
    }
}

static void IdIndex_dealloc(IdIndex *self) {
    PyMem_Free(self->keys);
    PyMem_Free(self->offset);
    PyMem_Free(self->slots);
    PyMem_Free(self->avail.at);
    PyMem_Free(self->must.at);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int IdIndex_init(IdIndex *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"ids", NULL};
    PyObject *ids;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:IdIndex", kwlist, &ids)) {
        return -1;
    }
    if (self->slots != NULL) {
        PyErr_SetString(PyExc_TypeError, "IdIndex is initialised once");
        return -1;
    }
    PyObject *seq = PySequence_Fast(ids, "ids must be a sequence of str");
    if (seq == NULL) {
        return -1;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n >= INT32_MAX / 2) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "too many IDs");
        return -1;
    }
    PyObject **items = PySequence_Fast_ITEMS(seq);
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t len;
        if (!PyUnicode_Check(items[i]) || PyUnicode_AsUTF8AndSize(items[i], &len) == NULL) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_TypeError, "ids must be a sequence of str");
            }
            Py_DECREF(seq);
            return -1;
        }
        total += len;
    }
    uint64_t n_slots = 8;
    while (n_slots < 2 * (uint64_t)n) {
        n_slots <<= 1;
    }
    self->keys = PyMem_Malloc(total > 0 ? (size_t)total : 1);
    self->offset = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(n + 1));
    self->slots = PyMem_Calloc((size_t)n_slots, sizeof(int32_t));
    if (self->keys == NULL || self->offset == NULL || self->slots == NULL) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    self->mask = n_slots - 1;
    Py_ssize_t at = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t len;
        const char *s = PyUnicode_AsUTF8AndSize(items[i], &len);
        if (find(self, (const unsigned char *)s, len) >= 0) {
            PyErr_Format(PyExc_ValueError, "duplicate device ID %R", items[i]);
            Py_DECREF(seq);
            return -1;
        }
        memcpy(self->keys + at, s, (size_t)len);
        self->offset[i] = at;
        self->offset[i + 1] = at + len;
        at += len;
        uint64_t slot = hash_id((const unsigned char *)s, len) & self->mask;
        while (self->slots[slot] != 0) {
            slot = (slot + 1) & self->mask;
        }
        self->slots[slot] = (int32_t)(i + 1);
    }
    Py_DECREF(seq);
    return 0;
}

/* A varint at *p (before end) into *out: 0 if truncated, over five bytes (no field here needs more) or not in
 * its shortest form (protobuf reads those too; they are left to it). */
static int varint(const unsigned char **p, const unsigned char *end, uint64_t *out) {
    uint64_t v = 0;
    for (int shift = 0; shift < 35 && *p < end; shift += 7) {
        unsigned char b = *(*p)++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            if (b == 0 && shift > 0) {
                return 0;
            }
            *out = v;
            return 1;
        }
    }
    return 0;
}

/* A length-delimited field's payload: [*p, *p + *len), which must end by end. */
static int delimited(const unsigned char **p, const unsigned char *end, Py_ssize_t *len) {
    uint64_t v;
    if (!varint(p, end, &v) || v > (uint64_t)(end - *p)) {
        return 0;
    }
    *len = (Py_ssize_t)v;
    return 1;
}

/* One ContainerPreferredAllocationRequest, as (available, must_include, allocation_size); NULL with no error
 * set when it is outside the plain encoding. */
static PyObject *container(IdIndex *self, const unsigned char *p, const unsigned char *end) {
    self->avail.len = self->must.len = 0;
    int64_t size = 0;
    while (p < end) {
        unsigned char tag = *p++;
        if (tag == 0x0a || tag == 0x12) { /* available_deviceIDs = 1, must_include_deviceIDs = 2: strings */
            Py_ssize_t len;
            if (!delimited(&p, end, &len)) {
                return NULL;
            }
            int64_t i = find(self, p, len);
            if (i < 0) {
                return NULL;
            }
            p += len;
            if (!push(tag == 0x0a ? &self->avail : &self->must, i)) {
                return NULL;
            }
        } else if (tag == 0x18) { /* allocation_size = 3: int32; the last one counts, as in protobuf */
            uint64_t v;
            if (!varint(&p, end, &v) || v > INT32_MAX) {
                return NULL;
            }
            size = (int64_t)v;
        } else {
            return NULL;
        }
    }
    /* An array never grown has no buffer yet: "" then, as y# would make None of NULL. */
    const char *avail = self->avail.at ? (const char *)self->avail.at : "";
    const char *must = self->must.at ? (const char *)self->must.at : "";
    return Py_BuildValue("(y#y#L)", avail, (Py_ssize_t)sizeof(int64_t) * self->avail.len, must,
                         (Py_ssize_t)sizeof(int64_t) * self->must.len, (long long)size);
}

PyDoc_STRVAR(decode_preferred_doc,
             "decode_preferred(raw, max_containers)\n--\n\n"
             "A PreferredAllocationRequest's containers as (available, must_include, allocation_size) tuples, the\n"
             "first two native int64 indices as bytes; None when the bytes are not the plain encoding of a request\n"
             "of at most max_containers containers naming advertised IDs only (parse those with protobuf).");

static PyObject *IdIndex_decode_preferred(IdIndex *self, PyObject *args) {
    Py_buffer raw;
    Py_ssize_t max_containers;
    if (self->slots == NULL) {
        PyErr_SetString(PyExc_TypeError, "IdIndex was not initialised");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "y*n:decode_preferred", &raw, &max_containers)) {
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        PyBuffer_Release(&raw);
        return NULL;
    }
    const unsigned char *p = raw.buf;
    const unsigned char *end = p + raw.len;
    while (p < end) {
        Py_ssize_t len;
        if (*p++ != 0x0a || !delimited(&p, end, &len) || PyList_GET_SIZE(out) >= max_containers) {
            goto fallback; /* container_requests = 1 is the only field */
        }
        PyObject *one = container(self, p, p + len);
        if (one == NULL) {
            goto fallback;
        }
        int failed = PyList_Append(out, one);
        Py_DECREF(one);
        if (failed) {
            goto error;
        }
        p += len;
    }
    PyBuffer_Release(&raw);
    return out;
fallback:
    if (PyErr_Occurred()) {
        goto error;
    }
    PyBuffer_Release(&raw);
    Py_DECREF(out);
    Py_RETURN_NONE;
error:
    PyBuffer_Release(&raw);
    Py_DECREF(out);
    return NULL;
}

static PyMethodDef IdIndex_methods[] = {
    {"decode_preferred", (PyCFunction)IdIndex_decode_preferred, METH_VARARGS, decode_preferred_doc},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject IdIndexType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "snnrm.kubelet._id_index.IdIndex",
    .tp_doc = PyDoc_STR("IdIndex(ids)\n--\n\nIndices of device IDs (distinct str), looked up from wire bytes."),
    .tp_basicsize = sizeof(IdIndex),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)IdIndex_init,
    .tp_dealloc = (destructor)IdIndex_dealloc,
    .tp_methods = IdIndex_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "snnrm.kubelet._id_index",
    .m_doc = "Device IDs to indices from GetPreferredAllocation's wire bytes (see snnrm/kubelet/id_index.py).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__id_index(void) {
    if (PyType_Ready(&IdIndexType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    Py_INCREF(&IdIndexType);
    if (PyModule_AddObject(m, "IdIndex", (PyObject *)&IdIndexType) < 0) {
        Py_DECREF(&IdIndexType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
