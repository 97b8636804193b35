"""`trace` with its observers: Prometheus scraped live, findings printed live, config limits enforced in the kernel."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cuda_helpers import REAL_CUDART
from testkit import free_port

from whyprobe.demo.build import build_workloads

pytestmark = pytest.mark.usefixtures("bpf_required")

def _whyprobe(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "whyprobe", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_metrics_are_served_while_tracing_and_count_every_call(tmp_path: Path) -> None:
    # GIVEN a workload making 400 cudaMalloc calls at 200/s (2 s), traced with --metrics
    w = build_workloads()
    port = free_port()
    proc = _whyprobe("trace", "--quiet", "--probes", "cuda", "--lib", str(REAL_CUDART), "--metrics", f"127.0.0.1:{port}",
                     "--out", str(tmp_path / "t.db"), "--cmd", "--", str(w.driver), "-r", "200", str(REAL_CUDART), "cudaMalloc=400")
    # WHEN it is scraped over HTTP while the trace runs
    families = {}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
        except OSError:
            time.sleep(0.1)
            continue
        families = {f.name: f for f in text_string_to_metric_families(text)}
        counts = [s.value for s in families.get("whyprobe_events", families.get("whyprobe_events_total")).samples
                  if s.labels.get("op") == "cudaMalloc" and s.name.endswith("_total")] if families else []
        if counts and counts[0] >= 100:
            break
        time.sleep(0.2)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    # THEN the scrape parsed, mid-trace, with the op's histogram and the drop counter present
    hist = families["whyprobe_op_duration_seconds"]
    buckets = [s for s in hist.samples if s.name.endswith("_bucket") and s.labels["op"] == "cudaMalloc"]
    inf = [s.value for s in buckets if s.labels["le"] == "+Inf"][0]
    assert 100 <= inf <= 400
    assert "whyprobe_dropped_events" in families or "whyprobe_dropped_events_total" in families
    n = sqlite3.connect(tmp_path / "t.db").execute("SELECT count(*) FROM events WHERE source = 1 AND op = 1").fetchone()[0]
    assert n == 400


def test_config_rate_limit_is_enforced_in_the_kernel_and_counted(tmp_path: Path) -> None:
    # GIVEN storage.max_events_per_second: 50 per CPU and a workload pinned to one CPU making 2,000 calls in one burst
    import os

    ncpu = os.cpu_count() or 1
    cfg = tmp_path / "w.yaml"
    cfg.write_text(f"probes:\n  families: [cuda]\nstorage:\n  max_events_per_second: {50 * ncpu}\n")
    w = build_workloads()
    proc = _whyprobe("trace", "--quiet", "--config", str(cfg), "--lib", str(REAL_CUDART), "--out", str(tmp_path / "t.db"),
                     "--cmd", "--", str(w.driver), "-c", "0", str(REAL_CUDART), "cudaFree=2000")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    con = sqlite3.connect(tmp_path / "t.db")
    stored = con.execute("SELECT count(*) FROM events WHERE source = 1 AND op = 2").fetchone()[0]
    rate_drops = con.execute("SELECT rate_drops FROM sessions").fetchone()[0]
    # THEN about one window's budget is kept, the rest counted, nothing lost silently
    assert stored + rate_drops == 2000
    assert 50 <= stored <= 150
    assert "rate limit 1,9" in out or f"{rate_drops:,} dropped" in out


def test_bad_config_is_one_line_before_any_work(tmp_path: Path) -> None:
    cfg = tmp_path / "w.yaml"
    cfg.write_text("storage:\n  max_db_mb: lots\n")
    proc = _whyprobe("trace", "--config", str(cfg), "--out", str(tmp_path / "t.db"), "--cmd", "--", "true")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert err.count("\n") == 1 and err.startswith(f"whyprobe: config error in {cfg}: storage.max_db_mb:")
    assert not (tmp_path / "t.db").exists()
