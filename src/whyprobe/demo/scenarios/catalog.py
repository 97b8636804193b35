"""The demo scenarios: what each runs, and what `explain` must say about it.

Each scenario is one run of `train_loop` (workloads/scenario_train.c) on the
stand-in CUDA runtime, whose calls take controlled time, so the tails and gaps
are real and so is the kernel evidence under them. `check(doc)` states the
expected top finding as a test: the CI kernel tests, the replay tests and
`record_replays.py` all judge a run with it, and the demo prints its verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from whyprobe.errors import CommandError

HOG_COMM = "cpu-hog"
LOADER_PREFIX = "loader-"
# Families every scenario records: CUDA calls plus the host evidence explain uses.
PROBES = ("cuda", "sched", "block", "proc")
NAMED_BLOCKERS = 3  # as many as `explain` prints per cause
MIN_HOG_SHARE = 0.2


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str  # one line, for --list
    expect: str  # the finding a correct explain reports, in words
    args: tuple[str, ...] = ()  # train_loop options; {cpu} and {io_file} are filled in at run time
    env: dict[str, str] = field(default_factory=dict)  # stand-in knobs (STANDIN_*)
    hog: bool = False  # run a `cpu-hog` pinned to the training thread's CPU (not traced)
    io_file_mb: int = 0  # a data file of this size next to the output, for O_DIRECT reads
    check: Callable[[dict], list[str]] = lambda doc: []
    # "explain": train_loop traced, judged on the explain document; "footprint": the MCP scenario,
    # recorded by `whyprobe footprint`, judged on the footprint document.
    kind: str = "explain"

    def verdict(self, doc: dict) -> list[str]:
        """What is wrong with `doc` (explain or footprint document) for this scenario; empty when it says what it should."""
        return self.check(doc)


def _top(doc: dict) -> dict | None:
    return doc["findings"][0] if doc.get("findings") else None


def _cause(f: dict, kind: str) -> dict | None:
    return next((c for c in f["causes"] if c["kind"] == kind), None)


def _expect_top(doc: dict, *, kind: str, cause: str, op: str | None = None) -> tuple[dict | None, list[str]]:
    top = _top(doc)
    if top is None:
        return None, ["explain found nothing"]
    got = f"{top['severity']} {top['kind']} {top['op']} ({top['dominant_cause']})"
    problems = []
    if top["severity"] != "high" or top["kind"] != kind or (op is not None and top["op"] != op) or top["dominant_cause"] != cause:
        problems.append(f"top finding is {got}, expected high {kind} {op or ''} ({cause})".replace("  ", " "))
    return top, problems


def _check_contention(doc: dict) -> list[str]:
    top, problems = _expect_top(doc, kind="tail", op="cudaLaunchKernel", cause="off_cpu")
    if top is not None and not problems:
        cause = _cause(top, "off_cpu")
        hog = next((b for b in cause["blockers"][:NAMED_BLOCKERS] if b["comm"] == HOG_COMM), None)
        # Whatever else shares the core (kworkers, softirqs, other jobs) may take the CPU first
        # now and then; the hog must still be named, for a real share of the lost time.
        if hog is None or hog["ns"] < MIN_HOG_SHARE * cause["explained_ns"]:
            named = ", ".join(f"{b['comm']} {b['ns'] / max(cause['explained_ns'], 1):.0%}" for b in cause["blockers"][:NAMED_BLOCKERS])
            problems.append(f"preemptors named: {named or 'none'}; expected {HOG_COMM} with at least {MIN_HOG_SHARE:.0%}")
    return problems


def _check_io(doc: dict) -> list[str]:
    return _expect_top(doc, kind="gap", cause="io")[1]


def _check_loader(doc: dict) -> list[str]:
    top, problems = _expect_top(doc, kind="gap", cause="off_cpu")
    if top is not None and not problems:
        blockers = _cause(top, "off_cpu")["blockers"]
        if not blockers or not blockers[0]["comm"].startswith(LOADER_PREFIX):
            problems.append(f"top waker is {blockers[0] if blockers else 'nobody'}, expected a {LOADER_PREFIX}N thread")
    return problems


def _check_launch(doc: dict) -> list[str]:
    top, problems = _expect_top(doc, kind="tail", op="cudaLaunchKernel", cause="on_cpu")
    if top is not None and not problems and not any("CUDA graph" in r for r in top["recommendations"]):
        problems.append("no CUDA graph recommendation for the CPU-bound launches")
    return problems


def _host_blamed(doc: dict) -> list[str]:
    return [
        f"high-severity {f['kind']} {f['op']} blamed on {f['dominant_cause']}"
        for f in doc.get("findings", [])
        if f["severity"] == "high" and f["dominant_cause"] in ("off_cpu", "io", "network", "syscall", "on_cpu")
    ]


def _check_sync(doc: dict) -> list[str]:
    return _expect_top(doc, kind="tail", op="cudaDeviceSynchronize", cause="sync_wait")[1] + _host_blamed(doc)


def _check_clean(doc: dict) -> list[str]:
    if "findings" not in doc:
        return ["not an explain document"]
    return [f"false alarm: high-severity {f['kind']} {f['op']} ({f['dominant_cause']})" for f in doc.get("findings", []) if f["severity"] == "high"]


def _check_mcp(doc: dict) -> list[str]:
    from whyprobe.demo.scenarios.mcp import NOTES

    tools = {t["tool_name"]: t for t in doc.get("tools", [])}
    search, read = tools.get("search_notes"), tools.get("read_note")
    if not search or not read:
        return [f"tool calls recorded: {', '.join(tools) or 'none'}; expected search_notes and read_note"]
    problems = []
    if not any(c.startswith("grep ") for c in search["children"]):
        problems.append(f"search_notes children: {search['children']}; expected a grep")
    notes_opened = lambda t: {Path(f).name for f in t["files"]} & set(NOTES)  # noqa: E731
    if notes_opened(search) != set(NOTES):
        problems.append(f"search_notes (through grep) opened notes {sorted(notes_opened(search))}; expected all of {sorted(NOTES)}")
    if not notes_opened(read) or "groceries.md" in notes_opened(read):
        problems.append(f"read_note opened notes {sorted(notes_opened(read))}; expected only the ones it was asked for")
    return problems


_BUSY_GPU = {"STANDIN_LAUNCH_NS": "20000", "STANDIN_KERNEL_NS": "1000000"}

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "cpu-contention",
            "a CPU hog (nice -5) pinned to the training thread's core preempts its kernel launches",
            f"slow cudaLaunchKernel calls explained by off-CPU preemption, naming `{HOG_COMM}` as the preemptor",
            args=("-n", "8", "-c", "{cpu}"),
            # No queued GPU work at the sync: the launches are where the time goes.
            env={"STANDIN_LAUNCH_NS": "100000", "STANDIN_KERNEL_NS": "0"},
            hog=True,
            check=_check_contention,
        ),
        Scenario(
            "io-stall",
            "the training thread does synchronous disk reads + fdatasync between steps",
            "GPU-idle gaps on the training thread explained by block I/O",
            args=("-n", "8", "-i", "{io_file}:80"),
            env=_BUSY_GPU,
            io_file_mb=32,
            check=_check_io,
        ),
        Scenario(
            "dataloader-starvation",
            "one data-loading worker cannot keep up with the training loop",
            f"GPU-idle gaps on the training thread, blocked until a `{LOADER_PREFIX}0` worker wakes it",
            args=("-n", "8", "-l", "1:100"),
            env=_BUSY_GPU,
            check=_check_loader,
        ),
        Scenario(
            "launch-bound",
            "tiny kernels: host launch overhead dominates, every 16th launch costs 8x",
            "slow cudaLaunchKernel calls spent on-CPU in the runtime, with a CUDA graph recommendation",
            args=("-n", "64", "-F", "16:8"),
            env={"STANDIN_LAUNCH_NS": "20000", "STANDIN_KERNEL_NS": "3000"},
            check=_check_launch,
        ),
        Scenario(
            "sync-wait",
            "GPU-bound: every 5th step queues 30 kernels, so cudaDeviceSynchronize waits on the GPU",
            "slow cudaDeviceSynchronize calls explained by earlier GPU work (sync_wait); the host is not blamed",
            args=("-n", "2", "-B", "5:30"),
            env={"STANDIN_LAUNCH_NS": "5000", "STANDIN_KERNEL_NS": "2000000"},
            check=_check_sync,
        ),
        Scenario(
            "mcp-tool",
            "an MCP client calls a real MCP server whose tools spawn grep and read files (footprint + wire capture)",
            "search_notes traced to its grep child opening every note, read_note to the one file it opened",
            kind="footprint",
            check=_check_mcp,
        ),
        Scenario(
            "clean",
            "a healthy loop with nothing in its way",
            "no high-severity finding (no false alarm)",
            args=("-n", "8"),
            env={"STANDIN_LAUNCH_NS": "20000", "STANDIN_KERNEL_NS": "300000"},
            check=_check_clean,
        ),
    )
}
DEFAULT = "cpu-contention"


def document(name: str, db: Path) -> dict:
    """What scenario `name` is judged on, from its database: the explain document, or the
    footprint document for the MCP scenario."""
    if get(name).kind == "footprint":
        from whyprobe.demo.scenarios.mcp import footprint_doc

        return footprint_doc(db)
    from whyprobe.analyze.explain import explain
    from whyprobe.store.reader import open_trace

    with open_trace(db) as trace:
        return explain(trace)


def get(name: str) -> Scenario:
    """The scenario called `name`; CommandError (exit 2) naming the valid ones otherwise."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise CommandError(f"Unknown scenario {name!r}: choose one of {', '.join(SCENARIOS)}", 2) from None
