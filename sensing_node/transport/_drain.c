/* sensing_node.transport._drain: read the datagrams queued on a UDP socket connected to its
 * source, many per system call (recvmmsg), and hand each to a Python callable.
 *
 * drain(fd, receive, source, limit) -> int: reads up to `limit` (at most BATCH) datagrams
 * from the non-blocking socket `fd` in one recvmmsg call, then calls receive(data, source) for
 * each, `data` a new bytes object holding the whole datagram; returns how many were read
 * (0: the queue was empty, or the socket reported an error, such as an ICMP error: what the
 * Python loop it replaces does by catching OSError). The descriptor is not used after the
 * first callback, which may close the socket; what is left waits for the next call. `source` is passed
 * as it is: the socket is connected, so the kernel delivered only that sender's datagrams.
 * Should `receive` raise, the other datagrams already read are still handed over, and the
 * first exception is raised at the end.
 *
 * Datagrams are read into one process-wide set of BATCH slots of 64 KiB (any datagram fits
 * whole: no truncation; only the pages a datagram touches become resident) and copied out
 * into their bytes objects before the first callback. The GIL is held from the system call
 * to the last copy (the socket is non-blocking and the call is short), so the slots serve
 * one caller at a time.
 */

#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
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
"drain($module, fd, receive, source, limit, /)\n"
"--\n"
"\n"
"Read up to limit (at most 64) datagrams queued on the connected, non-blocking UDP socket\n"
"fd in one system call, then call receive(data, source) for each; return how many.");

static PyObject *
drain(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "drain() takes exactly 4 arguments (%zd given)", nargs);
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
    PyObject *source = args[2];
    Py_ssize_t limit = PyLong_AsSsize_t(args[3]);
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
    /* Every datagram out of the slots first: a callback that lets another thread run (or
       reads another socket) finds the slots free for it. */
    PyObject *datas[BATCH];
    for (int i = 0; i < got; i++) {
        datas[i] = PyBytes_FromStringAndSize(
            (const char *)iov[i].iov_base, (Py_ssize_t)msgs[i].msg_len);
        if (datas[i] == NULL && exc_type == NULL) {
            PyErr_Fetch(&exc_type, &exc_value, &exc_tb);  /* MemoryError, raised at the end */
        }
    }
    for (int i = 0; i < got; i++) {
        if (datas[i] == NULL) {
            continue;
        }
        PyObject *call_args[2] = {datas[i], source};
        PyObject *result = PyObject_Vectorcall(receive, call_args, 2, NULL);
        Py_DECREF(datas[i]);
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
