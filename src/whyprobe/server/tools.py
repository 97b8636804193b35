"""The MCP tools: thin adapters over the questions `analyze/` answers, plus the safe SQL path.

Each `*_tool` function takes a `ServerState` plus the tool's arguments and returns
a `ToolResult`: a short trusted summary (numbers with units, written by us), the
structured data (plain JSON values, traced strings included) and a row count
for the audit log. `app.py` turns that into the MCP result, fencing the data.
No SQL here: the CLI, the dashboard and these tools share one answer per question.
"""

from __future__ import annotations

import hashlib
import os
import threading
import xml.etree.ElementTree as ET
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mcp.server.mcpserver.exceptions import ToolError

from whyprobe import readiness, units
from whyprobe.analyze import chain, launches, mcptraffic, window
from whyprobe.analyze.explain import explain
from whyprobe.analyze.stacks import top_stacks
from whyprobe.analyze.stats import op_stats
from whyprobe.errors import WhyprobeError
from whyprobe.server.security import SecuritySettings
from whyprobe.store.reader import TraceDB, trace_over
from whyprobe.store.safesql import SafeConnection, SafeOptions, open_safe, run_query

SEVERITIES = ("low", "medium", "high")


@dataclass
class ToolResult:
    summary: str
    data: dict[str, Any]
    rows: int = 0


def fmt_ns(ns: float | int | None) -> str:
    """A duration with a unit a reader can take in at a glance; "n/a" where a tool has none."""
    return "n/a" if ns is None else units.fmt_ns(ns)


def top_n(items: list[Any], n: int) -> tuple[list[Any], int]:
    """The first n items and how many were left out."""
    return items[:n], max(0, len(items) - n)


@dataclass
class ServerState:
    """What every tool call needs: the trace, the security settings, caches."""

    db_path: Path
    settings: SecuritySettings = field(default_factory=SecuritySettings)
    audit_path: Path | None = None
    fleet_nodes: list[str] = field(default_factory=list)
    _cache: OrderedDict = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _computing: dict = field(default_factory=dict)
    _local: threading.local = field(default_factory=threading.local)

    @property
    def options(self) -> SafeOptions:
        s = self.settings
        return SafeOptions(
            pid_filter=tuple(s.pid_filter),
            cgroup_filter=tuple(s.cgroup_filter),
            audit_path=self.audit_path,
            max_rows=s.max_rows,
            time_limit_ms=s.time_limit_ms,
            max_output_bytes=s.max_output_bytes,
        )

    def fingerprint(self) -> tuple:
        """Changes whenever the trace (or its WAL) changes, so caches never serve stale results."""
        out = []
        for p in (self.db_path, Path(f"{self.db_path}-wal")):
            try:
                st = p.stat()
            except OSError:
                out.append(None)
                continue
            # An empty WAL holds nothing: the first reader of a WAL-mode trace creates one,
            # which must not make every cached result stale.
            out.append((st.st_mtime_ns, st.st_size) if st.st_size or p == self.db_path else None)
        return tuple(out)

    def safe(self) -> SafeConnection:
        """This worker thread's read-only, filtered connection (reopened when the trace changes)."""
        fp = self.fingerprint()
        cached = getattr(self._local, "conn", None)
        if cached is not None and cached[0] == fp:
            return cached[1]
        if cached is not None:
            cached[1].close()
        safe = open_safe(self.db_path, self.options)
        self._local.conn = (fp, safe)
        return safe

    def trace(self) -> TraceDB:
        """A TraceDB over the filtered connection, for engine functions."""
        return trace_over(self.db_path, self.safe().conn)

    def cached(self, key: tuple, compute: Callable[[], Any]) -> Any:
        """Engine results keyed by arguments and the trace's fingerprint (the trace is read-only to us).

        One computation per key at a time: a call that arrives while the start-up warm-up
        (or another call) computes the same result waits for it instead of starting over."""
        full = (key, self.fingerprint())
        with self._lock:
            if full in self._cache:
                self._cache.move_to_end(full)
                return self._cache[full]
            busy = self._computing.setdefault(full, threading.Lock())
        with busy:
            with self._lock:
                if full in self._cache:
                    return self._cache[full]
            try:
                value = compute()
            except BaseException:
                with self._lock:
                    self._computing.pop(full, None)
                raise
            with self._lock:
                self._cache[full] = value
                self._computing.pop(full, None)
                while len(self._cache) > 256:
                    self._cache.popitem(last=False)
        return value


def _wrap_engine(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except WhyprobeError as exc:
        raise ToolError(str(exc)) from None


def _longest(state: ServerState, db: TraceDB) -> int:
    return state.cached(("maxdur",), lambda: window.max_duration(db))


# --- tools -----------------------------------------------------------------------------------


def get_check_tool(state: ServerState) -> ToolResult:
    report = _wrap_engine(readiness.readiness_report)
    caps = report["kernel"].get("capabilities", {})
    ok = sorted(k for k, v in caps.items() if v.get("ok"))
    libs = report["cuda"].get("libraries", [])
    summary = (
        f"kernel {report['kernel'].get('kernel')}: can_trace={report.get('can_trace')}; "
        f"{len(ok)}/{len(caps)} program/attach types work ({', '.join(ok)}); {len(libs)} CUDA librar{'y' if len(libs) == 1 else 'ies'} found; "
        f"GPU driver: {report['gpu'].get('driver') or 'none'}; {len(report.get('problems', []))} problem(s)"
    )
    return ToolResult(summary, report, len(caps))


def get_trace_stats_tool(state: ServerState, *, pid: int | None, source: str | None, since_ns: int | None, until_ns: int | None, limit: int) -> ToolResult:
    rows = state.cached(
        ("stats", pid, source, since_ns, until_ns),
        lambda: _wrap_engine(op_stats, state.trace(), pid=pid, since_ns=since_ns, until_ns=until_ns, source=source),
    )
    ranked = sorted(rows, key=lambda r: -int(r.get("total_ns") or 0))
    shown, omitted = top_n(ranked, limit)
    lines = [f"{len(rows)} ops; top {len(shown)} by total time:"]
    lines += [
        f"  {r['op']} ({r['source']}): {r['count']} calls, p50 {fmt_ns(r['p50_ns'])}, p99 {fmt_ns(r['p99_ns'])}, max {fmt_ns(r['max_ns'])}"
        for r in shown[:10]
    ]
    return ToolResult("\n".join(lines), {"ops": shown, "omitted": omitted, "total_ops": len(rows)}, len(shown))


def get_causal_chains_tool(state: ServerState, *, since_ns: int | None, until_ns: int | None, pid: int | None, op: str | None, min_severity: str, limit: int) -> ToolResult:
    doc = state.cached(
        ("explain", since_ns, until_ns, pid, op, min_severity),
        lambda: _wrap_engine(explain, state.trace(), since_ns=since_ns, until_ns=until_ns, pid=pid, op=op, min_severity=min_severity),
    )
    findings = list(doc.get("findings", []))
    shown, omitted = top_n(findings, limit)
    lines = [f"{len(findings)} finding(s); complete={doc.get('complete')}, dropped_events={doc.get('dropped_events')}"]
    lines += [
        f"  [{f.get('severity')}] {f.get('kind')} {f.get('op')}: lost {fmt_ns(f.get('lost_ns'))}, {f.get('slow_calls', 0)} slow call(s)"
        for f in shown
    ]
    data = {k: v for k, v in doc.items() if k != "findings"}
    data.update(findings=shown, omitted=omitted)
    return ToolResult("\n".join(lines), data, len(shown))


def get_stacks_tool(state: ServerState, *, op: str | None, limit: int, max_frames: int) -> ToolResult:
    stacks = state.cached(("stacks", op, limit), lambda: top_stacks(state.trace(), op=op, limit=limit))
    out = []
    for s in stacks:
        frames, cut = top_n(s["frames"], max_frames)
        out.append({**s, "frames": frames, "frames_omitted": cut})
    lines = [f"{len(out)} stack(s)" + (f" for {op}" if op else "")]
    lines += [f"  {s['op']}: {s['count']} calls, {fmt_ns(s['total_ns'])} total, {len(s['frames']) + s['frames_omitted']} frames" for s in out]
    return ToolResult("\n".join(lines), {"stacks": out}, len(out))


def run_sql_tool(state: ServerState, *, sql: str, max_rows: int) -> ToolResult:
    opts = state.options
    opts = SafeOptions(**{**opts.__dict__, "max_rows": min(max_rows, opts.max_rows)})
    try:
        res = run_query(state.safe(), sql, (), opts)
    except WhyprobeError as exc:
        raise ToolError(str(exc)) from None
    summary = f"{len(res.rows)} row(s), {len(res.columns)} column(s) in {res.elapsed_ms:.1f} ms"
    if res.truncated:
        summary += f"; truncated: {res.truncated_reason} (add LIMIT/WHERE or aggregate)"
    data = {"columns": res.columns, "rows": res.rows, "truncated": res.truncated, "truncated_reason": res.truncated_reason}
    return ToolResult(summary, data, len(res.rows))


def query_off_cpu_events_tool(state: ServerState, *, pid: int | None, tid: int | None, since_ns: int | None, until_ns: int | None, min_duration_ns: int, limit: int) -> ToolResult:
    data = window.off_cpu_intervals(state.trace(), pid=pid, tid=tid, since_ns=since_ns, until_ns=until_ns, min_duration_ns=min_duration_ns, limit=limit)
    summary = f"{data['total']} off-CPU interval(s), {fmt_ns(data['total_off_cpu_ns'])} off-CPU in total; showing the {len(data['events'])} longest"
    return ToolResult(summary, data, len(data["events"]))


def resolve_causal_chain_tool(state: ServerState, *, event_id: int | None, since_ns: int | None, until_ns: int | None, limit: int) -> ToolResult:
    db = state.trace()
    longest = _longest(state, db)
    if event_id is None and since_ns is None:
        lead = window.longest_gpu_call(db)
        if lead is None:
            raise ToolError("the trace has no events")
        event_id = lead[0]
    if event_id is None:
        end = until_ns if until_ns is not None else since_ns + 1_000_000_000
        events, total = window.overlapping(db, since_ns, end, longest, limit=limit)
        summary = f"{total} event(s) overlap [{since_ns}, {end}) ns; the {len(events)} longest shown"
        return ToolResult(summary, {"window": {"start_ns": since_ns, "end_ns": end}, "events": events, "omitted": total - len(events)}, len(events))
    span = window.event_span(db, event_id)
    if span is None:
        raise ToolError(f"no event {event_id} (or it belongs to a filtered process); call get_timeline or run_sql to find ids")
    start, dur, pid, tid, source, op = span
    end = start + max(dur, 1)
    own, _ = window.overlapping(db, start, end, longest, tid=tid, not_id=event_id, limit=limit)
    others, others_total = window.overlapping(db, start, end, longest, pid=pid, not_tid=tid, limit=limit)
    facts = state.cached(("trace_facts",), lambda: chain.trace_facts(db))
    causes = chain.call_chain(db, facts, event_id, longest)
    name = db.op_names().get((source, op), f"{source}:{op}")
    data = {
        "event": {"id": event_id, "op": name, "pid": pid, "tid": tid, "timestamp_ns": start, "duration_ns": dur},
        **causes,
        "same_thread": own,
        "same_process_other_threads": others,
        "other_threads_omitted": max(0, others_total - len(others)),
    }
    by = ", ".join(f"{c['kind']} {fmt_ns(c['explained_ns'])}" for c in causes["causes"]) or "no evidence"
    summary = (
        f"event {event_id} {name} on tid {tid}: {fmt_ns(dur)}: {by}; dominant cause {causes['dominant_cause']}, "
        f"not covered by evidence {fmt_ns(causes['unexplained_ns'])}; {len(own)} overlapping event(s) on its thread, "
        f"{others_total} on other threads of pid {pid}"
    )
    return ToolResult(summary, data, len(own) + len(others))


def analyze_gpu_launch_latency_tool(state: ServerState, *, op: str | None, pid: int | None, tid: int | None, outliers: int) -> ToolResult:
    db = state.trace()
    found = launches.launch_op(db, op)
    if found is None:
        raise ToolError(f"no {op or 'kernel launch'} events in this trace; call get_trace_stats to see which ops it has")
    chosen, ids = found
    data = state.cached(
        ("launch", chosen, pid, tid, outliers),
        lambda: _wrap_engine(launches.launch_latency, db, chosen, ids, pid=pid, tid=tid, outliers=outliers),
    )
    summary = (
        f"{data['count']} {chosen} calls: p50 {fmt_ns(data['p50_ns'])}, p99 {fmt_ns(data['p99_ns'])}, "
        f"max {fmt_ns(data['max_ns'])} (p99/p50 {data['tail_ratio'] or 0:.1f}x) across {len(data['threads']) + data['threads_omitted']} thread(s)"
        f" and {len(data['kernels']) + data['kernels_omitted']} kernel(s)"
    )
    return ToolResult(summary, data, data["count"])


def get_timeline_tool(state: ServerState, *, at_ns: int | None, window_ms: float, pid: int | None, tid: int | None, limit: int) -> ToolResult:
    db = state.trace()
    if at_ns is None:
        lead = window.longest_gpu_call(db)
        if lead is None:
            raise ToolError("the trace has no events")
        at_ns = lead[1]
    half = int(window_ms * 1e6 / 2)
    events, total = window.overlapping(db, at_ns - half, at_ns + half, _longest(state, db), pid=pid, tid=tid, limit=limit)
    events.sort(key=lambda e: (e["timestamp_ns"], e["id"]))
    by_source: dict[str, int] = {}
    for e in events:
        by_source[e["source"]] = by_source.get(e["source"], 0) + 1
    summary = f"{total} event(s) within ±{window_ms / 2:g} ms of {at_ns} ns; {len(events)} shown (longest first, sorted by time): " + ", ".join(f"{k} {v}" for k, v in sorted(by_source.items()))
    return ToolResult(summary, {"at_ns": at_ns, "window_ns": 2 * half, "events": events, "omitted": total - len(events)}, len(events))


def get_tool_footprint_tool(state: ServerState, *, tool_name: str | None, limit: int) -> ToolResult:
    data = mcptraffic.tool_footprints(state.trace(), tool_name=tool_name, limit=limit)
    if data is None:
        return ToolResult("this database has no MCP tool calls (record with `whyprobe footprint` or `whyprobe spy --out`)", {"calls": [], "tools": []})
    total = sum(t["calls"] for t in data["tools"])
    summary = f"{total} tool call(s) over {len(data['tools'])} tool(s); slowest {len(data['calls'])} shown"
    return ToolResult(summary, data, len(data["calls"]))


def list_mcp_sessions_tool(state: ServerState, *, limit: int) -> ToolResult:
    rows = mcptraffic.mcp_sessions(state.trace())
    if rows is None:
        return ToolResult("this database has no captured MCP messages (record with `whyprobe spy --out DB`)", {"sessions": []})
    sessions, omitted = top_n(rows, limit)
    summary = f"{len(rows)} MCP session(s); {sum(s['messages'] for s in sessions)} messages in the {len(sessions)} shown"
    return ToolResult(summary, {"sessions": sessions, "omitted": omitted}, len(sessions))


def get_mcp_traffic_tool(state: ServerState, *, connection: str | None, method: str | None, tool_name: str | None, limit: int) -> ToolResult:
    data = mcptraffic.mcp_traffic(state.trace(), connection=connection, method=method, tool_name=tool_name, limit=limit)
    if data is None:
        return ToolResult("this database has no captured MCP messages (record with `whyprobe spy --out DB`)", {"methods": [], "messages": []})
    total = data.pop("total")
    summary = f"{total} message(s); {len(data['methods'])} request method/tool pair(s); first {len(data['messages'])} messages shown"
    return ToolResult(summary, data, len(data["messages"]))


def query_fleet_tool(state: ServerState, *, sql: str, nodes: list[str] | None, timeout_s: float) -> ToolResult:
    from whyprobe.server.fleet import fan_out_sql

    targets = nodes or state.fleet_nodes
    if not targets:
        raise ToolError("no fleet nodes given or configured; pass nodes=['host:port', ...] of `whyprobe mcp --http` servers")
    res = fan_out_sql(targets, sql, timeout_s=timeout_s, token=os.environ.get(state.settings.token_env))
    summary = f"{len(res.rows)} row(s) from {len(res.ok_nodes)}/{len(targets)} node(s)"
    if res.failed:
        summary += "; partial: " + "; ".join(f"{n}: {why}" for n, why in res.failed.items())
    data = {"columns": res.columns, "rows": res.rows, "partial": bool(res.failed), "failed_nodes": res.failed, "ok_nodes": res.ok_nodes}
    return ToolResult(summary, data, len(res.rows))


def run_demo_tool(state: ServerState, *, name: str) -> ToolResult:
    import tempfile

    from whyprobe.demo.scenarios import run_replay

    out_dir = Path(tempfile.mkdtemp(prefix="whyprobe-demo-"))
    db_path = Path(_wrap_engine(run_replay, name, out_dir / f"{name}.db"))
    demo = ServerState(db_path, SecuritySettings())
    stats = get_trace_stats_tool(demo, pid=None, source=None, since_ns=None, until_ns=None, limit=10)
    summary = f"demo {name!r} replayed into {db_path}; " + stats.summary
    return ToolResult(summary, {"database": str(db_path), "stats": stats.data}, stats.rows)


def get_test_report_tool(state: ServerState, *, path: str | None) -> ToolResult:
    report = Path(path) if path else (state.settings.junit_path or Path("tests/artifacts/junit.xml"))
    if not report.is_file():
        raise ToolError(f"no JUnit report at {report}; produce one with `pytest --junitxml={report}`")
    try:
        root = ET.parse(report).getroot()
    except ET.ParseError as exc:
        raise ToolError(f"{report} is not valid JUnit XML: {exc}") from None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    totals = {k: sum(int(s.get(k, 0) or 0) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    totals["time_s"] = round(sum(float(s.get("time", 0) or 0) for s in suites), 3)
    failed = []
    for case in root.iter("testcase"):
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if bad is not None:
            failed.append({"test": f"{case.get('classname')}::{case.get('name')}", "message": (bad.get("message") or "")[:300]})
    shown, omitted = top_n(failed, 20)
    digest = hashlib.sha256(report.read_bytes()).hexdigest()[:12]
    summary = f"{totals['tests']} tests: {totals['failures']} failed, {totals['errors']} errors, {totals['skipped']} skipped in {totals['time_s']} s"
    return ToolResult(summary, {"report": str(report), "sha256_12": digest, **totals, "failed": shown, "failed_omitted": omitted}, len(shown))


def warm_up(state: ServerState, stop: threading.Event) -> None:
    """Fill the caches of the slow, argument-free defaults so an agent's first calls answer fast;
    `stop` ends it after the tool in progress."""
    for fn, kwargs in (
        (get_trace_stats_tool, dict(pid=None, source=None, since_ns=None, until_ns=None, limit=20)),
        (get_stacks_tool, dict(op=None, limit=10, max_frames=16)),
        (analyze_gpu_launch_latency_tool, dict(op=None, pid=None, tid=None, outliers=10)),
        (get_causal_chains_tool, dict(since_ns=None, until_ns=None, pid=None, op=None, min_severity="low", limit=10)),
        (resolve_causal_chain_tool, dict(event_id=None, since_ns=None, until_ns=None, limit=20)),
    ):
        if stop.is_set():
            return
        try:
            fn(state, **kwargs)
        except Exception:  # a tool that cannot answer says so when called; warming is best effort
            continue
