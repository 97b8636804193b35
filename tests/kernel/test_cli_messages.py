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
