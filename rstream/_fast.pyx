# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled twin of `rstream._fast_py`: stream-id arithmetic and reply decoding.

Same names, results and exceptions (type and message) as the pure-Python reference, which is
the specification; `tests/test_hotpath_parity.py` holds the two together. Import these from
`rstream._hotpath`, which picks this module when it is built.
"""
from collections.abc import Mapping

cimport cython

from gc import disable as _gc_disable, enable as _gc_enable, isenabled as _gc_isenabled

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_Copy, PyDict_GetItemWithError, PyDict_SetItem
from cpython.list cimport PyList_GET_SIZE
from cpython.ref cimport Py_INCREF, PyObject
from libc.stdint cimport uint64_t

from rstream.message import Message

cdef extern from "Python.h":
    # Only the fields used here; the real structs are larger.
    ctypedef struct PyMemberDef:
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member
    ctypedef struct _TypeObject "PyTypeObject":
        object (*tp_alloc)(_TypeObject*, Py_ssize_t)

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
    cdef object raw_id, flat, entry_id, fields, count
    cdef PyObject* found
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
    if attempts is None:
        count = attempt
    elif type(attempts) is dict:
        found = PyDict_GetItemWithError(attempts, entry_id)
        count = 1 if found is NULL else <object>found
    else:
        count = attempts.get(entry_id, 1)
    messages.append(_new_message(entry_id, stream, fields, count))
    return 0


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


def ack_args(stream, group, ids):
    """``["XACK", stream, group, *ids]`` as a new list, ready for one packed command."""
    # list.extend copies a list or tuple in one C loop; an index loop here measured twice as slow.
    cdef list args = ["XACK", stream, group]
    args.extend(ids)
    return args


cdef str _short_repr(object value):
    cdef str text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."
