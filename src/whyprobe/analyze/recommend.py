"""Summaries and concrete fixes for a finding, written from its evidence (numbers, who, where)."""

from __future__ import annotations

from whyprobe.analyze.samples import frame_text, frame_where
from whyprobe.units import fmt_bytes, fmt_ns

_LAUNCH_WORDS = ("Launch", "launch")
# DataLoader advice for a GPU gap needs at least this share of its samples in data-loading code.
DATA_LOADING_SHARE = 0.2
_COPY_WORDS = ("Memcpy", "memcpy")


def thread_label(comm: str, tid: int, pid: int) -> str:
    who = f"`{comm}` " if comm else ""
    return f"{who}(tid {tid}, pid {pid})" if tid != pid else f"{who}(pid {pid})"


def _cause(f: dict, kind: str) -> dict | None:
    return next((c for c in f["causes"] if c["kind"] == kind), None)


def _blocker_text(b: dict) -> str:
    where = f" on CPU {b['cpu']}" if "cpu" in b else ""
    return f"{thread_label(b['comm'], b['tid'], b['pid'])}{where}"


def _split(f: dict) -> str:
    total = max(f["lost_ns"], 1)
    parts = [f"{c['kind']} {fmt_ns(c['explained_ns'])} ({100 * c['explained_ns'] / total:.0f}%)" for c in f["causes"]]
    return ", ".join(parts)


def _kernel_list(f: dict, limit: int = 3) -> str:
    names = [k["kernel"] for k in f.get("kernels", [])]
    text = ", ".join(f"`{n}`" for n in names[:limit])
    return text + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _first_launch(f: dict) -> str:
    """What a cold launch paid for, naming the kernels when the trace named them."""
    if f.get("kernels"):
        return f"first launch of {_kernel_list(f)}: lazy module loading / JIT"
    return "context creation / lazy module loading"


def _peers_text(c: dict) -> str:
    peers = c.get("peers") or []
    if not peers:
        return ""
    shown = ", ".join(f"{p['peer']} ({p['retransmits']} retransmit{'s' if p['retransmits'] != 1 else ''})" for p in peers[:3])
    return f" with TCP retransmits to {shown}"


def _sampled(f: dict, where: str) -> str:
    """"; 71% of gap samples in sampler.py:212 compute_logprobs" from the on_cpu cause's frames, or ""."""
    c = _cause(f, "on_cpu")
    if not c or not c.get("frames"):
        return ""
    top = c["frames"][0]
    more = "".join(f", {100 * x['share']:.0f}% in {frame_text(x)}" for x in c["frames"][1:3])
    return f"; {100 * top['share']:.0f}% of {where} samples in {frame_text(top)}{more}"


def summarize(f: dict) -> str:
    me = thread_label(f.get("comm", ""), f["tid"], f.get("pid", 0))
    top = f["causes"][0] if f["causes"] else None
    if f["kind"] == "gap":
        gaps = f.get("gaps", [])
        longest = fmt_ns(max((g["ns"] for g in gaps), default=0))
        head = (
            f"GPU starved: {me} made no CUDA calls for {fmt_ns(f['lost_ns'])} in {f['slow_calls']} stretch(es) "
            f"(longest {longest}, {100 * f.get('window_share', 0):.0f}% of the window)"
        )
        if f["dominant_cause"] == "on_cpu":
            return f"{head}; the thread was busy on-CPU between steps: {_split(f)}{_sampled(f, 'gap')}."
        return f"{head}; where its time went: {_split(f)}{_sampled(f, 'gap')}."
    n, op = f["slow_calls"], f["op"]
    head = f"{n} slow {op} call(s) on {me} (p50 {fmt_ns(f['p50_ns'])}, p99 {fmt_ns(f['p99_ns'])}, {f['tail_ratio']:.1f}x) lost {fmt_ns(f['lost_ns'])} over the median"
    if top is None or top["kind"] == "unknown":
        return f"{head}; no recorded evidence overlaps them ({_split(f)})."
    avg = top["explained_ns"] / max(top["slow_calls"], 1)
    what = {
        "off_cpu": "off-CPU",
        "io": "waiting on block I/O",
        "network": "in network send/recv" + _peers_text(top),
        "syscall": "in syscalls",
        "sync_wait": "waiting for earlier GPU work (GPU-bound, not host-bound)",
        "cold_start": f"paying first-use cost ({_first_launch(f)})",
        "on_cpu": "on-CPU inside the call (runtime/driver work on the host)",
        "memory": "stalled in memory reclaim, compaction or major page faults",
    }[top["kind"]]
    who = ""
    if top["blockers"] and top["kind"] in ("off_cpu", "io", "sync_wait"):
        b = top["blockers"][0]
        verb = {"off_cpu": "by", "io": "issued by", "sync_wait": "queued by"}[top["kind"]]
        who = f", mostly {verb} {_blocker_text(b)}"
    return f"{top['slow_calls']} of {n} slow {op} call(s) on {me} were {what} for {fmt_ns(avg)} on average{who}; {_split(f)}{_sampled(f, 'slow-call')}."


def recommend(f: dict) -> list[str]:
    """Fixes for the causes that explain at least a fifth of the finding (or its top cause)."""
    me = thread_label(f.get("comm", ""), f["tid"], f.get("pid", 0))
    total = max(f["lost_ns"], 1)
    out: list[str] = []
    for i, c in enumerate(f["causes"]):
        if i and c["explained_ns"] < 0.2 * total:
            continue
        out.extend(_fix(f, c, me))
    off = _cause(f, "off_cpu")
    if any("Ingero" in n for n in f.get("notes", [])) and off and off["explained_ns"] >= 0.2 * total:
        out.append("Record with `whyprobe trace` to see who preempted or woke the thread (this database has no preemptor/waker fields).")
    return list(dict.fromkeys(out))


def _fix(f: dict, c: dict, me: str) -> list[str]:
    kind, op, blockers = c["kind"], f["op"], c["blockers"]
    if kind == "off_cpu":
        pre = [b for b in blockers if "cpu" in b and b["tid"] != f["tid"]]
        if pre:
            b = pre[0]
            return [
                f"Keep {thread_label(b['comm'], b['tid'], b['pid'])} off CPU {b['cpu']}, where {me} runs: give {me} its own cpuset "
                f"(e.g. `taskset -pc <dedicated cpus> {f['tid']}` or systemd AllowedCPUs=) and move "
                f"`{b['comm'] or b['tid']}` elsewhere (`taskset -apc <other cpus> {b['pid']}`), or lower its priority (`renice +10 -p {b['pid']}`)."
            ]
        if blockers:
            b = blockers[0]
            return [
                f"{me} sleeps until {thread_label(b['comm'], b['tid'], b['pid'])} wakes it: if that is a data-loading worker, "
                "raise DataLoader num_workers / prefetch_factor so batches are ready; if it is a lock holder, shorten the critical section."
            ]
        return [f"{me} is off-CPU during these calls; record with sched probes (whyprobe trace) to see who preempts or wakes it."]
    if kind == "io":
        return [f"Move file I/O off {me}: read ahead in DataLoader workers or a background thread, or cache the data in memory / on faster storage."]
    if kind == "network":
        peers = c.get("peers") or []
        if peers:
            p = peers[0]
            return [
                f"{me} waited on TCP retransmits to {p['peer']} ({p['retransmits']} during the slow calls): the path drops packets. "
                "Check the link and NIC counters (`ip -s link`, `nstat TcpRetransSegs`), queue discipline and MTU, "
                "and keep blocking network calls off the thread that drives the GPU."
            ]
        return [f"Network waits on {me}: overlap communication with compute (async send/recv), and check TCP retransmits on the path."]
    if kind == "memory":
        return [
            f"{me} stalled in memory reclaim / page faults: raise the cgroup's memory.high/memory.max or the job's memory, "
            "cut the working set (smaller batches, release cached tensors), and avoid swapping the training process."
        ]
    if kind == "syscall":
        return [f"Syscalls on {me} take this time: move them off the thread that drives the GPU."]
    if kind == "sync_wait":
        return [
            f"{op} on {me} waits for GPU work queued before it — the GPU is the bottleneck here, not the host: "
            "drop synchronizations inside the loop (.item(), .cpu(), explicit synchronize), overlap with streams/events, "
            "and profile the kernels themselves (Nsight Systems / Compute)."
        ]
    if kind == "cold_start":
        what = f"the first launch of {_kernel_list(f)}" if f.get("kernels") else f"the first {op} calls"
        return [
            f"{what[0].upper()}{what[1:]} pay{'s' if f.get('kernel') else ''} CUDA context creation / lazy module loading: run a warm-up step before timing, "
            "or set CUDA_MODULE_LOADING=EAGER to pay it once at start-up."
        ]
    if kind == "on_cpu":
        if f["kind"] == "gap":
            return [_gap_on_cpu_fix(c, me)]
        if any(w in op for w in _COPY_WORDS):
            size = f" ({fmt_bytes(f['bytes'])} per call)" if f.get("bytes") else ""
            return [f"{op}{size} runs on the host CPU: copy from pinned memory (pin_memory=True / cudaHostAlloc) so the DMA engine does it asynchronously."]
        if any(w in op for w in _LAUNCH_WORDS):
            return [f"{op} itself is CPU-bound on {me}: capture the launch loop in a CUDA graph (torch.cuda.graphs / cudaGraphLaunch) to cut per-launch host cost."]
        return [f"{op} spends the time on-CPU in the CUDA runtime/driver on {me}; `whyprobe stacks --op {op}` shows the call path."]
    return [
        f"{fmt_ns(c['explained_ns'])} of {op} on {me} is not covered by any recorded evidence: "
        "record with `whyprobe trace --stack` and the sched/block/net probes to explain it."
    ]


def _gap_on_cpu_fix(c: dict, me: str) -> str:
    """Advice that follows the samples: DataLoader only when the thread was seen loading data."""
    frames = c.get("frames") or []
    if not c.get("samples"):
        # No samples to go by (a trace recorded without them, an Ingero file, the live view).
        return (
            f"{me} computes on the CPU between GPU steps, and no on-CPU sample says what: `whyprobe stacks --on-cpu` shows it "
            "for traces recorded by `whyprobe trace` (sampling is on by default). If it is data preprocessing, "
            "move it to DataLoader workers (num_workers > 0, pin_memory=True, persistent_workers=True) so the thread only feeds the GPU."
        )
    if c.get("data_loading_share", 0) >= DATA_LOADING_SHARE:
        return (
            f"{me} loads and prepares data itself between GPU steps ({100 * c['data_loading_share']:.0f}% of gap samples in data-loading code): "
            "move it to DataLoader workers (num_workers > 0, pin_memory=True, persistent_workers=True, prefetch_factor) so batches are ready."
        )
    if not frames:
        return f"{me} computes on the CPU between GPU steps in code without symbols: `whyprobe stacks --on-cpu` shows the raw stacks."
    top = frames[0]
    return (
        f"{me} runs `{top['function']}` ({frame_where(top) or 'no file'}, {100 * top['share']:.0f}% of gap samples) between GPU steps while the GPU waits: "
        "take it off the GPU's critical path: overlap it with GPU work (queue the next step's kernels before computing it), "
        "move it to another thread or process, or batch it (one vectorized call per step instead of per item, or on the GPU). "
        "`whyprobe stacks --on-cpu` shows the full stacks."
    )
