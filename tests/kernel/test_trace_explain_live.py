"""`whyprobe trace --explain` on a preempted launch loop (real eBPF): the findings it prints at
the end name the same top finding (op, dominant cause, first blocker) as `explain` on the
database it wrote. The live explainer gets the session's rows as they are drained; a layout
converted by position instead of by name (the old `astype`) scrambled them into no finding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from whyprobe.analyze.explain import explain
from whyprobe.demo.scenarios import catalog, workload
from whyprobe.record.capture import READY_LINE
from whyprobe.store.reader import open_trace

pytestmark = pytest.mark.usefixtures("bpf_required")


def _top(f: dict) -> tuple:
    cause = f["causes"][0]
    first = cause["blockers"][0] if cause.get("blockers") else {}
    return f["kind"], f["op"], f["tid"], f["dominant_cause"], cause["kind"], first.get("tid"), first.get("comm")


def test_trace_explain_agrees_with_explain_on_the_stored_file(tmp_path: Path) -> None:
    # GIVEN the cpu-contention workload: a launch loop pinned to one CPU with a hog preempting it
    scenario = catalog.get("cpu-contention")
    binaries = workload.build()
    cpu = workload.demo_cpu()
    args = [a.format(cpu=cpu) for a in scenario.args]
    out = tmp_path / "t.db"
    hog = workload.start_hog(binaries, cpu)
    try:
        # WHEN it is traced with --explain
        res = subprocess.run(
            [sys.executable, "-m", "whyprobe", "trace", "--explain", "--json", "--probes", ",".join(catalog.PROBES),
             "--lib", str(binaries.runtime.cudart), "--out", str(out),
             "--cmd", "--", str(binaries.train_loop), "-d", "2.5", *args, str(binaries.runtime.cudart)],
            env={**os.environ, **scenario.env}, capture_output=True, text=True, timeout=120,
        )
    finally:
        workload.stop(hog)
    assert res.returncode == 0, res.stderr
    assert res.stderr.splitlines().count(READY_LINE) == 1
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    assert doc["dropped"]["total"] == 0
    live = doc["findings"]
    # THEN its top finding is explain's on the stored file: slow launches, preempted, by the hog
    with open_trace(out) as db:
        stored = explain(db)["findings"]
    assert live and stored
    assert _top(live[0]) == _top(stored[0])
    assert _top(stored[0])[:2] == ("tail", "cudaLaunchKernel")
    assert stored[0]["dominant_cause"] == "off_cpu"
