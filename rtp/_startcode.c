/* rtp._startcode: the NAL start code search of the compiled per-frame demuxer.
 *
 * find(data, start) -> int: the index of the first 00 00 01 in `data` at or after `start`, or
 * -1; what data.find(b"\x00\x00\x01", start) gives, for bytes and for any other object with
 * the buffer protocol (read as bytes). `start` is an int (or has __index__) and is clamped as
 * bytes.find clamps it: a negative start counts from the end (-1 is the last byte), and one
 * still below 0 is 0; a start beyond the end finds nothing; ints too large for a Py_ssize_t
 * are clamped to its range first.
 *
 * tools/build_native.py builds it with the mypyc modules, and only the compiled
 * rtp/psframe.py uses it; the pure Python uses a compiled regular expression that gives the
 * same results (rtp.psframe._search_start). The build's SHA-256 covers this file, so that
 * `sensing_node.transport.native` uses none of the build once it changes.
 *
 * The search: memchr for the 0x01 byte, then a look at the two bytes before it. In a video
 * payload a 0x01 byte comes about every 250 bytes, so memchr (vectorised in the C library)
 * runs over long stretches. On H.264 frames of 20 and 40 KB (720p at 4 Mbit/s, 1080p at 8),
 * each searched while in cache as in the node (its payloads were just joined), this was the
 * fastest of: a word-at-a-time test for zero bytes (about 5x slower), a scalar loop stepping
 * 3 bytes (3 to 5x), memchr for zero bytes (1.4x), and hand-written SSE2 and AVX2 loops
 * testing 32 or 64 bytes a step for 00 00 01 (as fast at best, up to 2x slower; an AVX2 loop
 * won only on frames out of cache).
 * The GIL is held: a 20 KB frame takes about a microsecond.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* The first 00 00 01 at or after `start` (0 <= start), or -1. */
static Py_ssize_t
find_start_code(const unsigned char *p, Py_ssize_t n, Py_ssize_t start)
{
    /* i: where the 0x01 byte would be; from start + 2, so that a match begins at or after
       start (its zero bytes are never taken from before start) */
    Py_ssize_t i = start + 2;
    while (i < n) {
        const unsigned char *one = memchr(p + i, 1, (size_t)(n - i));
        if (one == NULL) {
            return -1;
        }
        i = one - p;
        if (p[i - 1] == 0 && p[i - 2] == 0) {
            return i - 2;
        }
        i++;
    }
    return -1;
}

PyDoc_STRVAR(find_doc,
"find($module, data, start, /)\n"
"--\n"
"\n"
"The index of the first 00 00 01 in data at or after start, or -1: as\n"
"data.find(b\"\\x00\\x00\\x01\", start), start clamped the same way (negative counts\n"
"from the end). data is bytes or any object with the buffer protocol.");

static PyObject *
find(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "find() takes exactly 2 arguments (%zd given)", nargs);
        return NULL;
    }
    /* NULL: an int beyond Py_ssize_t is clamped, not an error, as in bytes.find */
    Py_ssize_t start = PyNumber_AsSsize_t(args[1], NULL);
    if (start == -1 && PyErr_Occurred()) {
        return NULL;
    }
    PyObject *data = args[0];
    Py_ssize_t found;
    if (PyBytes_CheckExact(data)) {
        Py_ssize_t n = PyBytes_GET_SIZE(data);
        if (start < 0) {
            start = start + n < 0 ? 0 : start + n;
        }
        found = start > n - 3 ? -1
            : find_start_code((const unsigned char *)PyBytes_AS_STRING(data), n, start);
    }
    else {
        Py_buffer view;
        if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
            return NULL;
        }
        Py_ssize_t n = view.len;
        if (start < 0) {
            start = start + n < 0 ? 0 : start + n;
        }
        found = start > n - 3 ? -1
            : find_start_code((const unsigned char *)view.buf, n, start);
        PyBuffer_Release(&view);
    }
    return PyLong_FromSsize_t(found);
}

static PyMethodDef startcode_methods[] = {
    {"find", (PyCFunction)(void (*)(void))find, METH_FASTCALL, find_doc},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot startcode_slots[] = {
#ifdef Py_mod_multiple_interpreters
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, NULL},
};

PyDoc_STRVAR(startcode_doc,
"The NAL start code search of the compiled per-frame demuxer (rtp/_startcode.c).");

static struct PyModuleDef startcode_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "rtp._startcode",
    .m_doc = startcode_doc,
    .m_size = 0,
    .m_methods = startcode_methods,
    .m_slots = startcode_slots,
};

PyMODINIT_FUNC
PyInit__startcode(void)
{
    return PyModuleDef_Init(&startcode_module);
}
