"""`whyprobe spy` with no target: processes whose pipes carry JSON-RPC are found and enrolled by the kernel."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from spy_peers import CLIENT, SERVER, jsonl
from testkit import wait_for_ready

pytestmark = pytest.mark.usefixtures("bpf_required")

CALLS = 20


def test_an_unnamed_stdio_pair_is_detected_and_captured(tmp_path: Path) -> None:
    # GIVEN spy watching the whole host, with no --pid or --cmd
    spy = subprocess.Popen(
        [sys.executable, "-m", "whyprobe", "spy", "--quiet", "--json", "--duration", "10s", "--jsonl", str(tmp_path / "s.jsonl")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    wait_for_ready(spy)
    # WHEN an SDK client and its stdio server, started outside whyprobe, make 20 tool calls
    ref_path = tmp_path / "ref.json"
    client = subprocess.Popen([*CLIENT, str(ref_path), "stdio", str(CALLS), "10", "--", *SERVER])
    assert client.wait(60) == 0
    out, err = spy.communicate(timeout=60)
    assert spy.returncode == 0, err
    # THEN every call and its response were captured, paired, from both processes (spy watches the
    # whole host: MCP peers of other programs running meanwhile are captured too, and left out here)
    msgs = jsonl(tmp_path / "s.jsonl")
    ref = json.loads(ref_path.read_text())
    calls = [m for m in msgs if m["kind"] == "request" and m["method"] == "tools/call" and m["sender_pid"] == client.pid]
    assert [m["tool_name"] for m in calls] == [r["tool"] for r in ref if r["method"] == "tools/call"]
    answered = {m["request_id"] for m in msgs if m["kind"] in ("response", "error") and m.get("request_id")}
    assert {m["id"] for m in calls} <= answered
    assert all(m["sender_pid"] and m["receiver_pid"] for m in calls)
    assert json.loads(out.strip().splitlines()[-1])["tool_calls"] >= CALLS
