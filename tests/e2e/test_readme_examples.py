"""Every `whyprobe ...` example in README.md and in each command's --help runs here, for real.

Inputs: a trace recorded in the session fixture (`t.db`: the bundled train.py
through the real libcudart wheel, with stacks), the demo replays, the Ingero
captures of ../shared/data, a bundled MCP client/server pair. A failing
example fails on its exit status, a traceback, a raw libbpf line, or output
that contradicts its comment or the output shown under it. How lines are
collected, marked and adapted: readme_examples.py.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import readme_examples as rx
from testkit import cannot_run

from whyprobe.demo.scenarios import mcp

ROOT = rx.ROOT
SHARED_DATA = ROOT.parent / "shared" / "data"
EXAMPLES = rx.readme_examples() + rx.help_examples()
DEADLINE_S = 300

TRAIN = '''"""Stand-in training step: the real libcudart wheel's cudaMalloc/cudaDeviceSynchronize (35 without a GPU)."""
import ctypes, sys, time
from pathlib import Path

lib = next(Path(sys.prefix).glob("lib/python3*/site-packages/nvidia/cuda_runtime/lib/libcudart.so.12"))
cudart = ctypes.CDLL(str(lib))


def step():
    p = ctypes.c_void_p()
    cudart.cudaMalloc(ctypes.byref(p), 1 << 20)
    cudart.cudaDeviceSynchronize()


forever = "--forever" in sys.argv
print("ready", file=sys.stderr, flush=True)
t = time.monotonic()
while forever or time.monotonic() - t < 2:
    step()
    time.sleep(0.001)
'''

FLAMEGRAPH = '''"""Stand-in for flamegraph.pl: accepts only well-formed folded input (`frame;frame;leaf COUNT`)."""
import re, sys

lines = sys.stdin.read().splitlines()
bad = [l for l in lines if not re.fullmatch(r"[^ ;][^;]*(;[^;]+)* [0-9]+", l)]
if not lines or bad:
    sys.exit(f"flamegraph.pl: not folded stacks: {bad[:1] or 'no input'}")
print(f'<svg xmlns="http://www.w3.org/2000/svg"><!-- {len(lines)} stacks --></svg>')
'''


def _script(path: Path, body: str) -> None:
    path.write_text(body)
    path.chmod(0o755)


@pytest.fixture(scope="session")
def seed(tmp_path_factory, tls_cert) -> Path:
    """The directory every example starts from (each gets its own copy)."""
    from conftest import _bpf_unavailable_reason

    reason = _bpf_unavailable_reason()
    if reason is not None:
        cannot_run(f"README examples: {reason}")
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared test data not found at {SHARED_DATA}")
    ws = tmp_path_factory.mktemp("readme")
    bin_dir = ws / "bin"
    bin_dir.mkdir()
    py = sys.executable
    _script(bin_dir / "whyprobe", f'#!/bin/sh\nexec "{py}" -m whyprobe "$@"\n')
    _script(bin_dir / "python", f'#!/bin/sh\nexec "{py}" "$@"\n')
    notes = mcp.write_notes(ws / "notes")
    client = " ".join(f'"{a}"' for a in mcp.client_command(notes))
    _script(bin_dir / "claude-code", f"#!/bin/sh\nexec {client}\n")
    # Python scripts named like the real programs, so that `pgrep -f NAME` matches their command line.
    run_as = "#!{py}\nimport runpy, sys\n{ready}sys.argv = {argv!r}\nrunpy.run_path(sys.argv[0], run_name='__main__')\n"
    _script(bin_dir / "vllm", run_as.format(py=py, ready="", argv=[str(ws / "train.py"), "--forever"]))
    _script(bin_dir / "mcp-server-git", run_as.format(py=py, ready="print('ready', file=sys.stderr, flush=True)\n", argv=[str(mcp.SERVER), str(notes)]))
    _script(bin_dir / "flamegraph.pl", f"#!{py}\n{FLAMEGRAPH}")
    (ws / "train.py").write_text(TRAIN)
    for agent in ("my_agent.py", "agent.py"):
        (ws / agent).write_text(f"import os\nos.execv({mcp.client_command(notes)[0]!r}, {mcp.client_command(notes)!r})\n")
    shutil.copy(SHARED_DATA / "pytorch-dataloader-starvation.db", ws / "ingero.db")
    for n in (1, 2, 3):
        shutil.copy(SHARED_DATA / f"sample-gpu-node-0{n}.db", ws / f"node-0{n}.db")
    shutil.copy(tls_cert[0], ws / "c.pem")
    shutil.copy(tls_cert[1], ws / "k.pem")
    for line in ("whyprobe trace --stack --out t.db --cmd -- python train.py", "whyprobe demo mcp-tool --replay --out footprint.db",
                 "whyprobe config --example > whyprobe.yaml"):
        done = subprocess.run(["bash", "-c", line], cwd=ws, env=_env(ws), capture_output=True, text=True, timeout=DEADLINE_S)
        assert done.returncode == 0, f"{line}\n{done.stderr}"
    shutil.copy(ws / "footprint.db", ws / "mcp.db")
    return ws


def _env(ws: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ, PATH=f"{ws / 'bin'}:{os.environ['PATH']}", COLUMNS="160")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    return {**env, **(extra or {})}


def _popen(line: str, ws: Path, **kw) -> subprocess.Popen:
    # The line travels in the environment, not in argv, so `pgrep -f NAME` finds the stand-in only.
    return subprocess.Popen(["bash", "-o", "pipefail", "-c", 'eval "$WHYPROBE_EXAMPLE"'], cwd=ws,
                            env=_env(ws, {"WHYPROBE_EXAMPLE": line}), text=True, **kw)


def _stand_in(ws: Path, name: str) -> subprocess.Popen | None:
    """The process `pgrep -f NAME` finds; none for a NAME without bin/NAME (an example of no match)."""
    exe = ws / "bin" / name
    if not exe.exists():
        return None
    proc = subprocess.Popen([str(exe)], cwd=ws, env=_env(ws), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr.readline().strip() == "ready"
    return proc


def _run_plain(line: str, ws: Path) -> tuple[int, str, str]:
    proc = _popen(line, ws, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=DEADLINE_S)
    return proc.returncode, out, err


def _wait_port(proc: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on port {port} (exit status {proc.poll()})")


def _run_http(line: str, ws: Path, sub: str, argv: list[str]) -> tuple[int, str, str]:
    """Start the server, ask it one real request, Ctrl-C it."""
    if sub == "dashboard":
        port = int(rx.option(argv, "--port") or 8756)
    else:
        port = int((rx.option(argv, "--bind") or "127.0.0.1:8755").rsplit(":", 1)[1])
    proc = _popen(line, ws, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _wait_port(proc, port)
        if sub == "dashboard":
            status = httpx.get(f"http://127.0.0.1:{port}/", timeout=30).status_code
        else:
            scheme = "https" if "--tls-cert" in argv else "http"
            token = rx.env_assignments(line).get("WHYPROBE_MCP_TOKEN")
            headers = {"Accept": "application/json, text/event-stream"} | ({"Authorization": f"Bearer {token}"} if token else {})
            init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "readme", "version": "1"}}}
            status = httpx.post(f"{scheme}://127.0.0.1:{port}/mcp", json=init, headers=headers, verify=False, timeout=30).status_code
        assert status == 200, f"{sub} answered HTTP {status}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    # Stopped by Ctrl-C: a clean exit, or death by the re-raised SIGINT (uvicorn's way), 128 + 2 in bash.
    return (0 if proc.returncode == 130 else proc.returncode), out, err


def _run_stdio(line: str, ws: Path) -> tuple[int, str, str]:
    """An MCP session over the server's stdin/stdout: initialize, tools/list, then EOF."""
    proc = _popen(line, ws, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True)
    reader.start()
    messages = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize",
         "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "readme", "version": "1"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
    ]
    proc.stdin.write("".join(json.dumps(m) + "\n" for m in messages))
    proc.stdin.flush()
    seen = []
    while not any(m.get("id") == 2 for m in seen):
        seen.append(json.loads(lines.get(timeout=60)))
    tools = next(m for m in seen if m.get("id") == 2)["result"]["tools"]
    assert len(tools) > 5, tools
    proc.stdin.close()
    err = proc.stderr.read()
    proc.wait(timeout=60)
    reader.join(timeout=10)
    return proc.returncode, "".join(json.dumps(m) + "\n" for m in seen), err


def _run_step(step: rx.Step, ws: Path) -> tuple[int, str, str]:
    line = rx.for_this_host(step.command, parent=os.getpid())
    for name in rx.outputs(line):
        for suffix in ("", "-wal", "-shm"):
            Path(ws / f"{name}{suffix}").unlink(missing_ok=True)
    stand_ins = [p for p in (_stand_in(ws, name) for name in rx.pgrep_names(step.command)) if p is not None]
    try:
        sub, argv = rx.subcommand(line), rx.words(line)
        if sub == "dashboard" or (sub == "mcp" and "--http" in argv):
            return _run_http(line, ws, sub, argv)
        if sub == "mcp":
            return _run_stdio(line, ws)
        return _run_plain(line, ws)
    finally:
        for p in stand_ins:
            p.kill()
            p.wait()


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.id for e in EXAMPLES])
def test_example_runs_and_says_what_it_claims(example: rx.Example, seed: Path, tmp_path: Path) -> None:
    if example.skip:
        pytest.skip(f"{example.where} marks it: not run here: {example.skip}")
    ws = tmp_path / "ws"
    shutil.copytree(seed, ws, symlinks=True)
    (tmp_path / "shared").symlink_to(SHARED_DATA.parent)  # `../shared/data/...` as from the repository root
    for step in example.steps:
        if step.skip:
            continue
        rc, out, err = _run_step(step, ws)
        both = out + err
        context = f"{example.where}\n$ {step.line}\n--- stdout\n{out[-3000:]}\n--- stderr\n{err[-3000:]}"
        assert rc == step.exit_code, context
        assert "Traceback (most recent call last)" not in both, context
        assert not any(ln.startswith("libbpf:") for ln in err.splitlines()), context
        for text in step.quoted:
            assert text in both, f"the comment says {text!r}\n{context}"
        missing = rx.matches(step.expected, out)
        assert missing is None, f"the README shows {missing!r}\n{context}"


def test_every_command_has_an_example_that_runs() -> None:
    """A command nobody shows is a command nobody checks."""
    from whyprobe.commands import COMMANDS

    shown = {rx.subcommand(s.command) for e in EXAMPLES for s in e.steps if not s.skip}
    assert {c.replace("_", "-") for c in COMMANDS} <= shown


def test_the_collector_reads_tables_blocks_and_comments() -> None:
    # GIVEN a README with an inline example, a marked one and a console block
    text = (
        "| a | `whyprobe stats t.db --json` |\n|---|---|\n\n"
        "`whyprobe export t.db --otlp http://collector:4318  # not run here: needs a collector`\n\n"
        '```console\n$ whyprobe explain t.db --op nosuch   # exit 2: "unknown op"\nwhyprobe: unknown op ...\n```\n'
    )
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"readme-collector-{os.getpid()}.md"
    path.write_text(text)
    try:
        found = rx.readme_examples(path)
    finally:
        path.unlink()
    assert [e.steps[0].command for e in found] == [
        "whyprobe stats t.db --json", "whyprobe export t.db --otlp http://collector:4318", "whyprobe explain t.db --op nosuch",
    ]
    assert found[1].skip == "needs a collector" and found[0].skip is None
    step = found[2].steps[0]
    assert (step.exit_code, step.quoted, step.expected) == (2, ["unknown op"], ["whyprobe: unknown op ..."])
    assert rx.matches(step.expected, "x\nwhyprobe: unknown op 'nosuch'; the ops\n") is None
    assert rx.matches(step.expected, "whyprobe: No findings\n") == "whyprobe: unknown op ..."
    assert rx.for_this_host("sudo whyprobe spy --pairs") == "whyprobe spy --duration 2s --pairs"
    assert rx.for_this_host("sudo whyprobe trace --pid $(pgrep -f vllm) --duration 30s --out t.db") == \
        "whyprobe trace --pid $(pgrep -f vllm) --duration 2s --out t.db"
    assert rx.for_this_host("sudo whyprobe spy --out mcp.db --cmd -- claude-code") == "whyprobe spy --out mcp.db --cmd -- claude-code"
    assert rx.outputs("whyprobe footprint --cmd -- python my_agent.py --out x.db") == ["footprint.db"]
    assert rx.for_this_host("whyprobe spy --pid $(pgrep -f mcp-server-git)", parent=42) == \
        "whyprobe spy --duration 2s --pid $(pgrep -P 42 -f mcp-server-git)"


def test_folded_stacks_of_a_real_trace_read_from_module_to_cuda(seed: Path) -> None:
    # GIVEN train.py traced with --stack through the real libcudart WHEN folded for a flame graph
    done = subprocess.run(["whyprobe", "stacks", "t.db", "--folded", "--op", "cudaMalloc"], cwd=seed, env=_env(seed),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [ln for ln in done.stdout.splitlines() if "<module>" in ln]
    assert lines, done.stdout
    # THEN each path starts at <module>, passes step() and ends in the native cudaMalloc, then the op
    for line in lines:
        frames = line.rsplit(" ", 1)[0].split(";")
        assert frames[0].startswith("<module>_(") and frames[1].startswith("step_(") and frames[-1] == "cudaMalloc"
        assert frames[-2].startswith("cudaMalloc_(") and "libcudart.so.12" in frames[-2]
