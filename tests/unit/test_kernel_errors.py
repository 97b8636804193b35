"""libbpf failures become one sentence: step, object, errno name, what to do."""

from __future__ import annotations

import errno

import pytest

from whyprobe.kernel.elfsym import function_offsets, resolve
from whyprobe.kernel.bpfobject import BpfObject
from whyprobe.kernel.libbpf import BpfError
from whyprobe.errors import WhyprobeError


def test_missing_object_names_the_file_and_the_fix(tmp_path) -> None:
    with pytest.raises(BpfError) as exc:
        BpfObject(tmp_path / "nope.bpf.o")
    assert exc.value.errno == errno.ENOENT
    assert str(exc.value).startswith(f"open {tmp_path / 'nope.bpf.o'} failed: ENOENT")
    assert "make bpf" in str(exc.value)


@pytest.mark.parametrize(
    "err, hint",
    [(errno.EPERM, "run as root"), (errno.EOPNOTSUPP, "does not support"), (errno.E2BIG, "memory lock")],
)
def test_errno_hints(err: int, hint: str) -> None:
    msg = str(BpfError("attach", "x", err))
    assert errno.errorcode[err] in msg and hint in msg


def test_elf_symbols_resolve_to_file_offsets() -> None:
    import ctypes.util
    from pathlib import Path

    libc = next(
        line.split()[5] for line in Path("/proc/self/maps").read_text().splitlines() if "/libc.so" in line
    )
    found, missing = resolve(libc, ["getppid", "no_such_function_here"])
    assert missing == ["no_such_function_here"]
    # The offset points at the function's code in the file: its bytes are those of the mapped function.
    lib = ctypes.CDLL(ctypes.util.find_library("c"))
    addr = ctypes.cast(lib.getppid, ctypes.c_void_p).value
    with open(libc, "rb") as f:
        f.seek(found["getppid"])
        assert f.read(16) == ctypes.string_at(addr, 16)


def test_non_elf_file_is_one_clear_error(tmp_path) -> None:
    bad = tmp_path / "libcudart.so.12"
    bad.write_bytes(b"not an elf")
    with pytest.raises(WhyprobeError, match="Not a readable ELF file"):
        function_offsets(bad)


def test_libbpf_log_goes_through_logging_not_raw_stderr(tmp_path, caplog, capfd) -> None:
    # GIVEN a file libbpf cannot read as an object WHEN it is opened
    import logging

    bad = tmp_path / "bad.bpf.o"
    bad.write_bytes(b"garbage")
    with caplog.at_level(logging.DEBUG, logger="whyprobe.libbpf"):
        with pytest.raises(BpfError):
            BpfObject(bad)
    # THEN libbpf's complaint is a WARNING of whyprobe.libbpf (shown with -v), and nothing raw reached stderr
    assert any(r.levelno == logging.WARNING and "is not a proper ELF object" in r.getMessage() for r in caplog.records)
    assert "libbpf:" not in capfd.readouterr().err


def test_a_failing_bulk_select_is_a_store_error_with_a_sentence(tmp_path) -> None:
    import sqlite3

    from whyprobe.errors import StoreError
    from whyprobe.store import fastsql

    conn = sqlite3.connect(tmp_path / "t.db")
    conn.execute("CREATE TABLE t(a INTEGER)")
    if not fastsql.available(conn):
        pytest.fail("the fastsql helper is not built (make native)")
    with pytest.raises(StoreError, match=r"^Cannot read the trace: .*no such table: nope"):
        fastsql.select_i64(conn, "SELECT a FROM nope", (), 1)


def test_a_ring_fd_that_is_not_a_map_is_a_kernel_error(tmp_path) -> None:
    import os

    from whyprobe.errors import KernelError
    from whyprobe.kernel.ring import _ring_size

    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        with pytest.raises(KernelError, match="not a BPF ring buffer map"):
            _ring_size(fd)
    finally:
        os.close(fd)
