"""The object model over the libbpf binding: a BPF object's programs, maps, rodata and
links (tracepoints, raw tracepoints, uprobes, uprobe_multi and sessions, perf events).

kernel/libbpf.py declares the C functions; this module decides how whyprobe uses
them and turns every failure into a BpfError that names the step.
"""

from __future__ import annotations

import ctypes as ct
import errno as errno_mod
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from whyprobe.kernel import libbpf as c
from whyprobe.kernel.libbpf import BpfError
from whyprobe.kernel.tracefs import ensure_tracefs

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
            c.bpf_link__destroy(self._ptr)
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


def destroy_links(links: Sequence[Link]) -> None:
    """Destroy links all at once: releasing a tracepoint or uprobe link waits out an RCU grace
    period (70-90 ms each here), and in parallel those waits overlap (46 links: 1.9 s one by one)."""
    if len(links) <= 1:
        for link in links:
            link.destroy()
        return
    with ThreadPoolExecutor(max_workers=min(len(links), 64), thread_name_prefix="whyprobe-detach") as pool:
        list(pool.map(Link.destroy, links))


def _uprobe_multi_link(
    prog_fd: int, binary: str, offsets: Sequence[int], cookies: Sequence[int] | None, retprobe: bool, pid: int, attach_type: int
) -> int:
    n = len(offsets)
    path = ct.create_string_buffer(os.fsencode(binary))
    offs = (ct.c_uint64 * n)(*offsets)
    cks = (ct.c_uint64 * n)(*cookies) if cookies else None
    attr = c.LinkCreateUprobeMulti(
        prog_fd=prog_fd,
        attach_type=attach_type,
        path=ct.addressof(path),
        offsets=ct.addressof(offs),
        cookies=ct.addressof(cks) if cks is not None else 0,
        cnt=n,
        um_flags=c.BPF_F_UPROBE_MULTI_RETURN if retprobe else 0,
        pid=pid if pid > 0 else 0,
    )
    fd = c.libc.syscall(c.SYS_BPF, c.BPF_LINK_CREATE, ct.byref(attr), ct.sizeof(attr))
    if fd < 0:
        raise BpfError("attach uprobe_multi", binary, c.last_errno())
    return fd


# --- objects ---------------------------------------------------------------------------

_UPROBE_SECTIONS = ("uprobe", "uretprobe")


class BpfObject:
    """One opened BPF object file: configure, load, attach; close() frees in reverse."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise BpfError("open", str(self.path), errno_mod.ENOENT, "BPF objects are built by `make bpf`")
        self._obj = c.check_ptr(c.bpf_object__open_file(os.fsencode(self.path), None), "open", self.path.name)
        self._links: list[Link] = []
        self._loaded = False
        self._classic_uprobes: set[str] = set()
        self._session_uprobes: set[str] = set()
        self.uprobe_multi = True
        # Called after a successful load (the ProbeSet learns the shared map fds here).
        self.on_loaded: list = []

    # configuration (before load)

    def _prog(self, name: str) -> int:
        return c.check_ptr(c.bpf_object__find_program_by_name(self._obj, name.encode()), "find program", name)

    def _map(self, name: str) -> int:
        return c.check_ptr(c.bpf_object__find_map_by_name(self._obj, name.encode()), "find map", name)

    def program_names(self) -> list[str]:
        names, prog = [], c.bpf_object__next_program(self._obj, None)
        while prog:
            names.append(c.bpf_program__name(prog).decode())
            prog = c.bpf_object__next_program(self._obj, prog)
        return names

    def section(self, prog: str) -> str:
        return c.bpf_program__section_name(self._prog(prog)).decode()

    def map_names(self) -> list[str]:
        names, m = [], c.bpf_object__next_map(self._obj, None)
        while m:
            names.append(c.bpf_map__name(m).decode())
            m = c.bpf_object__next_map(self._obj, m)
        return names

    def set_autoload(self, prog: str, enabled: bool) -> None:
        c.check_int(c.bpf_program__set_autoload(self._prog(prog), enabled), "set autoload", prog)

    def set_classic_uprobe(self, prog: str) -> None:
        """Load `prog` for perf-event uprobes instead of uprobe_multi (e.g. to compare them)."""
        self._classic_uprobes.add(prog)

    def set_session_uprobe(self, prog: str) -> None:
        """Load `prog` as a uprobe session (6.13+): one program run at entry and at return."""
        self._session_uprobes.add(prog)

    def resize_map(self, name: str, max_entries: int) -> None:
        c.check_int(c.bpf_map__set_max_entries(self._map(name), max_entries), "resize map", name)

    def reuse_map(self, name: str, fd: int) -> None:
        c.check_int(c.bpf_map__reuse_fd(self._map(name), fd), "reuse map", name)

    def datasec_vars(self, section: str) -> dict[str, tuple[int, int]]:
        btf = c.bpf_object__btf(self._obj)
        if not btf:
            return {}
        sid = c.btf__find_by_name_kind(btf, section.encode(), c.BTF_KIND_DATASEC)
        if sid < 0:
            return {}
        t = c.BtfType.from_address(c.btf__type_by_id(btf, sid))
        vlen = t.info & 0xFFFF
        base = c.btf__type_by_id(btf, sid) + ct.sizeof(c.BtfType)
        out = {}
        for i in range(vlen):
            v = c.VarSecinfo.from_address(base + i * ct.sizeof(c.VarSecinfo))
            var = c.BtfType.from_address(c.btf__type_by_id(btf, v.type))
            out[c.btf__name_by_offset(btf, var.name_off).decode()] = (v.offset, v.size)
        return out

    def set_rodata(self, **values: int | bytes) -> None:
        """Set `const volatile` globals by name before load; unknown names are errors."""
        if not values:
            return
        m = self._map(".rodata")
        layout = self.datasec_vars(".rodata")
        size = ct.c_size_t()
        init = c.bpf_map__initial_value(m, ct.byref(size))
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
        c.check_int(c.bpf_map__set_initial_value(m, buf, len(data)), "set rodata", self.path.name)

    def load(self) -> None:
        prog = c.bpf_object__next_program(self._obj, None)
        while prog:
            name = c.bpf_program__name(prog).decode()
            sec = c.bpf_program__section_name(prog).decode()
            if self.uprobe_multi and sec.split("/")[0] in _UPROBE_SECTIONS and name not in self._classic_uprobes:
                c.bpf_program__set_expected_attach_type(prog, self._multi_attach_type(name))
            prog = c.bpf_object__next_program(self._obj, prog)
        c.take_log()
        rc = c.bpf_object__load(self._obj)
        if rc < 0:
            raise BpfError("load", self.path.name, -rc, libbpf_log=c.take_log())
        self._loaded = True
        for callback in self.on_loaded:
            callback(self)

    # after load

    def map_fd(self, name: str) -> int:
        return c.check_int(c.bpf_map__fd(self._map(name)), "map fd", name)

    def map_value_size(self, name: str) -> int:
        return c.bpf_map__value_size(self._map(name))

    def prog_fd(self, name: str) -> int:
        return c.check_int(c.bpf_program__fd(self._prog(name)), "program fd", name)

    def global_u64s(self, name: str, section: str = ".bss") -> np.ndarray:
        """Current value of a global u64 array (e.g. per-CPU drop counters in .bss)."""
        layout = self.datasec_vars(section)
        if name not in layout:
            raise BpfError("read global", name, errno_mod.ENOENT)
        off, sz = layout[name]
        m = self._map(section)
        raw = c.map_lookup(c.bpf_map__fd(m), (0).to_bytes(4, "little"), c.bpf_map__value_size(m))
        return np.frombuffer(raw, dtype="<u8", count=sz // 8, offset=off).copy()

    def test_run(self, prog: str, ctx: bytes = b"") -> int:
        """Run a loaded program once with `ctx` via BPF_PROG_TEST_RUN; returns its return value."""
        buf = ct.create_string_buffer(ctx, len(ctx)) if ctx else None
        opts = c.TestRunOpts(sz=ct.sizeof(c.TestRunOpts), ctx_in=ct.addressof(buf) if buf is not None else None, ctx_size_in=len(ctx))
        c.check_int(c.bpf_prog_test_run_opts(self.prog_fd(prog), ct.byref(opts)), "test run", prog)
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
        ptr = c.check_ptr(c.bpf_program__attach(self._prog(prog)), "attach", prog)
        return self._keep(Link(prog, ptr=ptr))

    def attach_tracepoint(self, prog: str, category: str, event: str, *, cookie: int = 0) -> Link:
        self._need_tracefs(f"{category}:{event}")
        """`cookie` is what bpf_get_attach_cookie() returns in the program (one program, many tracepoints)."""
        opts = c.TracepointOpts(sz=ct.sizeof(c.TracepointOpts), bpf_cookie=cookie)
        ptr = c.bpf_program__attach_tracepoint_opts(self._prog(prog), category.encode(), event.encode(), ct.byref(opts))
        return self._keep(Link(prog, ptr=c.check_ptr(ptr, "attach tracepoint", f"{category}:{event}")))

    def attach_raw_tracepoint(self, prog: str, event: str) -> Link:
        ptr = c.bpf_program__attach_raw_tracepoint(self._prog(prog), event.encode())
        return self._keep(Link(prog, ptr=c.check_ptr(ptr, "attach raw tracepoint", event)))

    def attach_perf_event(self, prog: str, perf_fd: int) -> Link:
        """Run `prog` on every sample of the perf event `perf_fd`; the link owns the fd (destroy closes it)."""
        ptr = c.bpf_program__attach_perf_event(self._prog(prog), perf_fd)
        if not ptr:
            err = c.last_errno()
            os.close(perf_fd)
            raise BpfError("attach perf_event", prog, err)
        return self._keep(Link(prog, ptr=ptr))

    def _multi_attach_type(self, prog: str) -> int:
        return c.BPF_TRACE_UPROBE_SESSION if prog in self._session_uprobes else c.BPF_TRACE_UPROBE_MULTI

    def _is_multi(self, prog: str) -> bool:
        return self.uprobe_multi and prog not in self._classic_uprobes

    def _classic_uprobe(self, prog: str, binary: str, offset: int, cookie: int, retprobe: bool, pid: int) -> Link:
        opts = c.UprobeOpts(sz=ct.sizeof(c.UprobeOpts), bpf_cookie=cookie, retprobe=retprobe)
        ptr = c.bpf_program__attach_uprobe_opts(self._prog(prog), pid, os.fsencode(binary), offset, ct.byref(opts))
        return Link(prog, ptr=c.check_ptr(ptr, "attach uprobe", f"{binary}+{offset:#x}"))

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

    def take_links(self) -> list[Link]:
        """The links made so far, handed over to be destroyed (destroy_links)."""
        links, self._links = self._links, []
        return links

    def detach_all(self) -> None:
        destroy_links(self.take_links())

    def close(self) -> None:
        self.detach_all()
        if self._obj:
            c.bpf_object__close(self._obj)
            self._obj = None

    def __enter__(self) -> "BpfObject":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
