"""One statistics path: `stats`, the live view (trace's final summary), Prometheus, the dashboard
and the MCP server report the same counts, quantiles and errors for one trace."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from test_mcp_tools import call  # noqa: E402

from whyprobe.analyze.stats import OpAccumulator
from whyprobe.commands import main
from whyprobe.events import EVENT_DTYPE, Source
from whyprobe.export.prometheus import TraceMetrics
from whyprobe.record.session import op_view
from whyprobe.store.reader import open_trace
from whyprobe.store.rows import rows_from_records
from whyprobe.store.writer import Writer
from whyprobe.ui.dashboard import data as dashboard

T0 = 1_000_000_000


def _messy_records(n: int, seed: int = 7) -> np.ndarray:
    """CUDA calls failing with codes, syscalls and socket calls failing with -errno, sched intervals
    (whose ret is a waker pid, never an error), long-tailed durations, in batches of mixed ops."""
    rng = np.random.default_rng(seed)
    rec = np.zeros(n, EVENT_DTYPE)
    kinds = rng.choice(5, n)
    table = [(Source.CUDA, 3), (Source.CUDA, 1), (Source.SYSCALL, 257), (Source.NET, 1), (Source.HOST, 1)]
    rec["source"] = [table[k][0] for k in kinds]
    rec["op"] = [table[k][1] for k in kinds]
    rec["ts_ns"] = T0 + np.arange(n) * 1000
    rec["duration_ns"] = rng.lognormal(9, 1.5, n).astype(np.uint64) + 1
    cuda_fail = (rec["source"] == Source.CUDA) & (rng.random(n) < 0.05)
    rec["ret"] = np.where(cuda_fail, rng.choice([2, 35, 700], n), 0)
    neg = np.isin(rec["source"], (Source.SYSCALL, Source.NET)) & (rng.random(n) < 0.1)
    rec["ret"] = np.where(neg, -rng.choice([2, 11, 13], n), np.where(np.isin(rec["source"], (Source.SYSCALL, Source.NET)), 4096, rec["ret"]))
    rec["ret"] = np.where(rec["source"] == Source.HOST, 4242, rec["ret"])  # waker pid
    rec["pid"], rec["tid"] = 100, 101
    return rec


def test_all_five_report_the_same_counts_quantiles_and_errors(tmp_path: Path, capsys) -> None:
    # GIVEN one trace, recorded as `trace` records it: batches into the writer, the live
    # statistics and the Prometheus exporter
    records = _messy_records(20_000)
    live, metrics = OpAccumulator(), TraceMetrics()
    path = tmp_path / "t.db"
    with Writer(path) as w:
        for batch in np.array_split(records, 7):
            w.put_events(rows_from_records(batch, 0))
            live.add(batch["source"], batch["op"], batch["duration_ns"], batch["ret"])
            metrics.observe(batch)
    # WHEN each of the five reports it
    assert main(["stats", str(path), "--json"]) == 0
    stored = {(s["source_id"], s["op_id"]): s for s in json.loads(capsys.readouterr().out)}
    summary = {o.name: o for o in op_view(live, {}, 0, exact=True)}
    prom, _drops = metrics.snapshot()
    with open_trace(path) as db:
        dash = {(h["source"], h["op"]): h for h in dashboard.histograms(db)["histograms"]}
    mcp = {(s["source_id"], s["op_id"]): s for s in call(path, "get_trace_stats", {"limit": 50}).structured_content["ops"]}
    # THEN they agree exactly, op by op
    assert len(stored) == 5 and stored.keys() == dash.keys() == mcp.keys() == prom.keys()
    for key, st in stored.items():
        facts = (st["count"], st["p50_ns"], st["p99_ns"], st["errors"])
        assert (summary[st["op"]].count, summary[st["op"]].p50_ns, summary[st["op"]].p99_ns, summary[st["op"]].errors) == facts, st["op"]
        assert (dash[key]["count"], dash[key]["p50_ns"], dash[key]["p99_ns"], dash[key]["errors"]) == facts, st["op"]
        assert (mcp[key]["count"], mcp[key]["p50_ns"], mcp[key]["p99_ns"], mcp[key]["errors"]) == facts, st["op"]
        counts, total_ns, errors = prom[key]
        assert (int(counts.sum()), total_ns, errors) == (st["count"], st["total_ns"], st["errors"]), st["op"]
    # AND errors follow one rule: CUDA non-zero, syscall/socket negative, sched never
    src, ret = records["source"], records["ret"]
    assert stored[(int(Source.CUDA), 3)]["errors"] == int(((src == Source.CUDA) & (records["op"] == 3) & (ret != 0)).sum()) > 0
    assert stored[(int(Source.NET), 1)]["errors"] == int(((src == Source.NET) & (ret < 0)).sum()) > 0
    assert stored[(int(Source.SYSCALL), 257)]["op"] == "openat"
    assert stored[(int(Source.HOST), 1)]["errors"] == 0
