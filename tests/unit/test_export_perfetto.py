"""Perfetto protobuf and Chrome JSON exports, parsed back and checked against the database."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter, defaultdict
from pathlib import Path

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from export_synth import FINDING_SUMMARY, T0, make_db
from whyprobe.commands import main

INGERO = "pytorch-dataloader-starvation.db"


def _perfetto(path: Path):
    trace = pb.Trace.FromString(path.read_bytes())
    tracks = {p.track_descriptor.uuid: p.track_descriptor for p in trace.packet if p.HasField("track_descriptor")}
    events = [p for p in trace.packet if p.HasField("track_event")]
    return trace, tracks, events


def _slices(events) -> list[dict]:
    """Pair BEGIN/END per track (a stack per track, as trace processor does) into slices and instants."""
    open_by_track: dict[int, list] = defaultdict(list)
    out = []
    for p in events:
        e = p.track_event
        args = {a.name: (a.string_value if a.HasField("string_value") else a.bool_value if a.HasField("bool_value") else a.int_value) for a in e.debug_annotations}
        if e.type == pb.TrackEvent.TYPE_SLICE_BEGIN:
            open_by_track[e.track_uuid].append(dict(track=e.track_uuid, ts=p.timestamp, name=e.name, cat=list(e.categories), args=args))
        elif e.type == pb.TrackEvent.TYPE_SLICE_END:
            item = open_by_track[e.track_uuid].pop()
            item["dur"] = p.timestamp - item["ts"]
            out.append(item)
        else:
            out.append(dict(track=e.track_uuid, ts=p.timestamp, name=e.name, cat=list(e.categories), args=args, dur=0))
    assert not any(open_by_track.values()), "unclosed slices"
    return out


def _thread_of(tracks, uuid: int):
    desc = tracks[uuid]
    while not desc.HasField("thread") and desc.parent_uuid:
        desc = tracks[desc.parent_uuid]
    return desc


def test_perfetto_export_of_a_whyprobe_trace(tmp_path: Path, capsys) -> None:
    db = make_db(tmp_path / "t.db")
    out = tmp_path / "t.pftrace"
    # WHEN exporting
    assert main(["export", str(db), "--perfetto", str(out)]) == 0
    assert capsys.readouterr().err.startswith(f"Wrote {out} (")
    trace, tracks, events = _perfetto(out)
    # THEN the first packet clears incremental state and every packet is on one sequence
    assert trace.packet[0].sequence_flags == pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
    assert {p.trusted_packet_sequence_id for p in trace.packet} == {trace.packet[0].trusted_packet_sequence_id}
    # AND processes and threads carry their names
    processes = {d.process.pid: d.process.process_name for d in tracks.values() if d.HasField("process")}
    threads = {d.thread.tid: (d.thread.pid, d.thread.thread_name) for d in tracks.values() if d.HasField("thread")}
    assert processes == {100: "trainer", 300: "mcp-server"}
    assert threads == {100: (100, "trainer 100"), 101: (100, "loader 101"), 300: (300, "mcp-server 300")}
    slices = _slices(events)
    by_cat = Counter(s["cat"][0] for s in slices)
    # AND one slice/instant per event of each kind, plus the finding and the tool call
    assert by_cat == {"cuda": 5, "off-CPU": 2, "block I/O": 2, "host": 1, "finding": 1, "mcp": 1}
    by_id = {s["args"]["event_id"]: s for s in slices if "event_id" in s["args"]}
    assert set(by_id) == set(range(1, 11))
    # AND CUDA calls sit on their thread's own track, with exact times, names and args
    sync = by_id[8]
    assert (sync["name"], sync["ts"], sync["dur"]) == ("cudaStreamSynchronize", T0 + 100_000, 2_000_000)
    assert sync["args"]["ret_code"] == 700
    assert tracks[sync["track"]].thread.tid == 100
    # the driver call nested inside the runtime call shares the track (proper nesting)
    assert by_id[3]["track"] == by_id[2]["track"]
    # AND off-CPU slices are on a child track of the thread, with preemptor and waker
    preempted, blocked = by_id[5], by_id[9]
    assert tracks[preempted["track"]].name == "off-CPU" and _thread_of(tracks, preempted["track"]).thread.tid == 100
    assert preempted["args"]["preempted"] is True
    assert (preempted["args"]["preemptor_tid"], preempted["args"]["preemptor"]) == (200, "hog")
    assert blocked["args"]["preempted"] is False
    assert (blocked["args"]["waker_tid"], blocked["args"]["waker"], blocked["args"]["waker_pid"]) == (101, "loader", 100)
    assert blocked["dur"] == 1_000_000
    # AND overlapping block requests take two lanes
    assert {tracks[by_id[6]["track"]].name, tracks[by_id[7]["track"]].name} == {"block I/O", "block I/O #2"}
    assert by_id[6]["args"]["bytes"] == 4096
    # AND the finding is an instant on a global track, the tool call a slice with its footprint
    finding = next(s for s in slices if s["cat"] == ["finding"])
    assert (finding["ts"], finding["dur"], finding["name"]) == (T0 + 100_000, 0, f"HIGH: {FINDING_SUMMARY}")
    call = next(s for s in slices if s["cat"] == ["mcp"])
    assert (call["name"], call["ts"], call["dur"]) == ("read_file", T0 + 3_000_000, 2_000_000)
    assert (call["args"]["syscalls"], call["args"]["files"], call["args"]["cpu_sys_ns"]) == (12, '["/etc/hosts"]', 2000)
    assert tracks[tracks[call["track"]].parent_uuid].process.pid == 300


def test_min_duration_keeps_long_calls_and_instants(tmp_path: Path) -> None:
    db = make_db(tmp_path / "t.db")
    out = tmp_path / "t.pftrace"
    assert main(["export", str(db), "--perfetto", str(out), "--min-duration", "100us"]) == 0
    slices = _slices(_perfetto(out)[2])
    ids = sorted(s["args"]["event_id"] for s in slices if "event_id" in s["args"])
    assert ids == [1, 6, 7, 8, 9, 10]  # exec instant + everything >= 100 µs


def test_perfetto_export_of_an_ingero_trace_matches_its_event_counts(tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "i.pftrace"
    assert main(["export", str(shared_data / INGERO), "--perfetto", str(out)]) == 0
    _, tracks, events = _perfetto(out)
    slices = _slices(events)
    conn = sqlite3.connect(f"file:{shared_data / INGERO}?mode=ro", uri=True)
    per_op = Counter({name: n for name, n in conn.execute(
        "SELECT o.name, count(*) FROM events e JOIN ops o ON o.source_id = e.source AND o.op_id = e.op GROUP BY o.name")})
    chains = conn.execute("SELECT count(*) FROM causal_chains").fetchone()[0]
    first = conn.execute("SELECT min(timestamp) FROM events").fetchone()[0]
    assert Counter(s["name"] for s in slices if "event_id" in s["args"]) == per_op
    assert sum(1 for s in slices if s["cat"] == ["finding"]) == chains == 316
    assert min(s["ts"] for s in slices if "event_id" in s["args"]) == first
    processes = {d.process.pid: d.process.process_name for d in tracks.values() if d.HasField("process")}
    threads = {d.thread.tid: d.thread.thread_name for d in tracks.values() if d.HasField("thread")}
    assert (processes[2233], processes[429]) == ("python3", "systemd-journal")
    assert (threads[2233], threads[2264]) == ("python3 2233", "systemd-journal 2264")  # unnamed tid: its process's name


def test_chrome_json_export(tmp_path: Path, shared_data: Path) -> None:
    db = make_db(tmp_path / "t.db")
    out = tmp_path / "t.json"
    assert main(["export", str(db), "--chrome", str(out)]) == 0
    events = json.loads(out.read_text())["traceEvents"]
    # THEN the shape matches the reference Chrome trace: M metadata, X slices, i instants
    reference = json.loads((shared_data / "sample-cluster-trace.json").read_text())
    assert {e["ph"] for e in reference} == {"M", "X", "i"} == {e["ph"] for e in events}
    names = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events if e["ph"] == "M" and e["name"].endswith("_name")}
    assert names[(100, None)] == "trainer" and names[(100, 101)] == "loader 101"
    sync = next(e for e in events if e.get("args", {}).get("event_id") == 8)
    assert (sync["ph"], sync["ts"], sync["dur"], sync["pid"], sync["tid"]) == ("X", T0 / 1000 + 100, 2000.0, 100, 100)
    offcpu = next(e for e in events if e.get("args", {}).get("event_id") == 5)
    assert names[(100, offcpu["tid"])] == "trainer 100 off-CPU"
    assert Counter(e["cat"] for e in events if e["ph"] in "Xi") == {"cuda": 5, "off-CPU": 2, "block I/O": 2, "host": 1, "finding": 1, "mcp": 1}
    assert next(e for e in events if e["ph"] == "i" and e["cat"] == "finding")["s"] == "t"


def test_bad_inputs_are_one_line_and_leave_nothing(tmp_path: Path, capsys) -> None:
    db = make_db(tmp_path / "t.db")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    cases = [
        (["export", str(tmp_path / "missing.db"), "--perfetto", str(tmp_path / "o.pftrace")], f"whyprobe: No such database: {tmp_path / 'missing.db'}\n"),
        (["export", str(db), "--perfetto", str(blocker / "o.pftrace")], f"whyprobe: No such directory: {blocker} (create it or choose another output path)\n"),
        (["export", str(db), "--chrome", str(blocker)], f"whyprobe: File exists, will not overwrite without --force: {blocker}\n"),
        (["export", str(db)], "whyprobe: give exactly one of --perfetto, --chrome, --otlp, --parquet or --duckdb\n"),
        (["export", str(db), "--chrome", "x.json", "--min-duration", "soon"], "whyprobe: --min-duration 'soon': expected a duration like 30s, 250ms, 5m or 1h. Try 'whyprobe export --help'.\n"),
    ]
    for argv, message in cases:
        assert main(argv) != 0
        assert capsys.readouterr().err == message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "t.db"]


def test_failure_midway_leaves_no_partial_file(tmp_path: Path, monkeypatch, capsys) -> None:
    db = make_db(tmp_path / "t.db")
    import whyprobe.export.perfetto as perfetto

    def explode(timeline, out):
        out.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(perfetto, "write_perfetto", explode)
    assert main(["export", str(db), "--perfetto", str(tmp_path / "o.pftrace")]) == 1
    assert capsys.readouterr().err == f"whyprobe: cannot write {tmp_path / 'o.pftrace'}: No space left on device\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.db"]


def test_merged_fleet_trace_keeps_nodes_apart(tmp_path: Path, shared_data: Path) -> None:
    # GIVEN Ingero's 3-node merged trace (events.node) WHEN exported
    out = tmp_path / "c.pftrace"
    assert main(["export", str(shared_data / "sample-cluster.db"), "--perfetto", str(out)]) == 0
    _, tracks, events = _perfetto(out)
    processes = {d.process.pid: d.process.process_name for d in tracks.values() if d.HasField("process")}
    # THEN each node has its own pid space (node index << 22) and says which node and pid it is
    assert processes[1887] == "gpu-node-01: python3 (pid 1887)"
    assert processes[(1 << 22) | 4599] == "gpu-node-02: python3 (pid 4599)"
    assert processes[(2 << 22) | 4883] == "gpu-node-03: python3 (pid 4883)"
    slices = _slices(events)
    assert sum(1 for s in slices if "event_id" in s["args"]) == 600
    assert sum(1 for s in slices if s["cat"] == ["finding"]) == 6
