/* sensing_node.transport._drain: read the datagrams queued on a UDP socket connected to its
 * source, many per system call (recvmmsg), and hand each to a Python callable.
 *
 * drain(fd, receive, limit) -> int: reads up to `limit` (at most BATCH) datagrams from the
 * non-blocking socket `fd` in one recvmmsg call, copies them one after another into one new
 * bytes object `batch`, then calls receive(batch, start, end) for each, the datagram being
 * batch[start:end]; returns how many were read (0: the queue was empty, or the socket
 * reported an error, such as an ICMP error: what the Python loop it replaces does by
 * catching OSError). One object for all: a datagram costs the callback a view of it, not an
 * allocation of its own (1,400 bytes are past what Python's small-object allocator serves,
 * so each would be a malloc and a free). The descriptor is not used after the first callback,
 * which may close the socket; what is left waits for the next call. The socket is connected:
 * the kernel delivered only its source's datagrams. Should `receive` raise, the other
 * datagrams already read are still handed over, and the first exception is raised at the end.
 *
 * Datagrams are read into one process-wide set of BATCH slots of 64 KiB (any datagram fits
 * whole: no truncation; only the pages a datagram touches become resident) and copied out
 * before the first callback. The GIL is held from the system call to the last copy (the
 * socket is non-blocking and the call is short), so the slots serve one caller at a time.
 */

#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <string.h>
#include <sys/socket.h>

#define BATCH 64
#define SLOT 65536

static unsigned char *slots;
static struct iovec iov[BATCH];
static struct mmsghdr msgs[BATCH];

static int
ensure_slots(void)
{
    if (slots != NULL) {
        return 0;
    }
    slots = PyMem_RawMalloc((size_t)BATCH * SLOT);
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = slots + (size_t)i * SLOT;
        iov[i].iov_len = SLOT;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    return 0;
}

PyDoc_STRVAR(drain_doc,
"drain($module, fd, receive, limit, /)\n"
"--\n"
"\n"
"Read up to limit (at most 64) datagrams queued on the connected, non-blocking UDP socket\n"
"fd in one system call into one bytes object, then call receive(batch, start, end) for\n"
"each (the datagram is batch[start:end]); return how many.");

static PyObject *
drain(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "drain() takes exactly 3 arguments (%zd given)", nargs);
        return NULL;
    }
    long fd = PyLong_AsLong(args[0]);
    if (fd == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (fd < 0 || fd > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "drain(): not a file descriptor");
        return NULL;
    }
    PyObject *receive = args[1];
    Py_ssize_t limit = PyLong_AsSsize_t(args[2]);
    if (limit == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (ensure_slots() < 0) {
        return NULL;
    }
    PyObject *exc_type = NULL, *exc_value = NULL, *exc_tb = NULL;
    /* One system call, then the callbacks: the descriptor is never used after a callback,
       which may close the socket (and another may then get the number). */
    unsigned int want = limit < 1 ? 0 : limit < BATCH ? (unsigned int)limit : BATCH;
    for (unsigned int i = 0; i < want; i++) {
        msgs[i].msg_hdr.msg_name = NULL;
        msgs[i].msg_hdr.msg_namelen = 0;
        msgs[i].msg_hdr.msg_control = NULL;
        msgs[i].msg_hdr.msg_controllen = 0;
        msgs[i].msg_hdr.msg_flags = 0;
    }
    int got = want ? recvmmsg((int)fd, msgs, want, MSG_DONTWAIT, NULL) : 0;
    if (got < 0) {
        got = 0;  /* empty (EAGAIN), or an error of the socket: as the Python loop */
    }
    if (got == 0) {
        return PyLong_FromLong(0);
    }
    /* Every datagram out of the slots first, into one object: a callback that lets another
       thread run (or reads another socket) finds the slots free for it. */
    Py_ssize_t total = 0;
    for (int i = 0; i < got; i++) {
        total += (Py_ssize_t)msgs[i].msg_len;
    }
    PyObject *batch = PyBytes_FromStringAndSize(NULL, total);
    if (batch == NULL) {
        return NULL;  /* MemoryError; the datagrams are lost, as a full queue's would be */
    }
    char *out = PyBytes_AS_STRING(batch);
    Py_ssize_t ends[BATCH];
    Py_ssize_t at = 0;
    for (int i = 0; i < got; i++) {
        memcpy(out + at, iov[i].iov_base, msgs[i].msg_len);
        at += (Py_ssize_t)msgs[i].msg_len;
        ends[i] = at;
    }
    PyObject *start = PyLong_FromLong(0);
    for (int i = 0; i < got && start != NULL; i++) {
        PyObject *end = PyLong_FromSsize_t(ends[i]);
        if (end == NULL) {
            break;
        }
        PyObject *call_args[3] = {batch, start, end};
        PyObject *result = PyObject_Vectorcall(receive, call_args, 3, NULL);
        Py_DECREF(start);
        start = end;
        if (result == NULL) {
            if (exc_type == NULL) {
                PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
            }
            else {
                PyErr_Clear();
            }
        }
        else {
            Py_DECREF(result);
        }
    }
    Py_XDECREF(start);
    Py_DECREF(batch);
    if (exc_type == NULL && PyErr_Occurred()) {
        PyErr_Fetch(&exc_type, &exc_value, &exc_tb);  /* an int not made: MemoryError */
    }
    Py_ssize_t done = got;
    if (exc_type != NULL) {
        PyErr_Restore(exc_type, exc_value, exc_tb);
        return NULL;
    }
    return PyLong_FromSsize_t(done);
}

static PyMethodDef drain_methods[] = {
    {"drain", (PyCFunction)(void (*)(void))drain, METH_FASTCALL, drain_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(module_doc,
"Read the datagrams of a connected UDP socket many per system call "
"(sensing_node/transport/_drain.c).");

static struct PyModuleDef drain_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "sensing_node.transport._drain",
    .m_doc = module_doc,
    .m_size = -1,
    .m_methods = drain_methods,
};

PyMODINIT_FUNC
PyInit__drain(void)
{
    return PyModule_Create(&drain_module);
}
