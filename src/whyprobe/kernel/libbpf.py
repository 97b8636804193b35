"""A thin, fully declared ctypes binding to the system libbpf (libbpf.so.1).

Only what whyprobe needs: the C functions and structs (kernel/bpfobject.py
builds the object model on them), libbpf's log routed into logging, and the
map operations. uprobe_multi goes through the raw bpf(2) syscall (Debian's
libbpf 1.1 predates bpf_program__attach_uprobe_multi), so its attribute
layout is declared here too.
Pointer APIs return NULL + errno and int APIs -errno; both become BpfError.
"""

from __future__ import annotations

import ctypes as ct
import errno as errno_mod
import logging
import os
import threading
from collections import deque
from typing import Iterator

from whyprobe.errors import WhyprobeError

log = logging.getLogger("whyprobe.libbpf")

BPF_LINK_CREATE = 28
BPF_TRACE_UPROBE_MULTI = 48
BPF_TRACE_UPROBE_SESSION = 57
BPF_F_UPROBE_MULTI_RETURN = 1
SYS_BPF = 321  # x86_64
BTF_KIND_DATASEC = 15


def _hint(err: int) -> str:
    if err in (errno_mod.EPERM, errno_mod.EACCES):
        return "run as root (or with CAP_BPF + CAP_PERFMON)"
    if err == errno_mod.ENOENT:
        return "the file, symbol or tracepoint does not exist here"
    if err in (errno_mod.EOPNOTSUPP, errno_mod.ENOTSUP):
        return "this kernel does not support it (see `whyprobe check`)"
    if err == errno_mod.EINVAL:
        return "the kernel rejected the arguments (see `whyprobe check` and -vv logs)"
    if err == errno_mod.E2BIG or err == errno_mod.ENOMEM:
        return "a map or ring is too large for the memory lock limit"
    return "see -vv logs"


class BpfError(WhyprobeError):
    """A libbpf step failed; the message names the step, the object, the errno and what to do."""

    def __init__(self, step: str, name: str, err: int, detail: str = "", libbpf_log: str = "") -> None:
        self.step, self.name, self.errno = step, name, abs(err)
        ename = errno_mod.errorcode.get(self.errno, str(self.errno))
        msg = f"{step} {name} failed: {ename} ({os.strerror(self.errno)}); {_hint(self.errno)}"
        if detail:
            msg += f"; {detail}"
        # libbpf's own lines (a verifier log) went to logging already: the message stays one line.
        self.libbpf_log = libbpf_log
        if libbpf_log and self.errno != errno_mod.EPERM:
            msg += " (libbpf's log: run `whyprobe -v ...`)"
        super().__init__(msg)


# --- keep in sync with libbpf.h / btf.h (libbpf 1.1) -------------------------------

_lib = ct.CDLL("libbpf.so.1", use_errno=True)
libc = ct.CDLL(None, use_errno=True)


def _fn(name: str, restype, *argtypes):
    f = getattr(_lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


_vp, _cp, _int, _u32, _sz = ct.c_void_p, ct.c_char_p, ct.c_int, ct.c_uint32, ct.c_size_t

PRINT_FN = ct.CFUNCTYPE(_int, _int, _cp, _vp)
libbpf_set_print = _fn("libbpf_set_print", _vp, PRINT_FN)
bpf_object__open_file = _fn("bpf_object__open_file", _vp, _cp, _vp)
bpf_object__load = _fn("bpf_object__load", _int, _vp)
bpf_object__close = _fn("bpf_object__close", None, _vp)
bpf_object__btf = _fn("bpf_object__btf", _vp, _vp)
bpf_object__next_program = _fn("bpf_object__next_program", _vp, _vp, _vp)
bpf_object__find_program_by_name = _fn("bpf_object__find_program_by_name", _vp, _vp, _cp)
bpf_object__find_map_by_name = _fn("bpf_object__find_map_by_name", _vp, _vp, _cp)
bpf_object__next_map = _fn("bpf_object__next_map", _vp, _vp, _vp)
bpf_program__name = _fn("bpf_program__name", _cp, _vp)
bpf_program__section_name = _fn("bpf_program__section_name", _cp, _vp)
bpf_program__set_autoload = _fn("bpf_program__set_autoload", _int, _vp, ct.c_bool)
bpf_program__autoload = _fn("bpf_program__autoload", ct.c_bool, _vp)
bpf_program__set_expected_attach_type = _fn("bpf_program__set_expected_attach_type", _int, _vp, _int)
bpf_program__fd = _fn("bpf_program__fd", _int, _vp)
bpf_program__attach = _fn("bpf_program__attach", _vp, _vp)
bpf_program__attach_tracepoint_opts = _fn("bpf_program__attach_tracepoint_opts", _vp, _vp, _cp, _cp, _vp)
bpf_program__attach_raw_tracepoint = _fn("bpf_program__attach_raw_tracepoint", _vp, _vp, _cp)
bpf_program__attach_perf_event = _fn("bpf_program__attach_perf_event", _vp, _vp, _int)
bpf_program__attach_uprobe_opts = _fn("bpf_program__attach_uprobe_opts", _vp, _vp, _int, _cp, _sz, _vp)
bpf_obj_get_info_by_fd = _fn("bpf_obj_get_info_by_fd", _int, _int, _vp, ct.POINTER(_u32))
bpf_map__name = _fn("bpf_map__name", _cp, _vp)
bpf_map__fd = _fn("bpf_map__fd", _int, _vp)
bpf_map__set_max_entries = _fn("bpf_map__set_max_entries", _int, _vp, _u32)
bpf_map__reuse_fd = _fn("bpf_map__reuse_fd", _int, _vp, _int)
bpf_map__value_size = _fn("bpf_map__value_size", _u32, _vp)
bpf_map__initial_value = _fn("bpf_map__initial_value", _vp, _vp, ct.POINTER(_sz))
bpf_map__set_initial_value = _fn("bpf_map__set_initial_value", _int, _vp, _vp, _sz)
bpf_link__destroy = _fn("bpf_link__destroy", _int, _vp)
bpf_link__fd = _fn("bpf_link__fd", _int, _vp)
bpf_map_update_elem = _fn("bpf_map_update_elem", _int, _int, _vp, _vp, ct.c_uint64)
bpf_map_lookup_elem = _fn("bpf_map_lookup_elem", _int, _int, _vp, _vp)
bpf_map_delete_elem = _fn("bpf_map_delete_elem", _int, _int, _vp)
bpf_map_get_next_key = _fn("bpf_map_get_next_key", _int, _int, _vp, _vp)
bpf_map_lookup_batch = _fn("bpf_map_lookup_batch", _int, _int, _vp, _vp, _vp, _vp, ct.POINTER(_u32), _vp)
bpf_prog_test_run_opts = _fn("bpf_prog_test_run_opts", _int, _int, _vp)
btf__find_by_name_kind = _fn("btf__find_by_name_kind", ct.c_int32, _vp, _cp, _u32)
btf__type_by_id = _fn("btf__type_by_id", _vp, _vp, _u32)
btf__name_by_offset = _fn("btf__name_by_offset", _cp, _vp, _u32)

libc.syscall.restype = ct.c_long
libc.vsnprintf.restype = _int
libc.vsnprintf.argtypes = [_cp, _sz, _cp, _vp]


class UprobeOpts(ct.Structure):
    _fields_ = [
        ("sz", _sz),
        ("ref_ctr_offset", _sz),
        ("bpf_cookie", ct.c_uint64),
        ("retprobe", ct.c_bool),
        ("func_name", _cp),
    ]


class TracepointOpts(ct.Structure):
    _fields_ = [("sz", _sz), ("bpf_cookie", ct.c_uint64)]


class TestRunOpts(ct.Structure):
    # struct bpf_test_run_opts (bpf.h, libbpf 1.1)
    _fields_ = [
        ("sz", _sz),
        ("data_in", _vp),
        ("data_out", _vp),
        ("data_size_in", _u32),
        ("data_size_out", _u32),
        ("ctx_in", _vp),
        ("ctx_out", _vp),
        ("ctx_size_in", _u32),
        ("ctx_size_out", _u32),
        ("retval", _u32),
        ("repeat", _int),
        ("duration", _u32),
        ("flags", _u32),
        ("cpu", _u32),
        ("batch_size", _u32),
    ]


class BtfType(ct.Structure):
    _fields_ = [("name_off", _u32), ("info", _u32), ("size", _u32)]


class VarSecinfo(ct.Structure):
    _fields_ = [("type", _u32), ("offset", _u32), ("size", _u32)]


class LinkCreateUprobeMulti(ct.Structure):
    # union bpf_attr, BPF_LINK_CREATE with the uprobe_multi member (include/uapi/linux/bpf.h)
    _fields_ = [
        ("prog_fd", _u32),
        ("target_fd", _u32),
        ("attach_type", _u32),
        ("flags", _u32),
        ("path", ct.c_uint64),
        ("offsets", ct.c_uint64),
        ("ref_ctr_offsets", ct.c_uint64),
        ("cookies", ct.c_uint64),
        ("cnt", _u32),
        ("um_flags", _u32),
        ("pid", _u32),
        ("_pad", _u32),
    ]


# --- libbpf's log, routed into logging; the tail is kept for error messages -----------

_log_tail: deque[str] = deque(maxlen=60)
_log_lock = threading.Lock()


@PRINT_FN
def _print(level: int, fmt: bytes, ap: int) -> int:
    buf = ct.create_string_buffer(4096)
    libc.vsnprintf(buf, len(buf), fmt, ap)
    text = buf.value.decode(errors="replace").rstrip("\n")
    with _log_lock:
        _log_tail.extend(text.splitlines())
    log.log({0: logging.WARNING, 1: logging.INFO}.get(level, logging.DEBUG), "%s", text)
    return 0


libbpf_set_print(_print)


def take_log() -> str:
    with _log_lock:
        lines = [ln for ln in _log_tail if ln.strip()]
        _log_tail.clear()
    return "\n".join(lines[-25:])


def last_errno() -> int:
    return ct.get_errno() or errno_mod.EINVAL


def check_ptr(ptr: int | None, step: str, name: str) -> int:
    if not ptr:
        raise BpfError(step, name, last_errno())
    return ptr


def check_int(rc: int, step: str, name: str, detail: str = "") -> int:
    if rc < 0:
        raise BpfError(step, name, -rc, detail)
    return rc


# --- maps ------------------------------------------------------------------------------


def map_update(fd: int, key: bytes, value: bytes, flags: int = 0) -> None:
    k = ct.create_string_buffer(key, len(key))
    v = ct.create_string_buffer(value, len(value))
    check_int(bpf_map_update_elem(fd, k, v, flags), "map update", f"fd {fd}")


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    k = ct.create_string_buffer(key, len(key))
    v = ct.create_string_buffer(value_size)
    rc = bpf_map_lookup_elem(fd, k, v)
    if rc < 0:
        if -rc == errno_mod.ENOENT:
            return None
        raise BpfError("map lookup", f"fd {fd}", -rc)
    return v.raw


def map_delete(fd: int, key: bytes) -> None:
    k = ct.create_string_buffer(key, len(key))
    rc = bpf_map_delete_elem(fd, k)
    if rc < 0 and -rc != errno_mod.ENOENT:
        raise BpfError("map delete", f"fd {fd}", -rc)


def map_items(fd: int, key_size: int, value_size: int, chunk: int = 4096) -> tuple[bytes, bytes, int]:
    """Every (key, value) of a hash map, `chunk` entries per syscall (BPF_MAP_LOOKUP_BATCH):
    (all keys back to back, all values back to back, count). A map iterated one key
    at a time costs two syscalls an entry, ~30 ms for 65,536 entries."""
    keys, values = [], []
    in_batch, out_batch = None, ct.create_string_buffer(max(key_size, 8))
    kbuf, vbuf = ct.create_string_buffer(key_size * chunk), ct.create_string_buffer(value_size * chunk)
    total = 0
    while True:
        count = _u32(chunk)
        rc = bpf_map_lookup_batch(fd, in_batch, out_batch, kbuf, vbuf, ct.byref(count), None)
        n = count.value
        if rc < 0 and -rc != errno_mod.ENOENT:
            raise BpfError("map batch lookup", f"fd {fd}", -rc)
        keys.append(kbuf.raw[: n * key_size])
        values.append(vbuf.raw[: n * value_size])
        total += n
        if rc < 0:  # ENOENT: that was the last batch
            return b"".join(keys), b"".join(values), total
        in_batch = ct.create_string_buffer(out_batch.raw, len(out_batch.raw))


def map_keys(fd: int, key_size: int) -> Iterator[bytes]:
    cur = None
    nxt = ct.create_string_buffer(key_size)
    while True:
        rc = bpf_map_get_next_key(fd, cur, nxt)
        if rc < 0:
            if -rc == errno_mod.ENOENT:
                return
            raise BpfError("map iterate", f"fd {fd}", -rc)
        key = nxt.raw
        yield key
        cur = ct.create_string_buffer(key, key_size)
