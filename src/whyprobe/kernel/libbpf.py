"""A thin, fully declared ctypes binding to the system libbpf (libbpf.so.1).

Only what whyprobe needs: open an object, set rodata, choose programs, reuse
and resize maps, load (with the verifier log in the error), attach
tracepoints / raw tracepoints / uprobes / perf events (opened by
kernel/perf.py), and uprobe_multi through the raw bpf(2) syscall (Debian's
libbpf 1.1 predates bpf_program__attach_uprobe_multi).
Pointer APIs return NULL + errno and int APIs -errno; both become BpfError.
"""

from __future__ import annotations

import ctypes as ct
import errno as errno_mod
import logging
import os
import threading
from collections import deque
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from whyprobe.errors import WhyprobeError
from whyprobe.kernel.tracefs import ensure_tracefs

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
_libc = ct.CDLL(None, use_errno=True)


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

_libc.syscall.restype = ct.c_long
_libc.vsnprintf.restype = _int
_libc.vsnprintf.argtypes = [_cp, _sz, _cp, _vp]


class _UprobeOpts(ct.Structure):
    _fields_ = [
        ("sz", _sz),
        ("ref_ctr_offset", _sz),
        ("bpf_cookie", ct.c_uint64),
        ("retprobe", ct.c_bool),
        ("func_name", _cp),
    ]


class _TracepointOpts(ct.Structure):
    _fields_ = [("sz", _sz), ("bpf_cookie", ct.c_uint64)]


class _TestRunOpts(ct.Structure):
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


class _BtfType(ct.Structure):
    _fields_ = [("name_off", _u32), ("info", _u32), ("size", _u32)]


class _VarSecinfo(ct.Structure):
    _fields_ = [("type", _u32), ("offset", _u32), ("size", _u32)]


class _LinkCreateUprobeMulti(ct.Structure):
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
    _libc.vsnprintf(buf, len(buf), fmt, ap)
    text = buf.value.decode(errors="replace").rstrip("\n")
    with _log_lock:
        _log_tail.extend(text.splitlines())
    log.log({0: logging.WARNING, 1: logging.INFO}.get(level, logging.DEBUG), "%s", text)
    return 0


libbpf_set_print(_print)


def _take_log() -> str:
    with _log_lock:
        lines = [ln for ln in _log_tail if ln.strip()]
        _log_tail.clear()
    return "\n".join(lines[-25:])


def _err() -> int:
    return ct.get_errno() or errno_mod.EINVAL


def _check_ptr(ptr: int | None, step: str, name: str) -> int:
    if not ptr:
        raise BpfError(step, name, _err())
    return ptr


def _check_int(rc: int, step: str, name: str, detail: str = "") -> int:
    if rc < 0:
        raise BpfError(step, name, -rc, detail)
    return rc


# --- maps ------------------------------------------------------------------------------


def map_update(fd: int, key: bytes, value: bytes, flags: int = 0) -> None:
    k = ct.create_string_buffer(key, len(key))
    v = ct.create_string_buffer(value, len(value))
    _check_int(bpf_map_update_elem(fd, k, v, flags), "map update", f"fd {fd}")


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


# --- links -----------------------------------------------------------------------------


class Link:
    """An attachment; destroy() detaches. Either a libbpf link or a raw link fd."""

    def __init__(self, name: str, ptr: int | None = None, fd: int | None = None, parts: Sequence["Link"] = ()) -> None:
        self.name = name
        self._ptr = ptr
        self._fd = fd
        self._parts = list(parts)

    def destroy(self) -> None:
        if self._ptr:
            bpf_link__destroy(self._ptr)
            self._ptr = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        for p in self._parts:
            p.destroy()
        self._parts = []

    def __enter__(self) -> "Link":
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


def _uprobe_multi_link(
    prog_fd: int, binary: str, offsets: Sequence[int], cookies: Sequence[int] | None, retprobe: bool, pid: int, attach_type: int
) -> int:
    n = len(offsets)
    path = ct.create_string_buffer(os.fsencode(binary))
    offs = (ct.c_uint64 * n)(*offsets)
    cks = (ct.c_uint64 * n)(*cookies) if cookies else None
    attr = _LinkCreateUprobeMulti(
        prog_fd=prog_fd,
        attach_type=attach_type,
        path=ct.addressof(path),
        offsets=ct.addressof(offs),
        cookies=ct.addressof(cks) if cks is not None else 0,
        cnt=n,
        um_flags=BPF_F_UPROBE_MULTI_RETURN if retprobe else 0,
        pid=pid if pid > 0 else 0,
    )
    fd = _libc.syscall(SYS_BPF, BPF_LINK_CREATE, ct.byref(attr), ct.sizeof(attr))
    if fd < 0:
        raise BpfError("attach uprobe_multi", binary, _err())
    return fd


# --- objects ---------------------------------------------------------------------------

_UPROBE_SECTIONS = ("uprobe", "uretprobe")


class BpfObject:
    """One opened BPF object file: configure, load, attach; close() frees in reverse."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise BpfError("open", str(self.path), errno_mod.ENOENT, "BPF objects are built by `make bpf`")
        self._obj = _check_ptr(bpf_object__open_file(os.fsencode(self.path), None), "open", self.path.name)
        self._links: list[Link] = []
        self._loaded = False
        self._classic_uprobes: set[str] = set()
        self._session_uprobes: set[str] = set()
        self.uprobe_multi = True
        # Called after a successful load (the ProbeSet learns the shared map fds here).
        self.on_loaded: list = []

    # configuration (before load)

    def _prog(self, name: str) -> int:
        return _check_ptr(bpf_object__find_program_by_name(self._obj, name.encode()), "find program", name)

    def _map(self, name: str) -> int:
        return _check_ptr(bpf_object__find_map_by_name(self._obj, name.encode()), "find map", name)

    def program_names(self) -> list[str]:
        names, prog = [], bpf_object__next_program(self._obj, None)
        while prog:
            names.append(bpf_program__name(prog).decode())
            prog = bpf_object__next_program(self._obj, prog)
        return names

    def section(self, prog: str) -> str:
        return bpf_program__section_name(self._prog(prog)).decode()

    def map_names(self) -> list[str]:
        names, m = [], bpf_object__next_map(self._obj, None)
        while m:
            names.append(bpf_map__name(m).decode())
            m = bpf_object__next_map(self._obj, m)
        return names

    def set_autoload(self, prog: str, enabled: bool) -> None:
        _check_int(bpf_program__set_autoload(self._prog(prog), enabled), "set autoload", prog)

    def set_classic_uprobe(self, prog: str) -> None:
        """Load `prog` for perf-event uprobes instead of uprobe_multi (e.g. to compare them)."""
        self._classic_uprobes.add(prog)

    def set_session_uprobe(self, prog: str) -> None:
        """Load `prog` as a uprobe session (6.13+): one program run at entry and at return."""
        self._session_uprobes.add(prog)

    def resize_map(self, name: str, max_entries: int) -> None:
        _check_int(bpf_map__set_max_entries(self._map(name), max_entries), "resize map", name)

    def reuse_map(self, name: str, fd: int) -> None:
        _check_int(bpf_map__reuse_fd(self._map(name), fd), "reuse map", name)

    def datasec_vars(self, section: str) -> dict[str, tuple[int, int]]:
        btf = bpf_object__btf(self._obj)
        if not btf:
            return {}
        sid = btf__find_by_name_kind(btf, section.encode(), BTF_KIND_DATASEC)
        if sid < 0:
            return {}
        t = _BtfType.from_address(btf__type_by_id(btf, sid))
        vlen = t.info & 0xFFFF
        base = btf__type_by_id(btf, sid) + ct.sizeof(_BtfType)
        out = {}
        for i in range(vlen):
            v = _VarSecinfo.from_address(base + i * ct.sizeof(_VarSecinfo))
            var = _BtfType.from_address(btf__type_by_id(btf, v.type))
            out[btf__name_by_offset(btf, var.name_off).decode()] = (v.offset, v.size)
        return out

    def set_rodata(self, **values: int | bytes) -> None:
        """Set `const volatile` globals by name before load; unknown names are errors."""
        if not values:
            return
        m = self._map(".rodata")
        layout = self.datasec_vars(".rodata")
        size = _sz()
        init = bpf_map__initial_value(m, ct.byref(size))
        data = bytearray(ct.string_at(init, size.value))
        for name, value in values.items():
            if name not in layout:
                raise BpfError("set rodata", name, errno_mod.ENOENT, f"{self.path.name} has no config variable {name!r}")
            off, sz = layout[name]
            raw = value if isinstance(value, bytes) else int(value).to_bytes(sz, "little", signed=int(value) < 0)
            if len(raw) > sz:
                raise BpfError("set rodata", name, errno_mod.E2BIG)
            data[off : off + len(raw)] = raw
        buf = ct.create_string_buffer(bytes(data), len(data))
        _check_int(bpf_map__set_initial_value(m, buf, len(data)), "set rodata", self.path.name)

    def load(self) -> None:
        prog = bpf_object__next_program(self._obj, None)
        while prog:
            name = bpf_program__name(prog).decode()
            sec = bpf_program__section_name(prog).decode()
            if self.uprobe_multi and sec.split("/")[0] in _UPROBE_SECTIONS and name not in self._classic_uprobes:
                bpf_program__set_expected_attach_type(prog, self._multi_attach_type(name))
            prog = bpf_object__next_program(self._obj, prog)
        _take_log()
        rc = bpf_object__load(self._obj)
        if rc < 0:
            raise BpfError("load", self.path.name, -rc, libbpf_log=_take_log())
        self._loaded = True
        for callback in self.on_loaded:
            callback(self)

    # after load

    def map_fd(self, name: str) -> int:
        return _check_int(bpf_map__fd(self._map(name)), "map fd", name)

    def map_value_size(self, name: str) -> int:
        return bpf_map__value_size(self._map(name))

    def prog_fd(self, name: str) -> int:
        return _check_int(bpf_program__fd(self._prog(name)), "program fd", name)

    def global_u64s(self, name: str, section: str = ".bss") -> np.ndarray:
        """Current value of a global u64 array (e.g. per-CPU drop counters in .bss)."""
        layout = self.datasec_vars(section)
        if name not in layout:
            raise BpfError("read global", name, errno_mod.ENOENT)
        off, sz = layout[name]
        m = self._map(section)
        raw = map_lookup(bpf_map__fd(m), (0).to_bytes(4, "little"), bpf_map__value_size(m))
        return np.frombuffer(raw, dtype="<u8", count=sz // 8, offset=off).copy()

    def test_run(self, prog: str, ctx: bytes = b"") -> int:
        """Run a loaded program once with `ctx` via BPF_PROG_TEST_RUN; returns its return value."""
        buf = ct.create_string_buffer(ctx, len(ctx)) if ctx else None
        opts = _TestRunOpts(sz=ct.sizeof(_TestRunOpts), ctx_in=ct.addressof(buf) if buf is not None else None, ctx_size_in=len(ctx))
        _check_int(bpf_prog_test_run_opts(self.prog_fd(prog), ct.byref(opts)), "test run", prog)
        return opts.retval

    def _keep(self, link: Link) -> Link:
        self._links.append(link)
        return link

    def _need_tracefs(self, what: str) -> None:
        try:
            ensure_tracefs()
        except OSError as exc:
            raise BpfError("attach tracepoint", what, exc.errno or errno_mod.EPERM, str(exc.strerror)) from None

    def attach(self, prog: str) -> Link:
        if self.section(prog).split("/")[0] in ("tp", "tracepoint"):
            self._need_tracefs(prog)
        ptr = _check_ptr(bpf_program__attach(self._prog(prog)), "attach", prog)
        return self._keep(Link(prog, ptr=ptr))

    def attach_tracepoint(self, prog: str, category: str, event: str, *, cookie: int = 0) -> Link:
        self._need_tracefs(f"{category}:{event}")
        """`cookie` is what bpf_get_attach_cookie() returns in the program (one program, many tracepoints)."""
        opts = _TracepointOpts(sz=ct.sizeof(_TracepointOpts), bpf_cookie=cookie)
        ptr = bpf_program__attach_tracepoint_opts(self._prog(prog), category.encode(), event.encode(), ct.byref(opts))
        return self._keep(Link(prog, ptr=_check_ptr(ptr, "attach tracepoint", f"{category}:{event}")))

    def attach_raw_tracepoint(self, prog: str, event: str) -> Link:
        ptr = bpf_program__attach_raw_tracepoint(self._prog(prog), event.encode())
        return self._keep(Link(prog, ptr=_check_ptr(ptr, "attach raw tracepoint", event)))

    def attach_perf_event(self, prog: str, perf_fd: int) -> Link:
        """Run `prog` on every sample of the perf event `perf_fd`; the link owns the fd (destroy closes it)."""
        ptr = bpf_program__attach_perf_event(self._prog(prog), perf_fd)
        if not ptr:
            err = _err()
            os.close(perf_fd)
            raise BpfError("attach perf_event", prog, err)
        return self._keep(Link(prog, ptr=ptr))

    def _multi_attach_type(self, prog: str) -> int:
        return BPF_TRACE_UPROBE_SESSION if prog in self._session_uprobes else BPF_TRACE_UPROBE_MULTI

    def _is_multi(self, prog: str) -> bool:
        return self.uprobe_multi and prog not in self._classic_uprobes

    def _classic_uprobe(self, prog: str, binary: str, offset: int, cookie: int, retprobe: bool, pid: int) -> Link:
        opts = _UprobeOpts(sz=ct.sizeof(_UprobeOpts), bpf_cookie=cookie, retprobe=retprobe)
        ptr = bpf_program__attach_uprobe_opts(self._prog(prog), pid, os.fsencode(binary), offset, ct.byref(opts))
        return Link(prog, ptr=_check_ptr(ptr, "attach uprobe", f"{binary}+{offset:#x}"))

    def attach_uprobe(self, prog: str, binary: str, offset: int, *, retprobe: bool = False, pid: int = -1, cookie: int = 0) -> Link:
        if self._is_multi(prog):
            return self.attach_uprobe_multi(prog, binary, [offset], [cookie], retprobe=retprobe, pid=pid)
        return self._keep(self._classic_uprobe(prog, binary, offset, cookie, retprobe, pid))

    def attach_uprobe_multi(
        self,
        prog: str,
        binary: str,
        offsets: Sequence[int],
        cookies: Sequence[int] | None = None,
        *,
        retprobe: bool = False,
        pid: int = -1,
    ) -> Link:
        """One link for all `offsets` of `binary` (falls back to one classic uprobe each)."""
        if not offsets:
            raise BpfError("attach uprobe_multi", binary, errno_mod.EINVAL, "no offsets given")
        if cookies is not None and len(cookies) != len(offsets):
            raise BpfError("attach uprobe_multi", binary, errno_mod.EINVAL, "cookies and offsets differ in length")
        if not self._is_multi(prog):
            parts = [
                self._classic_uprobe(prog, binary, off, cookies[i] if cookies else 0, retprobe, pid)
                for i, off in enumerate(offsets)
            ]
            return self._keep(Link(prog, parts=parts))
        fd = _uprobe_multi_link(self.prog_fd(prog), binary, offsets, cookies, retprobe, pid, self._multi_attach_type(prog))
        return self._keep(Link(prog, fd=fd))

    @property
    def loaded(self) -> bool:
        return self._loaded and self._obj is not None

    def detach_all(self) -> None:
        while self._links:
            self._links.pop().destroy()

    def close(self) -> None:
        self.detach_all()
        if self._obj:
            bpf_object__close(self._obj)
            self._obj = None

    def __enter__(self) -> "BpfObject":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
