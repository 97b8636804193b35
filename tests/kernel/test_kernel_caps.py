"""`check` reports what the kernel really does: compared with independent evidence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from whyprobe.commands import main

pytestmark = pytest.mark.usefixtures("bpf_required")


def test_check_json_matches_the_kernel(capsys) -> None:
    import subprocess

    from whyprobe.kernel.caps import probe_capabilities

    # GIVEN a host where tracefs is not mounted (as on a fresh machine)
    subprocess.run(["umount", "/sys/kernel/tracing"], capture_output=True)
    probe_capabilities.cache_clear()
    rc = main(["check", "--json"])
    report = json.loads(capsys.readouterr().out)
    caps = report["kernel"]["capabilities"]
    assert rc == 0 and report["can_trace"] is True
    # uprobe_multi needs the uprobe PMU; kprobes need the kprobe PMU, which this kernel lacks.
    pmus = {p.name for p in Path("/sys/bus/event_source/devices").iterdir()}
    assert caps["uprobe_multi"]["ok"] is ("uprobe" in pmus)
    assert caps["uprobe"]["ok"] is ("uprobe" in pmus)
    assert caps["kprobe"]["ok"] is ("kprobe" in pmus)
    # fentry is refused here by policy (EPERM even as root): the report says so instead of guessing.
    assert caps["fentry"]["ok"] is False and "EPERM" in caps["fentry"]["detail"]
    assert caps["tracepoint"]["ok"] and caps["raw_tp"]["ok"] and caps["tp_btf"]["ok"]
    # THEN check mounted it, and says so
    assert report["kernel"]["tracefs"]["mounted"] is True
    assert report["kernel"]["tracefs"]["mounted_by_whyprobe"] is True
