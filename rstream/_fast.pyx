# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled twin of `rstream._fast_py`: stream-id arithmetic and reply decoding.

Same names, results and exceptions (type and message) as the pure-Python reference, which is
the specification; `tests/test_hotpath_parity.py` holds the two together. Import these from
`rstream._hotpath`, which picks this module when it is built.
"""
from collections.abc import Mapping

cimport cython

from gc import disable as _gc_disable, enable as _gc_enable, isenabled as _gc_isenabled

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_Copy, PyDict_GetItemWithError, PyDict_SetItem
from cpython.list cimport PyList_GET_SIZE
from cpython.ref cimport Py_INCREF, PyObject
from cpython.unicode cimport PyUnicode_Decode, PyUnicode_DecodeASCII
from libc.stdint cimport uint64_t
from libc.string cimport memcmp, memcpy

from rstream.message import Message

cdef extern from "Python.h":
    void PyObject_GC_UnTrack(void*)
    # Only the fields used here; the real structs are larger.
    ctypedef struct PyMemberDef:
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member
    ctypedef struct _TypeObject "PyTypeObject":
        object (*tp_alloc)(_TypeObject*, Py_ssize_t)
    bint PyType_IS_GC(_TypeObject*)

MAX_ID_PART = 2**64 - 1
cdef uint64_t _MAX_PART = 0xFFFFFFFFFFFFFFFFULL
# Errors repeat the offending entry; a multi-megabyte value must not land in a log line whole.
cdef Py_ssize_t _REPR_LIMIT = 100


cdef bint _parse(object value, uint64_t* ms_out, uint64_t* seq_out):
    """False unless ``value`` is ``<digits>-<digits>`` with both parts below 2**64."""
    cdef const unsigned char* buf = NULL
    cdef Py_ssize_t size, i, digits = 0
    cdef unsigned int ch  # a code point; Py_UCS4 would turn arithmetic into str operations
    cdef uint64_t part = 0, digit
    cdef bint is_bytes = isinstance(value, bytes)
    cdef bint seen_dash = False
    if is_bytes:
        buf = <const unsigned char*>PyBytes_AS_STRING(value)
        size = PyBytes_GET_SIZE(value)
    elif isinstance(value, str):
        size = len(<str>value)
    else:
        return False
    for i in range(size):
        if is_bytes:
            ch = buf[i]
        else:
            ch = (<str>value)[i]
        if ch == 45:  # "-"
            if seen_dash or digits == 0:
                return False
            seen_dash = True
            ms_out[0] = part
            part = 0
            digits = 0
            continue
        digit = ch - 48
        if ch < 48 or digit > 9 or part > (_MAX_PART - digit) // 10:
            return False
        part = part * 10 + digit
        digits += 1
    if not seen_dash or digits == 0:
        return False
    seq_out[0] = part
    return True


cdef int _parse_or_raise(object value, uint64_t* ms, uint64_t* seq) except -1:
    if not _parse(value, ms, seq):
        raise ValueError(f"invalid stream id: {value!r}")
    return 0


def parse_id(value):
    """``"1700000000000-5"`` -> ``(1700000000000, 5)``; anything else raises ValueError."""
    cdef uint64_t ms, seq
    _parse_or_raise(value, &ms, &seq)
    return ms, seq


cdef bint _is_id_part(object part):
    return isinstance(part, int) and not isinstance(part, bool) and 0 <= part <= MAX_ID_PART


def format_id(ms, seq):
    """``(1700000000000, 5)`` -> ``"1700000000000-5"``; the inverse of `parse_id`."""
    if not (_is_id_part(ms) and _is_id_part(seq)):
        raise ValueError(f"invalid stream id parts: ({ms!r}, {seq!r})")
    cdef uint64_t c_ms = ms, c_seq = seq
    return f"{c_ms}-{c_seq}"


def compare_ids(a, b):
    """-1, 0 or 1 as ``a`` is before, equal to or after ``b`` (numeric, not string, order)."""
    cdef uint64_t a_ms, a_seq, b_ms, b_seq
    _parse_or_raise(a, &a_ms, &a_seq)
    _parse_or_raise(b, &b_ms, &b_seq)
    if a_ms != b_ms:
        return -1 if a_ms < b_ms else 1
    if a_seq != b_seq:
        return -1 if a_seq < b_seq else 1
    return 0


def decode_read_reply(reply):
    """XREAD/XREADGROUP reply -> ``[(stream_key, entries), ...]`` (None, RESP2 list or RESP3 map)."""
    if reply is None:
        return []
    if isinstance(reply, dict):
        return list((<dict>reply).items())
    if not isinstance(reply, (list, tuple)):
        raise ValueError(f"malformed read reply: {_short_repr(reply)}")
    cdef list streams = []
    for item in reply:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise ValueError(f"malformed read reply item: {_short_repr(item)}")
        streams.append((item[0], item[1]))
    return streams


# Message is built by allocating it and filling its slots directly: about 30 ns instead of
# about 90 ns for a call through Message.__init__. _check_direct_build() proves at import that
# this gives the same object as the constructor, and turns it off otherwise.
cdef object _Message = Message
cdef Py_ssize_t _OFF_ID, _OFF_STREAM, _OFF_FIELDS, _OFF_ATTEMPT, _OFF_METADATA, _OFF_RETRY
cdef bint _direct_build = False
cdef bint _gc_type = PyType_IS_GC(<_TypeObject*>Message)  # a Message carries the collector's header


cdef inline void _put_slot(object obj, Py_ssize_t offset, object value):
    # The slot is NULL in a fresh object: nothing to release.
    Py_INCREF(value)
    (<PyObject**>((<char*><PyObject*>obj) + offset))[0] = <PyObject*>value


cdef inline object _new_message(object entry_id, object stream, object fields, object attempt):
    if not _direct_build:
        return _Message(entry_id, stream, fields, attempt)
    cdef object message = (<_TypeObject*>_Message).tp_alloc(<_TypeObject*>_Message, 0)
    _put_slot(message, _OFF_ID, entry_id)
    _put_slot(message, _OFF_STREAM, stream)
    _put_slot(message, _OFF_FIELDS, fields)
    _put_slot(message, _OFF_ATTEMPT, attempt)
    _put_slot(message, _OFF_METADATA, None)
    _put_slot(message, _OFF_RETRY, None)
    # Not tracked by the cycle collector, as CPython does for a tuple or dict of atomic values:
    # a Message's slots hold str, int and a dict of bytes or str, which make no cycle. Tracked,
    # each batch's Messages (all alive until handled) survived every young collection into the
    # oldest generation and set off full collections: 0.5 us of the client's CPU per entry in
    # a drain (bench/). A cycle a handler makes through a Message (a field or metadata value
    # referring back to it) is not collected: README, "Performance".
    if _gc_type:
        PyObject_GC_UnTrack(<PyObject*>message)
    return message


cdef Py_ssize_t _slot_offset(str name) except -1:
    descriptor = _Message.__dict__[name]
    if type(descriptor) is not type(Message.id):
        raise TypeError(name)
    return (<PyMemberDescrObject*><PyObject*>descriptor).d_member.offset


cdef void _check_direct_build():
    global _direct_build, _OFF_ID, _OFF_STREAM, _OFF_FIELDS, _OFF_ATTEMPT, _OFF_METADATA, _OFF_RETRY
    names = ("id", "stream", "fields", "_attempt", "_metadata", "_retry")
    if type(_Message) is not type or tuple(_Message.__slots__) != names or _Message.__base__ is not object:
        return
    try:
        _OFF_ID, _OFF_STREAM, _OFF_FIELDS, _OFF_ATTEMPT, _OFF_METADATA, _OFF_RETRY = [
            _slot_offset(name) for name in names
        ]
    except (KeyError, TypeError):
        return
    # Subclass instances, so that an __init__ that converts its arguments shows up as a mismatch.
    entry_id = type("_ProbeStr", (str,), {})("1-1")
    stream = type("_ProbeStr", (str,), {})("probe")
    fields = type("_ProbeDict", (dict,), {})()
    attempt = type("_ProbeInt", (int,), {})(7)
    built = _Message(entry_id, stream, fields, attempt)
    _direct_build = True
    direct = _new_message(entry_id, stream, fields, attempt)
    _direct_build = all(getattr(built, n) is getattr(direct, n) for n in names)


_check_direct_build()


def decode_entries(entries, stream, attempt):
    """``[[id, [k1, v1, ...]], ...]`` -> ``(messages, deleted_ids)``, both in reply order."""
    cdef object attempts = _attempt_lookup(attempt)
    cdef list messages = []
    cdef list deleted = []
    if entries is None:
        return messages, deleted
    if type(entries) is list:
        # A batch allocates two GC objects per entry (its Message and fields dict), all alive
        # until handled: young-generation collections they trigger mid-batch only scan them in
        # vain (40% of this loop). The GIL is held throughout (a list of builtin-typed entries,
        # a dict of attempts: no Python code runs), so no other thread sees the collector
        # paused; the allocation count carries over, and one collection follows the batch.
        paused = (attempts is None or type(attempts) is dict) and _gc_isenabled()
        if paused:
            _gc_disable()
        try:
            for entry in <list>entries:
                _decode_entry(entry, stream, attempt, attempts, messages, deleted)
        finally:
            if paused:
                _gc_enable()
    else:
        for entry in entries:
            _decode_entry(entry, stream, attempt, attempts, messages, deleted)
    return messages, deleted


cdef object _attempt_lookup(object attempt):
    """None when ``attempt`` is one count for all entries, else the per-id mapping."""
    if isinstance(attempt, int) and not isinstance(attempt, bool):
        return None
    if isinstance(attempt, dict) or isinstance(attempt, Mapping):
        return attempt
    raise TypeError(f"attempt must be an int or a mapping of id to int, got {_short_repr(attempt)}")


cdef int _decode_entry(
    object entry, object stream, object attempt, object attempts, list messages, list deleted
) except -1:
    cdef object raw_id, flat, entry_id, fields
    if type(entry) is list and PyList_GET_SIZE(entry) == 2:
        raw_id = (<list>entry)[0]
        flat = (<list>entry)[1]
    elif isinstance(entry, (list, tuple)) and len(entry) == 2:
        raw_id, flat = entry
    else:
        raise ValueError(f"malformed stream entry: {_short_repr(entry)}")
    entry_id = _entry_id(raw_id, entry)
    if flat is None:
        deleted.append(entry_id)
        return 0
    if type(flat) is list:
        if PyList_GET_SIZE(flat) == 0:
            deleted.append(entry_id)
            return 0
        fields = _pairs_to_dict(<list>flat, entry_id)
    elif isinstance(flat, dict):
        if not flat:
            deleted.append(entry_id)
            return 0
        fields = PyDict_Copy(flat) if type(flat) is dict else dict(flat)
    elif isinstance(flat, (list, tuple)):
        if not flat:
            deleted.append(entry_id)
            return 0
        fields = _pairs_to_dict(list(flat), entry_id)
    else:
        raise ValueError(f"malformed stream entry: {_short_repr(entry)}")
    messages.append(_new_message(entry_id, stream, fields, _attempt_of(entry_id, attempt, attempts)))
    return 0


cdef inline object _attempt_of(object entry_id, object attempt, object attempts):
    """The delivery count of one entry: ``attempt`` for all, or looked up in ``attempts``
    (as `_attempt_lookup` gave it; a missing id counts 1)."""
    cdef PyObject* found
    if attempts is None:
        return attempt
    if type(attempts) is dict:
        found = PyDict_GetItemWithError(attempts, entry_id)
        return 1 if found is NULL else <object>found
    return attempts.get(entry_id, 1)


@cython.boundscheck(True)  # a key's __hash__ could shrink the list under the loop
cdef dict _pairs_to_dict(list flat, object entry_id):
    cdef Py_ssize_t size = PyList_GET_SIZE(flat), i
    if size & 1:
        raise ValueError(f"malformed stream entry {entry_id!r}: odd number of field items")
    cdef dict fields = {}
    for i in range(0, size, 2):
        PyDict_SetItem(fields, flat[i], flat[i + 1])
    return fields


cdef object _entry_id(object raw_id, object entry):
    if isinstance(raw_id, bytes):
        try:
            return (<bytes>raw_id).decode("ascii")
        except UnicodeDecodeError:
            pass
    elif isinstance(raw_id, str):
        return raw_id
    raise ValueError(f"malformed stream entry: {_short_repr(entry)}")


cdef str _short_repr(object value):
    cdef str text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


# --- Replies read straight from the socket's bytes (see rstream.wire) -----------------------
#
# `reply_end` finds where one RESP2 reply ends in a buffer without building anything, so that a
# connection's bytes can be cut into replies; `decode_stream_reply` turns an XREADGROUP reply's
# bytes into Messages in one pass: no intermediate lists, and a field name that repeats the
# previous entry's is the same object (its hash is computed once per batch, not per entry).

cdef Py_ssize_t _NEED_MORE = -1
cdef Py_ssize_t _FIELD_CACHE = 16


cdef Py_ssize_t _header(const unsigned char* data, Py_ssize_t p, Py_ssize_t end,
                        long long* number) except -2:
    """Parse the length (``-?digits``, 18 digits at most) that starts at ``p`` and ends at
    CRLF; the offset after the CRLF, or -1 when the line is not complete yet. A line that
    cannot become a length raises ValueError."""
    cdef bint negative = False
    cdef long long value = 0
    cdef Py_ssize_t start
    if p < end and data[p] == 45:  # "-"
        negative = True
        p += 1
    start = p
    while p < end and 48 <= data[p] <= 57:
        if p - start == 18:
            raise ValueError("protocol error: length out of range")
        value = value * 10 + (data[p] - 48)
        p += 1
    if p >= end:
        return _NEED_MORE
    if data[p] != 13 or p == start:
        raise ValueError("protocol error: malformed length line")
    if p + 1 >= end:
        return _NEED_MORE
    if data[p + 1] != 10:
        raise ValueError("protocol error: malformed length line")
    number[0] = -value if negative else value
    return p + 2


cdef Py_ssize_t _line_end(const unsigned char* data, Py_ssize_t p, Py_ssize_t end):
    """The offset after the CRLF that ends the line at ``p``, or -1 when it is not complete."""
    while p + 1 < end:
        if data[p] == 13 and data[p + 1] == 10:
            return p + 2
        p += 1
    return _NEED_MORE


cdef Py_ssize_t _scan(const unsigned char* data, Py_ssize_t p, Py_ssize_t end,
                      long long* remaining) except -2:
    """Step over whole RESP2 values from ``p`` while ``remaining`` are due (an array's items
    are added to it); the offset after the last whole one. When ``remaining`` is left above 0,
    the buffer stops inside the value at that offset: call again from there once it grew."""
    cdef Py_ssize_t q
    cdef long long number
    cdef unsigned char kind
    while remaining[0] > 0:
        if p >= end:
            return p
        kind = data[p]
        number = 0
        if kind == 43 or kind == 45 or kind == 58:  # "+", "-", ":"
            q = _line_end(data, p + 1, end)
        elif kind == 36:  # "$"
            q = _header(data, p + 1, end, &number)
            if q >= 0 and number >= 0:
                if end - q < number + 2:
                    q = _NEED_MORE
                elif data[q + number] != 13 or data[q + number + 1] != 10:
                    raise ValueError("protocol error: bulk string without CRLF")
                else:
                    q += number + 2
            elif q >= 0 and number != -1:
                raise ValueError("protocol error: bulk length below -1")
            number = 0
        elif kind == 42:  # "*"
            q = _header(data, p + 1, end, &number)
            if q >= 0 and number < -1:
                raise ValueError("protocol error: array length below -1")
        else:
            raise ValueError(f"protocol error: unexpected byte {bytes([kind])!r}")
        if q < 0:
            return p
        remaining[0] += (number if number > 0 else 0) - 1
        p = q
    return p


def reply_end(buffer, Py_ssize_t pos=0):
    """The offset just after the RESP2 reply that starts at ``pos`` in ``buffer`` (bytes-like),
    or -1 when the buffer does not hold all of it yet. A byte that starts no RESP2 value raises
    ValueError (protocol error)."""
    cdef const unsigned char[::1] view = buffer
    cdef Py_ssize_t end = view.shape[0]
    cdef long long remaining = 1
    if pos < 0 or pos > end:
        raise ValueError("reply_end: pos out of range")
    if pos == end:
        return _NEED_MORE
    pos = _scan(&view[0], pos, end, &remaining)
    return pos if remaining == 0 else _NEED_MORE


cdef class ReplyScan:
    """`reply_end` of the reply at the front of a buffer that grows between calls, each byte
    scanned once: `end(buffer)` goes on from where the last call stopped. `reset()` once that
    reply was taken off the buffer's front, for the next one."""

    cdef Py_ssize_t _p
    cdef long long _remaining

    def __cinit__(self):
        self._p = 0
        self._remaining = 1

    def reset(self):
        self._p = 0
        self._remaining = 1

    def end(self, buffer):
        """The offset just after the reply, or -1 while the buffer does not hold all of it."""
        cdef const unsigned char[::1] view = buffer
        cdef Py_ssize_t end = view.shape[0]
        if self._p > end:
            raise ValueError("ReplyScan: the buffer is shorter than what was scanned of it")
        if self._p < end:
            self._p = _scan(&view[0], self._p, end, &self._remaining)
        return self._p if self._remaining == 0 else _NEED_MORE


# What the shape checks below return besides an offset: the bytes so far are not the shape
# asked for, or they stop before the item does.
cdef Py_ssize_t _OTHER = -3


cdef inline Py_ssize_t _expect_array(const unsigned char* data, Py_ssize_t p, Py_ssize_t end,
                                     long long* count) except -2:
    """An array header at ``p``: its length in ``count`` (-1 for a nil array); the offset
    after it, `_NEED_MORE`, or `_OTHER` when the bytes are no array header."""
    if p >= end:
        return _NEED_MORE
    if data[p] != 42:
        return _OTHER
    return _header(data, p + 1, end, count)


cdef inline Py_ssize_t _expect_bulk(const unsigned char* data, Py_ssize_t p, Py_ssize_t end,
                                    Py_ssize_t* start, Py_ssize_t* size) except -2:
    """A bulk string at ``p`` (not nil): where its bytes start and how many; the offset after
    it, `_NEED_MORE`, or `_OTHER` when the bytes are no such string."""
    cdef long long number
    if p >= end:
        return _NEED_MORE
    if data[p] != 36:
        return _OTHER
    p = _header(data, p + 1, end, &number)
    if p < 0:
        return p
    if number < 0:
        return _OTHER
    if end - p < number + 2:
        return _NEED_MORE
    if data[p + number] != 13 or data[p + number + 1] != 10:
        return _OTHER
    start[0] = p
    size[0] = <Py_ssize_t>number
    return p + <Py_ssize_t>number + 2


cdef inline object _text(const unsigned char* data, Py_ssize_t start, Py_ssize_t size,
                         const char* encoding, const char* errors):
    if encoding == NULL:
        return PyBytes_FromStringAndSize(<const char*>data + start, size)
    return PyUnicode_Decode(<const char*>data + start, size, encoding, errors)


def decode_stream_reply(buffer, Py_ssize_t pos, stream, attempt, encoding=None,
                        errors="strict"):
    """The XREADGROUP reply of one stream (RESP2) that starts at ``pos`` in ``buffer``
    (bytes-like) -> ``(messages, deleted_ids, end)``: what `decode_read_reply` and
    `decode_entries` give for the same reply parsed by hiredis, and the offset just after
    it; a nil reply (BLOCK timed out) gives two empty lists. ``([], [], -1)`` when the buffer
    does not hold the whole reply yet. Field names and values are bytes, or str decoded with
    ``encoding`` and ``errors`` (a ``decode_responses`` client). None when the reply is of
    any other shape (an error, several streams, anything unexpected): the caller parses it
    the general way (`reply_end`, hiredis), which also names what is wrong with it."""
    cdef object attempts = _attempt_lookup(attempt)
    cdef const unsigned char[::1] view = buffer
    cdef const unsigned char* data
    cdef Py_ssize_t end = view.shape[0], p = pos
    cdef Py_ssize_t key_start, key_size, id_start, id_size, f_start, f_size, v_start, v_size, i
    cdef long long count, entries, pairs
    cdef object entry_id, fields, key, value
    cdef list messages = []
    cdef list deleted = []
    cdef bytes enc_b, err_b
    cdef const char* enc = NULL
    cdef const char* err = NULL
    # The previous entry's field names: where their bytes were, and the objects made of them.
    cdef Py_ssize_t cached_start[16]
    cdef Py_ssize_t cached_size[16]
    cdef list cached = [None] * _FIELD_CACHE
    if pos < 0 or pos > end:
        raise ValueError("decode_stream_reply: pos out of range")
    if pos == end:
        return [], [], _NEED_MORE
    data = &view[0]
    if encoding is not None:
        enc_b = encoding.encode("ascii")
        err_b = errors.encode("ascii")
        enc = enc_b
        err = err_b
    for i in range(_FIELD_CACHE):
        cached_size[i] = -1
    try:
        p = _expect_array(data, p, end, &count)
        if p >= 0 and count == -1:
            return messages, deleted, p
        if p >= 0 and count != 1:
            p = _OTHER
        if p >= 0:
            p = _expect_array(data, p, end, &count)
            if p >= 0 and count != 2:
                p = _OTHER
        if p >= 0:
            p = _expect_bulk(data, p, end, &key_start, &key_size)
        if p >= 0:
            p = _expect_array(data, p, end, &entries)
            if p >= 0 and entries < 0:
                p = _OTHER
        if p < 0:
            return None if p == _OTHER else ([], [], _NEED_MORE)
    except ValueError:
        return None  # a malformed length: reply_end names it
    paused = _gc_isenabled() and (attempts is None or type(attempts) is dict)
    if paused:
        _gc_disable()  # as in decode_entries: the new objects all stay alive until handled
    try:
        while entries > 0:
            entries -= 1
            p = _expect_array(data, p, end, &count)
            if p >= 0 and count != 2:
                p = _OTHER
            if p >= 0:
                p = _expect_bulk(data, p, end, &id_start, &id_size)
            if p >= 0:
                entry_id = PyUnicode_DecodeASCII(<const char*>data + id_start, id_size, NULL)
                p = _expect_array(data, p, end, &pairs)
                if p >= 0 and pairs > 0 and pairs & 1:
                    p = _OTHER
            if p < 0:
                break
            if pairs <= 0:  # nil or empty: deleted or trimmed since it was delivered
                deleted.append(entry_id)
                continue
            fields = {}
            i = 0
            while pairs > 0:
                pairs -= 2
                p = _expect_bulk(data, p, end, &f_start, &f_size)
                if p < 0:
                    break
                if (i < _FIELD_CACHE and cached_size[i] == f_size
                        and memcmp(data + cached_start[i], data + f_start, f_size) == 0):
                    key = cached[i]
                else:
                    key = _text(data, f_start, f_size, enc, err)
                    if i < _FIELD_CACHE:
                        cached[i] = key
                        cached_start[i] = f_start
                        cached_size[i] = f_size
                p = _expect_bulk(data, p, end, &v_start, &v_size)
                if p < 0:
                    break
                value = _text(data, v_start, v_size, enc, err)
                PyDict_SetItem(fields, key, value)
                i += 1
            if p < 0:
                break
            messages.append(_new_message(entry_id, stream, fields,
                                         _attempt_of(entry_id, attempt, attempts)))
    except (UnicodeDecodeError, ValueError):
        return None  # an id that is not ASCII, a malformed length: the general path names it
    finally:
        if paused:
            _gc_enable()
    if p < 0:
        return None if p == _OTHER else ([], [], _NEED_MORE)
    return messages, deleted, p


cdef extern from "Python.h":
    bint PyUnicode_IS_COMPACT_ASCII(object)
    void* PyUnicode_DATA(object)
    Py_ssize_t PyUnicode_GET_LENGTH(object)


cdef inline Py_ssize_t _digits(Py_ssize_t n):
    cdef Py_ssize_t d = 1
    while n >= 10:
        n //= 10
        d += 1
    return d


cdef inline char* _put_length(char* out, Py_ssize_t size):
    """Write ``$<size>\r\n`` at ``out``; the position after it."""
    cdef Py_ssize_t d = _digits(size), k
    out[0] = 36  # "$"
    for k in range(d, 0, -1):
        out[k] = <char>(48 + size % 10)
        size //= 10
    out[d + 1] = 13
    out[d + 2] = 10
    return out + d + 3


def pack_ack(stream, group, ids):
    """The RESP bytes of ``XACK stream group id...`` (``stream`` and ``group`` bytes, the ids
    str or bytes), byte for byte what hiredis packs for the same arguments, written into one
    buffer (several times faster: no object per argument)."""
    cdef list given = ids if type(ids) is list else list(ids)
    cdef list items = []  # each id as a compact ASCII str, or encoded to bytes
    cdef Py_ssize_t total, size
    cdef const char* src
    cdef char* out
    cdef bytes head = b"*%d\r\n$4\r\nXACK\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
        PyList_GET_SIZE(given) + 3, len(stream), stream, len(group), group)
    for item in given:  # every id's type is checked before any is encoded, as the twin does
        if not isinstance(item, (str, bytes)):
            raise TypeError(f"a stream id must be str or bytes, got {_short_repr(item)}")
    total = PyBytes_GET_SIZE(head)
    for item in given:
        if type(item) is str and PyUnicode_IS_COMPACT_ASCII(item):
            size = PyUnicode_GET_LENGTH(item)
        else:
            item = (<str>item).encode("utf-8") if isinstance(item, str) else bytes(item)
            size = PyBytes_GET_SIZE(item)
        items.append(item)
        total += _digits(size) + size + 5
    result = PyBytes_FromStringAndSize(NULL, total)
    out = PyBytes_AS_STRING(result)
    memcpy(out, PyBytes_AS_STRING(head), PyBytes_GET_SIZE(head))
    out += PyBytes_GET_SIZE(head)
    for item in items:
        if type(item) is str:
            src = <const char*>PyUnicode_DATA(item)
            size = PyUnicode_GET_LENGTH(item)
        else:
            src = PyBytes_AS_STRING(item)
            size = PyBytes_GET_SIZE(item)
        out = _put_length(out, size)
        memcpy(out, src, size)
        out[size] = 13
        out[size + 1] = 10
        out += size + 2
    return result
