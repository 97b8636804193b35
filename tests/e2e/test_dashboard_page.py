"""`whyprobe dashboard`: the JSON API, the CLI process, and the page in headless Chromium.

The browser tests drive Debian's /usr/bin/chromium through Playwright (its own
browser download is not available here) and leave a screenshot in
tests/artifacts/dashboard.png.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import httpx
from playwright.sync_api import expect
import pytest

from whyprobe.analyze.explain import explain
from whyprobe.commands import main
from whyprobe.events import F_PREEMPTED, Source
from whyprobe.store import schema
from whyprobe.store.reader import open_trace
from whyprobe.ui.dashboard import data
from whyprobe.ui.dashboard.server import DashboardServer, make_server

ROOT = Path(__file__).resolve().parents[2]
PY = str(ROOT / ".venv/bin/python") if (ROOT / ".venv/bin/python").exists() else sys.executable
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]

T0 = 1_700_000_000_000_000_000
TRAINER, LOADER, MCP_PID = 4242, 4243, 5151
EVIL_COMM = "<img src=x onerror=alert(1)>"
EVIL_FILE = "<script>window.pwned=1</script>.txt"
def build_synthetic_db(path: Path) -> Path:
    """A small whyprobe trace: a CUDA thread with a tail, preempted by `stress-ng`, off-CPU and I/O, two MCP tool calls."""
    conn = sqlite3.connect(path)
    schema.create(conn)
    ms = 1_000_000
    rows = []
    # 60 launches 10 ms apart: 53 fast (20 µs), 7 slow (5 ms: i = 7, 15, ..., 55).
    for i in range(60):
        rows.append((T0 + i * 10 * ms, TRAINER, TRAINER, int(Source.CUDA), 3, 5 * ms if i % 8 == 7 else 20_000, 0, 0))
    rows.append((T0 + 605 * ms, TRAINER, TRAINER, int(Source.CUDA), 4, 3 * ms, 0, 0))  # cudaMemcpy
    rows.append((T0 + 70 * ms, TRAINER, TRAINER, int(Source.HOST), 1, 4 * ms, 777, F_PREEMPTED))  # preempted by 777
    rows.append((T0 + 150 * ms, TRAINER, TRAINER, int(Source.HOST), 1, 2 * ms, 0, 0))  # blocked
    for i in range(5):
        rows.append((T0 + (100 + 50 * i) * ms, TRAINER, LOADER, int(Source.IO), 1, 1 * ms + i, 0, 0))  # block_read
    rows.append((T0 + 300 * ms, MCP_PID, MCP_PID, int(Source.HOST), 5, 0, 0, 0))  # process_exec
    conn.executemany(
        "INSERT INTO events(timestamp, pid, tid, source, op, duration, arg1, flags) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    conn.executemany("INSERT INTO process_names(pid, name) VALUES (?, ?)", [(TRAINER, "trainer"), (MCP_PID, "mcp-srv"), (777, "stress-ng")])
    conn.executemany("INSERT INTO thread_names(tid, pid, comm) VALUES (?, ?, ?)", [(TRAINER, TRAINER, "trainer"), (LOADER, TRAINER, EVIL_COMM)])
    conn.execute("INSERT INTO sessions(started_at, stopped_at, hostname, ring_drops, queue_drops) VALUES (?, ?, 'gpu-box', 3, 0)", (T0, T0 + 700 * ms))
    conn.executemany(
        "INSERT INTO tool_calls(id, server_pid, tool_name, started_at, ended_at, duration, is_error, cpu_user_ns, cpu_sys_ns, syscalls, syscall_ns, files, endpoints, children, cuda_calls)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (1, MCP_PID, "read_file", T0 + 300 * ms, T0 + 302 * ms, 2 * ms, 0, 500_000, 300_000, 42, 700_000, json.dumps(["/etc/hosts", EVIL_FILE]), "[]", "[]", 0),
            (2, MCP_PID, "fetch_url", T0 + 400 * ms, T0 + 450 * ms, 50 * ms, 1, 1_000_000, 2_000_000, 120, 9_000_000, "[]", json.dumps(["93.184.216.34:443"]), json.dumps(["/usr/bin/curl"]), 0),
        ],
    )
    conn.commit()
    conn.close()
    return path


@pytest.fixture(scope="module")
def synthetic_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_synthetic_db(tmp_path_factory.mktemp("dash") / "synthetic.db")


def serve(db_path: Path) -> Iterator[DashboardServer]:
    trace = open_trace(db_path)
    server = make_server(trace, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        trace.close()


@pytest.fixture
def synthetic_server(synthetic_db: Path) -> Iterator[DashboardServer]:
    yield from serve(synthetic_db)


@pytest.fixture
def starvation_server(shared_data: Path) -> Iterator[DashboardServer]:
    yield from serve(shared_data / "pytorch-dataloader-starvation.db")


# ---------------------------------------------------------------- JSON API


def test_dashboard_summary_counts_threads_and_drops(synthetic_server: DashboardServer) -> None:
    doc = httpx.get(synthetic_server.url + "api/summary").json()
    assert doc["flavor"] == "whyprobe"
    assert doc["events"] == 69
    assert doc["window"] == {"start_ns": str(T0), "end_ns": str(T0 + 605_000_000 + 3_000_000), "duration_ns": 608_000_000}
    assert doc["drops"] == {"ring_drops": 3, "queue_drops": 0, "rate_drops": 0, "pruned": 0}
    assert doc["complete"] is False
    by_tid = {t["tid"]: t for t in doc["threads"]}
    assert by_tid[TRAINER] == {"tid": TRAINER, "pid": TRAINER, "comm": "trainer", "events": 63, "cuda_calls": 61, "offcpu_ns": 6_000_000}
    assert by_tid[LOADER]["comm"] == EVIL_COMM
    assert doc["threads"][0]["tid"] == TRAINER  # the GPU-driving thread leads
    assert (doc["threads_total"], doc["gpu_threads"], doc["processes_with_events"]) == (3, 1, 2)
    assert doc["session"]["hostname"] == "gpu-box"


def test_dashboard_timeline_downsamples_per_thread_and_keeps_the_longest(synthetic_server: DashboardServer) -> None:
    full = httpx.get(synthetic_server.url + "api/timeline", params={"limit": 20000}).json()
    trainer = next(t for t in full["threads"] if t["tid"] == TRAINER)
    assert trainer["lanes"] == ["cuda", "offcpu"] and trainer["drives_gpu"] is True
    assert len(trainer["events"]) == trainer["total"] == 63
    # limit 10 over two lanes: 5 bins of 121.6 ms per lane, each keeps its longest event and how many it stood for.
    small = httpx.get(synthetic_server.url + "api/timeline", params={"limit": 10}).json()
    trainer = next(t for t in small["threads"] if t["tid"] == TRAINER)
    ops = small["ops"]
    assert len(trainer["events"]) == 7
    assert sum(e[4] for e in trainer["events"]) == 63
    cuda = [e for e in trainer["events"] if ops[e[2]]["lane"] == "cuda"]
    assert [e[1] for e in cuda] == [5_000_000] * 5  # every bin holds one of the 7 slow launches
    assert [e[4] for e in cuda] == [13, 12, 12, 12, 12]
    offcpu = [e for e in trainer["events"] if ops[e[2]]["lane"] == "offcpu"]
    assert [(e[0], e[1], e[5]) for e in offcpu] == [(70_000_000, 4_000_000, F_PREEMPTED), (150_000_000, 2_000_000, 0)]


def test_dashboard_timeline_caps_events_over_all_threads(synthetic_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "MAX_TIMELINE_EVENTS", 6)
    with open_trace(synthetic_db) as db:
        doc = data.timeline(db, limit=20000)
    assert doc["limit"] == 2  # 6 events over 3 threads
    assert [(t["tid"], len(t["events"]), sum(e[4] for e in t["events"])) for t in doc["threads"]] == [(TRAINER, 2, 63), (LOADER, 1, 5), (MCP_PID, 1, 1)]  # the 5 reads all fall before the 304 ms bin edge


def test_dashboard_timeline_range_is_absolute_ns_and_validated(synthetic_server: DashboardServer) -> None:
    start, end = T0 + 95_000_000, T0 + 160_000_000
    doc = httpx.get(synthetic_server.url + "api/timeline", params={"start": start, "end": end, "limit": 1000}).json()
    assert doc["origin_ns"] == str(start) and doc["span_ns"] == 65_000_000
    # launches at 100..160 ms (7), block_read at 100 and 150 ms (2), sched_switch at 150 ms (1)
    assert doc["events_in_range"] == 10
    loader = next(t for t in doc["threads"] if t["tid"] == LOADER)
    assert [(e[0], e[1]) for e in loader["events"]] == [(5_000_000, 1_000_000), (55_000_000, 1_000_001)]
    bad = httpx.get(synthetic_server.url + "api/timeline", params={"start": "soon"})
    assert bad.status_code == 400 and "start" in bad.json()["error"]


def test_dashboard_histograms_use_log2_buckets(synthetic_server: DashboardServer) -> None:
    doc = httpx.get(synthetic_server.url + "api/histograms").json()
    launch = next(h for h in doc["histograms"] if h["name"] == "cudaLaunchKernel")
    assert launch["count"] == 60 and launch["max_ns"] == 5_000_000 and launch["p50_ns"] == 20_000
    nonzero = [(b["lo_ns"], b["count"]) for b in launch["buckets"] if b["count"]]
    assert nonzero == [(16384, 53), (4194304, 7)]  # 20 µs in [2^14, 2^15), 5 ms in [2^22, 2^23)
    assert sum(b["count"] for b in launch["buckets"]) == 60
    assert [h["lane"] for h in doc["histograms"]][:2] == ["cuda", "cuda"]


def test_dashboard_findings_are_explains(synthetic_server: DashboardServer, synthetic_db: Path) -> None:
    doc = httpx.get(synthetic_server.url + "api/findings").json()
    with open_trace(synthetic_db) as db:
        expected = explain(db, min_severity="low")["findings"]
    assert doc["source"] == "explain" and doc["findings"] == expected
    top = doc["findings"][0]
    assert (top["op"], top["tid"], top["causes"][0]["kind"]) == ("cudaLaunchKernel", TRAINER, "off_cpu")
    assert top["causes"][0]["blockers"][0]["comm"] == "stress-ng"


def test_dashboard_tool_calls_carry_footprints(synthetic_server: DashboardServer) -> None:
    doc = httpx.get(synthetic_server.url + "api/tool_calls").json()
    assert doc["total"] == 2
    fetch, read = doc["tool_calls"]
    assert (fetch["tool_name"], fetch["is_error"], fetch["offset_ns"], fetch["endpoints"], fetch["children"]) == (
        "fetch_url", True, 400_000_000, ["93.184.216.34:443"], ["/usr/bin/curl"]
    )
    assert (read["files"], read["files_total"], read["syscalls"]) == (["/etc/hosts", EVIL_FILE], 2, 42)


def test_dashboard_is_read_only_and_checks_the_host_header(synthetic_server: DashboardServer) -> None:
    url = synthetic_server.url
    assert httpx.post(url + "api/summary").status_code == 405
    assert httpx.get(url + "api/nope").status_code == 404
    assert httpx.get(url + "../../etc/passwd").status_code == 404
    rebound = httpx.get(url + "api/summary", headers={"Host": "attacker.example:80"})
    assert rebound.status_code == 403
    page = httpx.get(url)
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    assert "<script src=\"app.js\"" in page.text


# ---------------------------------------------------------------- CLI


def test_dashboard_cli_serves_until_sigterm(shared_data: Path) -> None:
    proc = subprocess.Popen(
        [PY, "-m", "whyprobe", "dashboard", str(shared_data / "pytorch-dataloader-starvation.db"), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("Serving http://127.0.0.1:") and line.endswith("/ (Ctrl-C to stop)\n"), line
        url = line.split()[1]
        summary = httpx.get(url + "api/summary", timeout=10).json()
        assert (summary["flavor"], summary["events"]) == ("ingero", 3807)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_dashboard_cli_bad_database_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard", str(tmp_path / "missing.db"), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert err == f"whyprobe: No such database: {tmp_path / 'missing.db'}\n"
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    assert main(["dashboard", str(junk), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("whyprobe: ") and err.count("\n") == 1 and "junk.db" in err


def test_dashboard_cli_refuses_remote_bind(synthetic_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard", str(synthetic_db), "--bind", "0.0.0.0", "--port", "0"]) == 2
    assert "--allow-remote" in capsys.readouterr().err


# ---------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is not installed (make deps installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


def load_page(browser: object, url: str, screenshot: Path | None = None) -> tuple[object, list[str]]:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=15_000)
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshot), full_page=True)
    return page, problems


def test_dashboard_page_shows_the_recorded_gpu_trace(browser: object, starvation_server: DashboardServer) -> None:
    shot = ARTIFACTS / "dashboard.png"
    page, problems = load_page(browser, starvation_server.url, shot)
    try:
        assert problems == []
        text = page.inner_text("body")
        for op in ("cudaLaunchKernel", "cuLaunchKernel", "cudaStreamSync", "sched_switch"):
            assert op in page.inner_text("#histograms"), op
        assert "Instant events (no duration): process_exit ×5, process_fork ×11." in text
        # The training thread leads the timeline, with its CUDA and off-CPU lanes drawn.
        first_row = page.locator("#timeline g.thread").first
        assert first_row.get_attribute("data-tid") == "2233"
        assert "python3 · tid 2233" in first_row.text_content()
        assert first_row.locator("rect.ev[fill='var(--cuda)']").count() > 0
        assert first_row.locator("rect.ev[fill='var(--offcpu)']").count() > 0
        facts = page.inner_text("#facts")
        assert "3,807" in facts and "ingero" in facts and "8 (1 on GPU)" in facts
        findings = httpx.get(starvation_server.url + "api/findings", timeout=60).json()
        if findings["findings"]:
            assert findings["findings"][0]["summary"] in page.inner_text("#findings")
        else:
            assert findings["note"] in text
        assert shot.stat().st_size > 20_000
    finally:
        page.close()


def test_dashboard_page_shows_finding_tool_calls_and_escapes_traced_text(browser: object, synthetic_server: DashboardServer) -> None:
    page, problems = load_page(browser, synthetic_server.url, ARTIFACTS / "dashboard-synthetic.png")
    try:
        assert problems == []
        top = httpx.get(synthetic_server.url + "api/findings").json()["findings"][0]
        card = page.locator(f"#findings article.card.{top['severity']}")
        assert card.count() == 1
        card_text = card.inner_text()
        assert top["summary"] in card_text
        assert "stress-ng (pid 777, tid 777) 4.00 ms" in card_text
        assert top["recommendations"][0] in card_text
        assert "incomplete" in page.inner_text("#facts") and "ring_drops 3" in page.inner_text("#facts")
        table = page.inner_text("#tool-calls")
        assert "read_file" in table and "fetch_url" in table and "93.184.216.34:443" in table
        # Attacker-controlled comm and path show up as text, never as markup.
        assert EVIL_FILE in table
        assert f"{EVIL_COMM} (pid {TRAINER}, tid {LOADER}): 5 events in range" in page.text_content("#timeline")
        assert page.locator("img").count() == 0 and page.locator("#tool-calls script").count() == 0
        assert page.evaluate("window.pwned === undefined")
    finally:
        page.close()


def test_dashboard_page_zooms_the_timeline(browser: object, synthetic_server: DashboardServer) -> None:
    page, problems = load_page(browser, synthetic_server.url)
    try:
        # the timeline is drawn after its own fetch: measure only once its bars are there
        page.wait_for_selector("#timeline g.thread rect.ev")
        svg = page.locator("#timeline svg")
        box = svg.bounding_box()
        before = page.locator("#timeline g.thread").first.locator("rect.ev").count()
        y = box["y"] + 30
        page.mouse.move(box["x"] + 240, y)
        page.mouse.down()
        page.mouse.move(box["x"] + 400, y, steps=4)
        with page.expect_response(lambda r: "/api/timeline?" in r.url and "start=" in r.url) as resp:
            page.mouse.up()
        zoomed = resp.value.json()
        assert 0 < zoomed["span_ns"] < 608_000_000
        # expect() polls without eval: the page's CSP forbids the eval wait_for_function uses
        expect(page.locator("#reset-zoom")).to_be_enabled()
        after = page.locator("#timeline g.thread").first.locator("rect.ev").count()
        assert after < before
        with page.expect_response(lambda r: "/api/timeline?" in r.url and "start=" not in r.url):
            page.click("#reset-zoom")
        expect(page.locator("#reset-zoom")).to_be_disabled()
        assert problems == []
    finally:
        page.close()


def test_dashboard_page_survives_a_failing_endpoint(browser: object, synthetic_server: DashboardServer, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(db: object) -> dict:
        raise RuntimeError("histogram bug")

    monkeypatch.setattr(data, "histograms", broken)
    page, problems = load_page(browser, synthetic_server.url)
    try:
        assert problems == ["console error: Failed to load resource: the server responded with a status of 500 (Internal Server Error)"]
        assert "Could not load /api/histograms: /api/histograms failed: RuntimeError: histogram bug" in page.inner_text("#histograms-section")
        assert "`stress-ng` (pid 777)" in page.inner_text("#findings")
        assert "fetch_url" in page.inner_text("#tool-calls")
    finally:
        page.close()
