"""What the recording commands say and where they say it (#15): one line for a setup mistake, and a
JSON document alone on stdout whatever the launched program prints."""

from __future__ import annotations

import json
import subprocess
import sys

from whyprobe.commands import main


def test_custom_probes_without_a_config_is_one_line(bpf_required, tmp_path, capsys) -> None:
    assert main(["trace", "--probes", "custom", "--all", "--duration", "1s", "--out", str(tmp_path / "t.db")]) == 1
    assert capsys.readouterr().err == (
        "whyprobe: --probes custom needs custom probes: list probes.uprobes or probes.tracepoints in a config file "
        "and pass it with --config (see `whyprobe config --example`)\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_footprint_json_is_alone_on_stdout(bpf_required, tmp_path) -> None:
    # GIVEN an MCP client that prints to stdout while footprint --json records it
    from whyprobe.demo.scenarios import mcp

    notes = mcp.write_notes(tmp_path / "notes")
    res = subprocess.run(
        [sys.executable, "-m", "whyprobe", "footprint", "--json", "--out", str(tmp_path / "f.db"), "--cmd", "--", *mcp.client_command(notes)],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr
    # THEN stdout parses as one JSON document, and the client's lines went to stderr
    doc = json.loads(res.stdout)
    assert doc["command_exit_status"] == 0 and {t["tool_name"] for t in doc["tools"]} == {"search_notes", "read_note"}
    assert "tools: read_note, search_notes" in res.stderr
