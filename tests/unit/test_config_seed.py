"""The seed's configuration as typed: every key read, mapped onto what trace and mcp run with; event-shaped output
and the byte cap over structured content, without a kernel."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

sys.path.insert(0, str(Path(__file__).parent))
from test_mcp_safesql import make_trace  # noqa: E402

from whyprobe.commands.trace import _apply_config, _config_pids
from whyprobe.config import Config, ToolSpec, load_config, parse_config, tool_plan
from whyprobe.errors import CommandError, ConfigError
from whyprobe.record.session import TraceOptions
from whyprobe.server.app import RATE_LIMITED, build_server, tool_catalog
from whyprobe.server.output import EventShaped, cap_output, event_shaped
from whyprobe.server.security import SecuritySettings
from whyprobe.server.tools import ServerState

SEED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "seed-config.yaml"


def test_seed_file_reads_as_typed() -> None:
    cfg = load_config(SEED)
    assert (cfg.server.name, cfg.server.version, cfg.server.transport, cfg.server.read_only) == ("kernel-diagnostic-bridge", "1.0.0", "stdio", True)
    assert [(u.library, u.symbol, u.attach) for u in cfg.probes.uprobes] == [
        ("libcudart.so", "cudaLaunchKernel", "entry"), ("libcudart.so", "cudaDeviceSynchronize", "entry")]
    assert [t.conditions() for t in cfg.probes.tracepoints] == [
        [[("prev_pid", "!=", 0), ("next_pid", "!=", 0)]], [[("rwbs", "~", ".*W.*")]]]
    assert (cfg.storage.backend, cfg.storage.retention_hours, cfg.storage.precision_ms, cfg.storage.max_events_per_second) == ("columnar", 72, 1, 50000)
    assert [(t.name, t.description, t.output) for t in cfg.tools] == [
        ("query_off_cpu_events", "Retrieves scheduler preemption events", "event"),
        ("resolve_causal_chain", "Maps latency to kernel blocking mechanics", "event"),
        ("analyze_gpu_launch_latency", "Returns CUDA kernel launch distribution", "event"),
    ]
    assert (cfg.security.write_access, cfg.security.pid_filtering, cfg.security.rate_limit_per_second) == (False, True, 100)


def test_storage_keys_map_onto_the_trace_options() -> None:
    options = TraceOptions()
    _apply_config(load_config(SEED), options)
    assert (options.retention_hours, options.precision_ns, options.max_events_per_sec) == (72, 1_000_000, 50000)
    assert parse_config("storage:\n  precision_ms: 10ms\n").storage.precision_ms == 10
    assert parse_config("storage:\n  precision_ms: 1s\n").storage.precision_ms == 1000


def test_pid_filtering_in_trace() -> None:
    on = load_config(SEED)
    with pytest.raises(CommandError, match=r"^security.pid_filtering: true records only the traced processes; drop --all or set pid_filtering: false$"):
        _config_pids(on, [], False, True)
    assert _config_pids(on, [5], False, False) == [5]
    listed = parse_config("security:\n  pid_filtering: [7, 8]\n")
    assert _config_pids(listed, [], False, False) == [7, 8]
    assert _config_pids(listed, [9], False, False) == [9]
    assert parse_config("security:\n  pid_filtering: [7]\n").security.settings_kwargs()["pid_filter"] == [7]
    assert on.security.settings_kwargs()["pid_filter"] == []  # true: `mcp` computes the traced pids from the trace


@pytest.mark.parametrize(
    "text, message",
    [
        ("server:\n  read_only: false\n", "server.read_only: whyprobe never writes to what it traces; expected true, got false"),
        ("security:\n  read_only: false\n", "security.read_only: whyprobe never writes to what it traces; expected true, got false"),
        ("storage:\n  backend: parquet\n", 'storage.backend: expected one of: sqlite, columnar, duckdb, got "parquet"'),
        ("storage:\n  precision_ms: 0.5\n", "storage.precision_ms: expected a whole number of milliseconds (e.g. 1), 0 for full nanosecond timestamps, got 0.5"),
        ("tools:\n  - name: run_sql\n    schema: table\n", 'tools[0].schema: expected one of: event, got "table"'),
        ("tools:\n  - description: x\n", "tools[0].name: missing required key"),
        ("tools:\n  - {name: run_sql, shape: event}\n", "unknown key tools[0].shape (expected one of: name, description, schema)"),
        ("security:\n  pid_filtering: sometimes\n", 'security.pid_filtering: expected true or false, got "sometimes"'),
        ("probes:\n  tracepoints:\n  - name: block:block_rq_issue\n    filter: rwbs ~ 3\n",
         "probes.tracepoints[0].filter: rwbs ~: expected a quoted pattern, e.g. rwbs ~ '.*W.*', got \"rwbs ~ 3\""),
    ],
)
def test_bad_values_are_one_line_naming_key_and_form(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "w.yaml")
    assert str(info.value) == f"config error in w.yaml: {message}"


def test_tool_plan_is_exactly_the_list_or_the_adjusted_set() -> None:
    known = [name for name, _, _ in tool_catalog()]
    assert len(known) == 15
    seed = tool_plan(load_config(SEED).tools, known)
    assert list(seed) == ["query_off_cpu_events", "resolve_causal_chain", "analyze_gpu_launch_latency"]
    adjusted = tool_plan(parse_config("tools:\n  disable: [run_sql]\n  descriptions: {get_check: hi}\n").tools, known)
    assert len(adjusted) == 14 and "run_sql" not in adjusted and adjusted["get_check"].description == "hi"
    assert len(tool_plan(Config().tools, known)) == 15
    with pytest.raises(ConfigError, match=r"^tools\[1\].name: 'run_sql' is listed twice$"):
        tool_plan([ToolSpec(name="run_sql"), ToolSpec(name="run_sql")], known)


def test_rate_limit_of_the_config_is_applied(tmp_path: Path) -> None:
    db = make_trace(tmp_path / "t.db")

    async def go(settings: SecuritySettings):
        async with Client(build_server(ServerState(db, settings))) as c:
            codes = []
            for _ in range(12):
                try:
                    await c.call_tool("run_sql", {"sql": "SELECT 1"})
                    codes.append(0)
                except MCPError as exc:
                    codes.append(exc.code)
            return codes

    # GIVEN 12 back-to-back calls WHEN the config allows 5/s THEN at most 5 pass (the client's own
    # tools/list counts too) and the rest are rate-limited; with the default 100/s all pass
    strict = SecuritySettings(**parse_config("security:\n  rate_limit_per_second: 5\n").security.settings_kwargs())
    codes = anyio.run(go, strict)
    assert 1 <= codes.count(0) <= 5 and codes.count(RATE_LIMITED) == 12 - codes.count(0)
    assert anyio.run(go, SecuritySettings(**Config().security.settings_kwargs())) == [0] * 12


def test_event_shape_collects_event_objects_and_validates() -> None:
    chain = {"event": {"id": 1, "op": "cudaMemcpy", "pid": 2, "tid": 3, "timestamp_ns": 10, "duration_ns": 5},
             "same_thread": [{"id": 4, "timestamp_ns": 11, "duration_ns": 2, "op": "sched_switch"}], "off_cpu_ns": 2}
    shaped = event_shaped(chain)
    assert [e["id"] for e in shaped["events"]] == [1, 4] and shaped["off_cpu_ns"] == 2
    launch = {"op": "cudaLaunchKernel", "count": 2, "outliers": [{"id": 9, "tid": 1, "duration_ns": 7, "timestamp_ns": 3}]}
    assert event_shaped(launch)["events"] == [{"id": 9, "tid": 1, "duration_ns": 7, "timestamp_ns": 3, "op": "cudaLaunchKernel"}]
    off = {"events": [{"id": 5, "timestamp_ns": 1, "off_cpu_ns": 40}]}
    assert event_shaped(off)["events"] == [{"id": 5, "timestamp_ns": 1, "off_cpu_ns": 40, "duration_ns": 40, "op": "sched_switch"}]
    EventShaped.model_validate(event_shaped(chain))


def test_cap_trims_the_longest_list_and_says_so() -> None:
    data = {"events": [{"id": i, "timestamp_ns": i, "note": "x" * 50} for i in range(200)], "total": 200}
    capped, blob = cap_output(json.loads(json.dumps(data)), 2048)
    assert len(blob.encode()) <= 2048 and json.loads(blob) == capped
    assert capped["total"] == 200 and 0 < len(capped["events"]) < 200
    assert capped["output_truncated"] == {"cap_bytes": 2048, "items_omitted": 200 - len(capped["events"]), "hint": "use limit/filters for less"}
    small = {"rows": [[1]]}
    assert cap_output(small, 2048) == (small, '{"rows":[[1]]}')
    huge = {"text": "y" * 5000, "events": []}
    assert cap_output(huge, 2048)[0] == {"output_truncated": {"cap_bytes": 2048, "items_omitted": 0, "hint": "use limit/filters for less"}, "events": []}




def test_pid_filtering_true_in_mcp_is_the_traced_processes_and_their_descendants(tmp_path: Path) -> None:
    import sqlite3

    from whyprobe.commands.mcp import traced_pids

    db = make_trace(tmp_path / "t.db")
    conn = sqlite3.connect(db)
    # GIVEN a session that traced pid 100, whose child 300 forked 400; pid 200 was not traced
    conn.execute("INSERT INTO sessions(started_at, pid_filter) VALUES (1, '100')")
    conn.executemany("INSERT INTO process_names(pid, name, ppid) VALUES (?, ?, ?)", [(300, "worker", 100), (400, "sub", 300), (500, "other", 200)])
    conn.commit()
    assert traced_pids(db) == [100, 300, 400]
    # AND a trace of every process (--all) is not narrowed
    conn.execute("INSERT INTO sessions(started_at, pid_filter) VALUES (2, 'all')")
    conn.commit()
    assert traced_pids(db) == []


def test_401_audit_rows_are_bounded_per_address_and_count_what_they_leave_out(tmp_path: Path) -> None:
    import sqlite3

    from whyprobe.server.security import AuditLog, BearerAuth

    async def app(scope, receive, send):  # never reached without the token
        raise AssertionError("request passed auth")

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    audit = AuditLog(tmp_path / "a.sqlite")
    auth = BearerAuth(app, "s3cret", audit)
    now = [100.0]
    auth.clock = lambda: now[0]
    scope = {"type": "http", "method": "POST", "path": "/mcp", "client": ("10.0.0.9", 5555), "headers": [(b"authorization", b"Bearer guess")]}
    # GIVEN 50 refused requests from one address within one instant, then one more a second later
    for _ in range(50):
        anyio.run(auth, scope, None, send)
    now[0] += 1.0
    anyio.run(auth, scope, None, send)
    # THEN every one was answered 401, but only a burst of 10 plus the later one were logged, which counts the 40 left out
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [401] * 51
    reasons = [r for (r,) in sqlite3.connect(audit.path).execute("SELECT reason FROM audit_log ORDER BY id")]
    assert reasons == ["401 wrong bearer token"] * 10 + ["401 wrong bearer token (40 earlier refusals from this address not logged: over 10/s)"]
