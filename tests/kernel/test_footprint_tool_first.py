"""`whyprobe footprint` shows what the tool itself touched first. The SDK server's `count_rows`
tool loads sqlite3 on its first call and runs `wc` on the database before opening it: the loader's
cache, shared objects, locale files and __pycache__ are opened before the tool's own file. Its
footprint must list the database alone under files, the shared objects (full paths) under
libraries, and the rest grouped and counted as runtime."""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3

import _sqlite3
import pytest
from spy_peers import CLIENT, SERVER

from whyprobe.commands import main

pytestmark = pytest.mark.usefixtures("bpf_required")


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    d = tmp_path_factory.mktemp("fptool")
    db, text = d / "rows.db", d / "notes.txt"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE t (x)")
        c.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(7)])
    text.write_text("hello\n")
    calls = [["count_rows", {"db": str(db), "table": "t"}], ["read_file", {"path": str(text)}],
             ["count_rows", {"db": str(db), "table": "t"}]]
    out = io.StringIO()  # capsys is function-scoped; this fixture serves the module
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setenv("LANG", "C.UTF-8")  # `wc` loads its locale: runtime files of a child's start
        rc = main(["footprint", "--json", "--out", str(d / "fp.db"), "--cmd", "--",
                   *CLIENT, str(d / "ref.json"), "calls", json.dumps(calls), "--", *SERVER])
    assert rc == 0
    doc = json.loads(out.getvalue().strip().splitlines()[-1])
    return d, db, text, doc, json.loads((d / "ref.json").read_text())


def test_the_tools_answers(traced) -> None:
    _, _, _, doc, ref = traced
    assert [c["tool_name"] for c in doc["calls"]] == ["count_rows", "read_file", "count_rows"]
    assert [json.loads(r["result"][0]) if r["tool"] == "count_rows" else r["result"] for r in ref[1:]] == [
        {"rows": 7, "bytes": 8192}, {"result": "hello\n"}, {"rows": 7, "bytes": 8192}]


def test_files_are_the_tools_own(traced) -> None:
    _, db, text, doc, _ = traced
    first, read, again = doc["calls"]
    assert first["files"] == [str(db)] and again["files"] == [str(db)] and read["files"] == [str(text)]
    assert first["files_failed"] == again["files_failed"] == read["files_failed"] == []
    assert [t["files"] for t in doc["tools"]] == [[str(db)], [str(text)]]


def test_shared_objects_are_libraries_with_full_paths(traced) -> None:
    _, _, _, doc, _ = traced
    first, read, again = doc["calls"]
    # The first call dlopens the sqlite3 extension (and its libsqlite3); `wc` loads libc each time.
    assert _sqlite3.__file__ in first["libraries"]
    assert any(lib.endswith("/libsqlite3.so.0") for lib in first["libraries"])
    assert all(lib.startswith("/") for lib in first["libraries"] + again["libraries"])
    [libc] = [lib for lib in again["libraries"] if lib.endswith("/libc.so.6")]
    assert again["libraries"] == [libc] and libc in first["libraries"]
    assert read["libraries"] == []


def test_runtime_files_are_grouped_and_counted(traced) -> None:
    _, _, _, doc, _ = traced
    first, read, again = doc["calls"]
    assert "/etc/ld.so.cache" in first["runtime_files"]["loader"]
    assert any("/sqlite3/__pycache__/" in p for p in first["runtime_files"]["python"])
    assert first["runtime_files"]["locale"] and all("locale" in p or "/gconv/" in p for p in first["runtime_files"]["locale"])
    assert first["runtime"] == {g: len(p) for g, p in first["runtime_files"].items()}
    # sqlite3 stays imported: the second call only starts `wc`.
    assert sorted(again["runtime"]) == ["loader", "locale"] and read["runtime"] == {}
    [count_rows, _] = doc["tools"]
    assert count_rows["runtime"] == {g: len(set(first["runtime_files"].get(g, []) + again["runtime_files"].get(g, [])))
                                     for g in ("loader", "locale", "python")}


def test_stored_footprint_columns(traced) -> None:
    d, db, _, doc, _ = traced
    with sqlite3.connect(d / "fp.db") as c:
        rows = c.execute("SELECT files, libraries, summary FROM tool_calls ORDER BY started_at").fetchall()
    for (files, libraries, summary), call in zip(rows, doc["calls"]):
        assert (json.loads(files), json.loads(libraries)) == (call["files"], call["libraries"])
        assert json.loads(summary)["runtime_files"] == call["runtime_files"]
    assert json.loads(rows[0][0]) == [str(db)]
