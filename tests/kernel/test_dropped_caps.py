"""Root with its capabilities dropped cannot trace: `check` says so (capabilities, not uid 0) and the
recording commands refuse with one line, never libbpf's raw log."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

DROP = ["--bounding-set=-all", "--inh-caps=-all"]
REFUSAL = (
    "whyprobe: whyprobe {name} needs CAP_BPF+CAP_PERFMON (or CAP_SYS_ADMIN): this process is root "
    "but its capabilities are dropped (capsh --drop, setpriv, a container); run it with them\n"
)


def _dropped(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([shutil.which("setpriv"), *DROP, sys.executable, "-m", "whyprobe", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize(
    "args",
    [["trace", "--all", "--duration", "1s", "--out", "t.db"], ["spy", "--duration", "1s"], ["footprint", "--pid", "1", "--duration", "1s"]],
)
def test_recording_without_capabilities_is_one_line(bpf_required, tmp_path, args) -> None:
    # GIVEN uid 0 with an empty bounding set WHEN a recording command starts THEN one line, exit 1, no file
    res = _dropped(*args, cwd=tmp_path)
    assert (res.returncode, res.stdout, res.stderr) == (1, "", REFUSAL.format(name=args[0]))
    assert list(tmp_path.iterdir()) == []


def test_check_tests_the_capabilities_not_the_uid(bpf_required, tmp_path) -> None:
    res = _dropped("check", "--json", cwd=tmp_path)
    report = json.loads(res.stdout)
    assert res.returncode == 2 and report["can_trace"] is False
    assert report["kernel"]["privileged"] is False
    assert res.stderr.startswith("whyprobe: tracing cannot work here: not privileged") and "libbpf:" not in res.stderr
