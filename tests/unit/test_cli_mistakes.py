"""Command-line mistakes are one line: `whyprobe: ...` plus the usage hint, exit 2, no traceback (#16.9)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from whyprobe import __version__
from whyprobe.commands import COMMANDS, main

NAMES = [name.replace("_", "-") for name in COMMANDS]
# Commands with a required positional argument, and the message click gives for it.
REQUIRED = {
    "stats": "Missing argument 'DB'.",
    "explain": "Missing argument 'DB'.",
    "stacks": "Missing argument 'db'.",
    "export": "Missing argument 'db'.",
    "merge": "Missing argument 'DB...'.",
    "import-ingero": "Missing argument 'DB'.",
    "dashboard": "Missing argument 'db'.",
    "mcp": "Missing option '--db'.",
}


def _one_line(capsys) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1, captured.err
    assert "Traceback" not in captured.err
    return captured.err.rstrip("\n")


@pytest.mark.parametrize("name", NAMES)
def test_unknown_option_is_one_line_for_every_command(name, capsys) -> None:
    # GIVEN a typo'd option WHEN any command runs THEN one line naming it and the command's help, exit 2
    assert main([name, "--zzz"]) == 2
    assert _one_line(capsys) == f"whyprobe: No such option: --zzz. Try 'whyprobe {name} --help'."


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_missing_argument_is_one_line(name, capsys) -> None:
    assert main([name]) == 2
    assert _one_line(capsys) == f"whyprobe: {REQUIRED[name]} Try 'whyprobe {name} --help'."


def test_unknown_command_suggests_the_near_one(capsys) -> None:
    assert main(["statz", "t.db"]) == 2
    assert _one_line(capsys) == "whyprobe: No such command 'statz'. Did you mean 'stats'? Try 'whyprobe --help'."


def test_option_value_of_the_wrong_type(capsys) -> None:
    assert main(["stacks", "t.db", "--limit", "many"]) == 2
    assert _one_line(capsys) == "whyprobe: Invalid value for '--limit': Input should be a valid integer, unable to parse string as an integer. Try 'whyprobe stacks --help'."


@pytest.mark.parametrize(
    "argv, message",
    [
        (["trace", "--duration", "5x", "--pid", "1"], "whyprobe: Invalid --duration '5x': expected a duration like 30s, 250ms, 5m or 1h. Try 'whyprobe trace --help'."),
        (["trace", "--ring", "big", "--pid", "1"], "whyprobe: Invalid --ring 'big': expected a size like 64MiB, 1GB or 512k. Try 'whyprobe trace --help'."),
        (["spy", "--duration", "1 fortnight"], "whyprobe: Invalid --duration '1 fortnight': expected a duration like 30s, 250ms, 5m or 1h. Try 'whyprobe spy --help'."),
        (["footprint", "--max-message", "lots", "--pid", "1"], "whyprobe: Invalid --max-message 'lots': expected a size like 64MiB, 1GB or 512k. Try 'whyprobe footprint --help'."),
        (["demo", "--duration", "soon"], "whyprobe: --duration 'soon': expected a duration like 30s, 250ms, 5m or 1h. Try 'whyprobe demo --help'."),
    ],
)
def test_malformed_duration_or_size_is_a_usage_error(argv, message, capsys) -> None:
    assert main(argv) == 2
    assert _one_line(capsys) == message


@pytest.mark.parametrize("name", ["trace", "spy", "footprint"])
@pytest.mark.parametrize("tail", [["--duration", "30s"], []])
def test_pid_from_an_empty_pgrep_says_no_process_matched(name, tail, capsys) -> None:
    # GIVEN `--pid $(pgrep -f vllm)` where nothing matched: the shell leaves a bare --pid
    assert main([name, "--pid", *tail]) == 2
    line = _one_line(capsys)
    assert line.startswith("whyprobe: --pid got no value") and "no process matched" in line


def test_version_and_no_traceback_from_the_console_script() -> None:
    done = subprocess.run([sys.executable, "-m", "whyprobe", "--version"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"whyprobe {__version__}\n", "")
    done = subprocess.run([sys.executable, "-m", "whyprobe", "stats", "t.db", "--bogus"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", "whyprobe: No such option: --bogus. Try 'whyprobe stats --help'.\n")


@pytest.fixture(scope="module")
def replay_db(tmp_path_factory):
    from whyprobe.demo import scenarios

    return scenarios.run_replay("cpu-contention", tmp_path_factory.mktemp("replay") / "t.db")


@pytest.mark.parametrize("name", ["explain", "stacks"])
def test_unknown_op_names_the_ops_the_trace_has(name, replay_db, capsys) -> None:
    # GIVEN a 2 s recording of a launch loop WHEN --op is a typo THEN no "No findings": one line listing its ops
    assert main([name, str(replay_db), "--op", "nosuchop"]) == 2
    extra = "gpu_idle, " if name == "explain" else ""
    assert _one_line(capsys) == (
        f"whyprobe: unknown op 'nosuchop'; the ops in {replay_db}: cudaDeviceSynchronize, cudaLaunchKernel, {extra}"
        f"process_exit, sched_switch. Try 'whyprobe {name} --help'."
    )


def test_an_op_absent_from_the_trace_is_not_a_typo(replay_db, capsys) -> None:
    assert main(["explain", str(replay_db), "--op", "cudaMalloc", "--no-store"]) == 0
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "window, asked",
    [(["--since", "10s", "--until", "40s"], "--since 10s --until 40s"), (["--since", "3s"], "--since 3s"), (["--until", "1000000000000000000"], "--until 1000000000000000000")],
)
def test_explain_window_outside_the_trace_is_one_line(window, asked, replay_db, capsys) -> None:
    assert main(["explain", str(replay_db), *window, "--no-store"]) == 1
    assert _one_line(capsys) == f"whyprobe: {asked} is outside the trace, which covers 0s .. 2.0s (from its first event)"


@pytest.mark.parametrize("name", ["trace", "spy", "footprint"])
def test_whyprobe_options_after_cmd_get_a_note(name, capsys, monkeypatch) -> None:
    # GIVEN options typed after `--` (they belong to the launched program) on a host that cannot trace
    import whyprobe.commands.common as common

    monkeypatch.setattr(common, "can_trace", lambda: False)
    assert main([name, "--cmd", "--", "claude-code", "--out", "mcp.db", "--verbose"]) == 1
    # THEN a note says where --out went, before the refusal
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"whyprobe: note: --out after `--` go to claude-code, not to whyprobe {name}; whyprobe's options go before --cmd"
    assert err[1].startswith(f"whyprobe: whyprobe {name} needs ") and len(err) == 2
