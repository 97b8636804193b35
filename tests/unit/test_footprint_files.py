"""Footprint files: the tool's own first, shared objects under libraries, runtime noise grouped and
counted (analyze/footprint.py `file_group`, reporters/footprint.py table)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from whyprobe.analyze.footprint import Footprint, _split_files, file_group
from whyprobe.reporters import footprint as reporter


@pytest.mark.parametrize(
    "path, group",
    [
        ("/srv/data/report.csv", ""),
        ("/etc/passwd", ""),  # a tool reading it is news, not noise
        ("/etc/hosts", ""),
        ("/proc/meminfo", ""),
        ("/home/u/project/train.py", ""),  # a source file the tool reads is its own
        ("/lib/x86_64-linux-gnu/libc.so.6", "library"),
        ("/usr/lib/python3.11/lib-dynload/_sqlite3.cpython-311-x86_64-linux-gnu.so", "library"),
        ("/opt/app/libfoo.so.1.2.3", "library"),
        ("/etc/ld.so.cache", "loader"),
        ("/lib/x86_64-linux-gnu/glibc-hwcaps/x86-64-v3/libc.so.6", "library"),
        ("/lib/x86_64-linux-gnu/glibc-hwcaps/x86-64-v3", "loader"),
        ("/usr/lib/locale/C.utf8/LC_CTYPE", "locale"),
        ("/usr/share/locale/locale.alias", "locale"),
        ("/usr/lib/x86_64-linux-gnu/gconv/gconv-modules.cache", "locale"),
        ("/etc/localtime", "locale"),
        ("/usr/lib/python3.11/json/__pycache__/decoder.cpython-311.pyc", "python"),
        ("/usr/lib/python3.11/json", "python"),
        ("/srv/venv/lib/python3.12/site-packages/mcp/types.py", "python"),
        ("/srv/venv/pyvenv.cfg", "python"),
        ("/srv/app/node_modules/zod/index.js", "node"),
        ("/proc/self/maps", "process"),
        ("/dev/null", "process"),
        ("/sys/devices/system/cpu/online", "process"),
    ],
)
def test_file_group(path: str, group: str) -> None:
    assert file_group(path) == group


def _call(**kw) -> Footprint:
    return Footprint(1, "count_rows", 10, 0, 1000, False, **kw)


def test_split_keeps_the_tools_files_in_order_and_full_library_paths() -> None:
    call = _call()
    opened = ["/etc/ld.so.cache", "/usr/lib/python3.11/sqlite3/__pycache__/__init__.cpython-311.pyc",
              "/lib/x86_64-linux-gnu/libsqlite3.so.0", "/usr/lib/locale/C.utf8/LC_CTYPE", "/srv/rows.db",
              "/etc/ld.so.cache", "/srv/rows.db"]
    failed = ["/usr/lib/locale/C.UTF-8/LC_CTYPE", "/opt/lib/libsqlite3.so.0", "/srv/missing.db"]
    # The mmap of a file the window opened is that file (by basename or its link target's); a
    # mapping with no open keeps its basename.
    mapped = ["libsqlite3.so.0", "libfoo.so.2"]
    _split_files(call, opened, failed, mapped)
    assert call.files == ["/srv/rows.db"] and call.files_failed == ["/srv/missing.db"]
    assert call.libraries == ["/lib/x86_64-linux-gnu/libsqlite3.so.0", "libfoo.so.2"]
    assert call.runtime == {
        "loader": ["/etc/ld.so.cache", "/opt/lib/libsqlite3.so.0"],
        "locale": ["/usr/lib/locale/C.utf8/LC_CTYPE", "/usr/lib/locale/C.UTF-8/LC_CTYPE"],
        "python": ["/usr/lib/python3.11/sqlite3/__pycache__/__init__.cpython-311.pyc"],
    }


def test_table_lists_the_tools_file_first_and_counts_the_runtime() -> None:
    call = _call(files=["/srv/rows.db"], libraries=["/lib/x86_64-linux-gnu/libc.so.6"],
                 runtime={"loader": ["/etc/ld.so.cache"], "locale": [f"/usr/lib/locale/C.utf8/LC_{i}" for i in range(6)]})
    out = io.StringIO()
    reporter.render(Console(file=out, width=400), [call])
    [row] = [line for line in out.getvalue().splitlines() if "count_rows" in line]
    cells = [c.strip() for c in row.split("│")]
    assert cells[7:9] == ["/srv/rows.db", "/lib/x86_64-linux-gnu/libc.so.6"]
    assert "runtime 7: loader 1, locale 6" in out.getvalue()
    [tool] = reporter.to_json([call])["tools"]
    assert (tool["files"], tool["runtime"]) == (["/srv/rows.db"], {"loader": 1, "locale": 6})
