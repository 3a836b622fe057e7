/* The RTP shell's batch sender: one tick's packets sent by a thread of its own, outside the interpreter lock.

Built by tools/build_rtp.py into build/rtp/ and loaded by ivr/transport/rtpbatch.py only while the build matches
this file's SHA-256; without it the shell sends with one socket.sendto per packet (the same bytes, in the same
order).

Theory of operation. A Sender holds three batches: the one the event loop fills during a tick (add), the one
its threads are sending, and at most one flushed batch waiting for them. flush() hands the filled batch
over without waiting: when a flushed batch is already waiting, the new packets are appended to it (the shell
flushes each part of a tick, so the thread may be a part behind). Only when the waiting batch already holds
MAX_BEHIND packets (the thread is many ticks behind) it waits, without the interpreter lock. With
Sender(threads=N), N threads send each batch together, each the packets whose descriptor modulo N is its own
index: a stream's socket always goes to the same thread, so its packets keep their order, and a batch counts as
sent when every thread has sent its share (the next one starts then).

A sending thread never touches a Python object, so it never needs the interpreter lock: while it makes the
kernel calls (one sendto(2) per packet, each call has its own socket), the event loop runs SIP on another core.
add() copies the packet and parses the numeric address into a sockaddr at once, so nothing the thread reads
belongs to Python. Batches are numbered as they are flushed (flushed) and counted as they are sent (done): the
shell keeps a closed stream's socket open until done reaches the number flushed when it closed, so the thread
never sends from a closed (or reused) descriptor. A packet that cannot be sent (EAGAIN, unreachable) is a lost
frame, as with socket.sendto: it is counted in failed and the others go on. */

#define _GNU_SOURCE /* pthread_setname_np */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#define SENDER_THREAD "rtp-send"
#define MAX_THREADS 8
#define MAX_BEHIND 65536 /* packets waiting for the thread before a flush waits for it instead of appending */

typedef struct {
    int fd;
    socklen_t addr_len;
    struct sockaddr_storage addr;
    size_t offset; /* of the packet in the batch's data */
    size_t size;
} Entry;

typedef struct {
    Entry *entries;
    size_t count, capacity;
    char *data;
    size_t used, room;
    unsigned long long flushes; /* flushes whose packets it holds (appended ones included) */
} Batch;

typedef struct Sender Sender;

typedef struct {
    Sender *owner;
    int index; /* sends the packets whose descriptor % threads is this */
    pthread_t thread;
} Worker;

struct Sender {
    PyObject_HEAD
    Batch filling; /* the event loop's, under the interpreter lock */
    Batch sending; /* the thread's while busy */
    Batch queued;  /* flushed, waiting for the thread (count 0: none) */
    pthread_mutex_t mutex;
    pthread_cond_t work;
    pthread_cond_t idle;
    Worker workers[MAX_THREADS];
    int threads; /* sending threads: each batch is split among them by descriptor, so a stream keeps its order */
    int started;
    int stopping;
    int busy;
    unsigned long long generation;    /* batches put to sending so far: each thread sends its share once */
    int remaining;                    /* threads still sending their share of the batch in sending */
    unsigned long long flushed, done; /* batches handed to the threads, and sent */
    unsigned long long waits;         /* flushes that had to wait for the threads */
    unsigned long long sent, failed;
    int last_errno;
};

static void batch_free(Batch *b) {
    PyMem_RawFree(b->entries);
    PyMem_RawFree(b->data);
    memset(b, 0, sizeof(*b));
}

/* The batch in sending is ready for every thread (called with the mutex held). */
static void start_batch(Sender *self) {
    self->busy = 1;
    self->generation++;
    self->remaining = self->threads;
    pthread_cond_broadcast(&self->work);
}

static void *sender_main(void *arg) {
    Worker *w = (Worker *)arg;
    Sender *self = w->owner;
    pthread_setname_np(pthread_self(), SENDER_THREAD); /* what top -H and the media benchmark see */
    unsigned long long seen = 0;                     /* the last batch this thread sent its share of */
    pthread_mutex_lock(&self->mutex);
    for (;;) {
        /* a batch whose share is still to send, or (stopping) nothing left to send at all */
        while (!(self->busy && self->generation != seen) && !(self->stopping && !self->busy))
            pthread_cond_wait(&self->work, &self->mutex);
        if (!(self->busy && self->generation != seen))
            break;
        seen = self->generation;
        int threads = self->threads;
        pthread_mutex_unlock(&self->mutex);
        Batch *b = &self->sending;
        unsigned long long sent = 0, failed = 0;
        int last_errno = 0;
        for (size_t i = 0; i < b->count; i++) {
            Entry *e = &b->entries[i];
            if (threads > 1 && e->fd % threads != w->index)
                continue; /* another thread's: each descriptor always goes to the same thread, in order */
            ssize_t n;
            do {
                n = sendto(e->fd, b->data + e->offset, e->size, MSG_DONTWAIT, (struct sockaddr *)&e->addr,
                           e->addr_len);
            } while (n < 0 && errno == EINTR);
            if (n < 0) {
                failed++;
                last_errno = errno;
            } else {
                sent++;
            }
        }
        pthread_mutex_lock(&self->mutex);
        self->sent += sent;
        self->failed += failed;
        if (failed)
            self->last_errno = last_errno;
        if (--self->remaining > 0)
            continue; /* the others are still sending their shares of this batch */
        self->done += b->flushes;
        b->count = 0;
        b->used = 0;
        b->flushes = 0;
        if (self->queued.count) {
            Batch next = self->queued;
            self->queued = self->sending; /* empty: its buffers are reused */
            self->sending = next;
            start_batch(self);
        } else {
            self->busy = 0;
            pthread_cond_broadcast(&self->work); /* a stopping sender's threads may go now */
        }
        pthread_cond_broadcast(&self->idle);
    }
    pthread_mutex_unlock(&self->mutex);
    return NULL;
}

/* Until the thread has sent everything (all) or no flushed batch waits for it; called with the mutex held, it
 returns with it held, and lets the interpreter lock go only when there is a wait. */
static void wait_locked(Sender *self, int all) {
    if (all ? self->busy == 0 : self->queued.count == 0)
        return;
    self->waits++;
    pthread_mutex_unlock(&self->mutex);
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->mutex);
    while (all ? self->busy != 0 : self->queued.count != 0)
        pthread_cond_wait(&self->idle, &self->mutex);
    pthread_mutex_unlock(&self->mutex);
    Py_END_ALLOW_THREADS
    pthread_mutex_lock(&self->mutex);
}

static void wait_idle(Sender *self) {
    pthread_mutex_lock(&self->mutex);
    wait_locked(self, 1);
    pthread_mutex_unlock(&self->mutex);
}

static void stop_thread(Sender *self) {
    if (!self->started)
        return;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->mutex);
    self->stopping = 1;
    pthread_cond_broadcast(&self->work);
    pthread_mutex_unlock(&self->mutex);
    for (int i = 0; i < self->started; i++)
        pthread_join(self->workers[i].thread, NULL);
    Py_END_ALLOW_THREADS
    self->started = 0;
}

static PyObject *Sender_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"threads", NULL};
    int threads = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$i:Sender", kwlist, &threads))
        return NULL;
    if (threads < 1 || threads > MAX_THREADS) {
        PyErr_Format(PyExc_ValueError, "threads must be 1 to %d", MAX_THREADS);
        return NULL;
    }
    Sender *self = (Sender *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->threads = threads;
    pthread_mutex_init(&self->mutex, NULL);
    pthread_cond_init(&self->work, NULL);
    pthread_cond_init(&self->idle, NULL);
    return (PyObject *)self;
}

static void Sender_dealloc(Sender *self) {
    stop_thread(self);
    batch_free(&self->filling);
    batch_free(&self->sending);
    batch_free(&self->queued);
    pthread_mutex_destroy(&self->mutex);
    pthread_cond_destroy(&self->work);
    pthread_cond_destroy(&self->idle);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* A numeric host and a port into a sockaddr; 0 when the host is not a numeric address. */
static int parse_address(PyObject *address, Entry *e) {
    if (!PyTuple_Check(address) || PyTuple_GET_SIZE(address) < 2) {
        PyErr_SetString(PyExc_TypeError, "address must be a (host, port) tuple");
        return -1;
    }
    Py_ssize_t host_len;
    const char *host = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(address, 0), &host_len);
    if (host == NULL)
        return -1;
    if (strlen(host) != (size_t)host_len) {
        PyErr_SetString(PyExc_ValueError, "embedded null character in the host");
        return -1;
    }
    long port = PyLong_AsLong(PyTuple_GET_ITEM(address, 1));
    if (port == -1 && PyErr_Occurred())
        return -1;
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_OverflowError, "port must be 0-65535");
        return -1;
    }
    memset(&e->addr, 0, sizeof(e->addr));
    if (memchr(host, ':', (size_t)host_len) == NULL) {
        struct sockaddr_in *in = (struct sockaddr_in *)&e->addr;
        if (inet_pton(AF_INET, host, &in->sin_addr) != 1)
            return 0;
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)port);
        e->addr_len = sizeof(*in);
    } else {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&e->addr;
        if (inet_pton(AF_INET6, host, &in6->sin6_addr) != 1)
            return 0; /* a scope (fe80::1%eth0) or a name: socket.sendto knows those */
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        e->addr_len = sizeof(*in6);
    }
    return 1;
}

static int batch_reserve_n(Batch *b, size_t entries_needed, size_t size) {
    if (b->count + entries_needed > b->capacity) {
        size_t capacity = b->capacity ? 2 * b->capacity : 1024;
        while (capacity < b->count + entries_needed)
            capacity *= 2;
        Entry *entries = PyMem_RawRealloc(b->entries, capacity * sizeof(Entry));
        if (entries == NULL)
            return -1;
        b->entries = entries;
        b->capacity = capacity;
    }
    if (b->used + size > b->room) {
        size_t room = b->room ? 2 * b->room : 256 * 1024;
        while (room < b->used + size)
            room *= 2;
        char *data = PyMem_RawRealloc(b->data, room);
        if (data == NULL)
            return -1;
        b->data = data;
        b->room = room;
    }
    return 0;
}

static int batch_reserve(Batch *b, size_t size) { return batch_reserve_n(b, 1, size); }

/* src's packets after dst's (dst: the batch waiting for the thread, under the mutex); -1 when out of memory. */
static int batch_append(Batch *dst, Batch *src) {
    if (batch_reserve_n(dst, src->count, src->used) < 0)
        return -1;
    for (size_t i = 0; i < src->count; i++) {
        Entry *e = &dst->entries[dst->count + i];
        *e = src->entries[i];
        e->offset += dst->used;
    }
    memcpy(dst->data + dst->used, src->data, src->used);
    dst->count += src->count;
    dst->used += src->used;
    dst->flushes += 1;
    src->count = 0;
    src->used = 0;
    return 0;
}

PyDoc_STRVAR(add_doc, "add(fd, packet, address) -> bool\n\n"
                      "Queue one packet for the next flush(). False (nothing queued) when the address is not a\n"
                      "numeric IPv4 or IPv6 host: the caller sends that one itself.");

static PyObject *Sender_add(Sender *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "add(fd, packet, address) takes 3 arguments");
        return NULL;
    }
    long fd = PyLong_AsLong(args[0]);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    if (fd < 0 || fd > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "fd must be a file descriptor");
        return NULL;
    }
    if (!PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "packet must be bytes");
        return NULL;
    }
    Batch *b = &self->filling;
    size_t size = (size_t)PyBytes_GET_SIZE(args[1]);
    if (batch_reserve(b, size) < 0)
        return PyErr_NoMemory();
    Entry *e = &b->entries[b->count];
    int parsed = parse_address(args[2], e);
    if (parsed < 0)
        return NULL;
    if (parsed == 0)
        Py_RETURN_FALSE;
    e->fd = (int)fd;
    e->offset = b->used;
    e->size = size;
    memcpy(b->data + b->used, PyBytes_AS_STRING(args[1]), size);
    b->used += size;
    b->count++;
    Py_RETURN_TRUE;
}

PyDoc_STRVAR(flush_doc, "flush() -> int\n\n"
                        "Hand the packets added since the last flush to the sending thread as the next batch\n"
                        "(appended to an earlier flushed batch that still waits for it; waiting only when that one\n"
                        "holds MAX_BEHIND packets already); returns how many.");

static PyObject *Sender_flush(Sender *self, PyObject *Py_UNUSED(ignored)) {
    size_t count = self->filling.count;
    if (count == 0)
        return PyLong_FromLong(0);
    if (!self->started) {
        int err = 0;
        pthread_mutex_lock(&self->mutex);
        for (int i = 0; i < self->threads; i++) {
            self->workers[i].owner = self;
            self->workers[i].index = i;
            err = pthread_create(&self->workers[i].thread, NULL, sender_main, &self->workers[i]);
            if (err != 0)
                break;
            self->started++;
        }
        if (self->started)
            self->threads = self->started; /* fewer than asked: the batches are split among those running */
        pthread_mutex_unlock(&self->mutex);
        if (!self->started) {
            errno = err;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
    }
    pthread_mutex_lock(&self->mutex);
    self->filling.flushes = 1;
    if (self->busy && self->queued.count && self->queued.count < MAX_BEHIND) {
        /* a part behind: the packets join the batch waiting for the thread, in order */
        int appended = batch_append(&self->queued, &self->filling);
        if (appended == 0) {
            self->flushed++;
            pthread_mutex_unlock(&self->mutex);
            return PyLong_FromSize_t(count);
        } /* out of memory: wait for the thread instead */
    }
    Batch empty;
    if (!self->busy) {
        empty = self->sending;
        self->sending = self->filling;
        start_batch(self);
    } else {
        wait_locked(self, 0); /* far behind: the tick waits for the thread */
        if (!self->busy) {    /* it finished everything meanwhile */
            empty = self->sending;
            self->sending = self->filling;
            start_batch(self);
        } else {
            empty = self->queued;
            self->queued = self->filling;
        }
    }
    self->filling = empty; /* emptied by the thread: its buffers are reused */
    self->flushed++;
    pthread_mutex_unlock(&self->mutex);
    return PyLong_FromSize_t(count);
}

PyDoc_STRVAR(wait_doc, "wait() -> None\n\nReturn once every packet flushed so far has been sent.");

static PyObject *Sender_wait(Sender *self, PyObject *Py_UNUSED(ignored)) {
    wait_idle(self);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(discard_doc, "discard() -> int\n\nDrop the packets queued since the last flush(); returns how many.");

static PyObject *Sender_discard(Sender *self, PyObject *Py_UNUSED(ignored)) {
    size_t count = self->filling.count;
    self->filling.count = 0;
    self->filling.used = 0;
    return PyLong_FromSize_t(count);
}

PyDoc_STRVAR(close_doc, "close() -> None\n\nSend what was flushed, then stop the thread (a later flush starts it again).");

static PyObject *Sender_close(Sender *self, PyObject *Py_UNUSED(ignored)) {
    stop_thread(self);
    pthread_mutex_lock(&self->mutex);
    self->stopping = 0;
    pthread_mutex_unlock(&self->mutex);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(counts_doc, "counts() -> (sent, failed, waits, last_errno)\n\n"
                         "Packets the thread sent and could not send, flushes that waited for it, the last error.");

static PyObject *Sender_counts(Sender *self, PyObject *Py_UNUSED(ignored)) {
    pthread_mutex_lock(&self->mutex);
    unsigned long long sent = self->sent, failed = self->failed, waits = self->waits;
    int last_errno = self->last_errno;
    pthread_mutex_unlock(&self->mutex);
    return Py_BuildValue("(KKKi)", sent, failed, waits, last_errno);
}

static PyObject *Sender_flushed(Sender *self, void *Py_UNUSED(closure)) {
    pthread_mutex_lock(&self->mutex);
    unsigned long long n = self->flushed;
    pthread_mutex_unlock(&self->mutex);
    return PyLong_FromUnsignedLongLong(n);
}

static PyObject *Sender_done(Sender *self, void *Py_UNUSED(closure)) {
    pthread_mutex_lock(&self->mutex);
    unsigned long long n = self->done;
    pthread_mutex_unlock(&self->mutex);
    return PyLong_FromUnsignedLongLong(n);
}

static PyObject *Sender_threads(Sender *self, void *Py_UNUSED(closure)) {
    pthread_mutex_lock(&self->mutex);
    int n = self->threads;
    pthread_mutex_unlock(&self->mutex);
    return PyLong_FromLong(n);
}

static PyObject *Sender_queued(Sender *self, void *Py_UNUSED(closure)) {
    return PyLong_FromSize_t(self->filling.count);
}

static PyMethodDef Sender_methods[] = {
    {"add", (PyCFunction)(void (*)(void))Sender_add, METH_FASTCALL, add_doc},
    {"flush", (PyCFunction)Sender_flush, METH_NOARGS, flush_doc},
    {"wait", (PyCFunction)Sender_wait, METH_NOARGS, wait_doc},
    {"discard", (PyCFunction)Sender_discard, METH_NOARGS, discard_doc},
    {"close", (PyCFunction)Sender_close, METH_NOARGS, close_doc},
    {"counts", (PyCFunction)Sender_counts, METH_NOARGS, counts_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Sender_getset[] = {
    {"queued", (getter)Sender_queued, NULL, "packets added since the last flush()", NULL},
    {"threads", (getter)Sender_threads, NULL, "sending threads (fewer than asked if one could not start)", NULL},
    {"flushed", (getter)Sender_flushed, NULL, "batches handed to the thread so far", NULL},
    {"done", (getter)Sender_done, NULL, "batches the thread has sent so far (the first ones flushed)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject SenderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "_frontdesk_rtpsend.Sender",
    .tp_doc = PyDoc_STR("Sends each tick's RTP packets from a thread of its own, outside the interpreter lock."),
    .tp_basicsize = sizeof(Sender),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Sender_new,
    .tp_dealloc = (destructor)Sender_dealloc,
    .tp_methods = Sender_methods,
    .tp_getset = Sender_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_frontdesk_rtpsend",
    .m_doc = "The RTP shell's batch sender (ivr/transport/rtpbatch.py).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__frontdesk_rtpsend(void) {
    if (PyType_Ready(&SenderType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&SenderType);
    if (PyModule_AddObject(m, "Sender", (PyObject *)&SenderType) < 0) {
        Py_DECREF(&SenderType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
