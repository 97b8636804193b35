"""Perfetto (.pftrace protobuf) and Chrome trace JSON from a timeline.

Protobuf messages come from the `perfetto` package's generated protos
(`perfetto.protos.perfetto.trace.perfetto_trace_pb2`); packets are streamed to
the file with its StreamingTraceProtoBuilder, so a large trace never sits in
memory as one message. Slices are TYPE_SLICE_BEGIN/END pairs on explicit
track uuids, instants TYPE_INSTANT; args become debug annotations. Packets are
written in timestamp order, an END before a BEGIN at the same instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

import orjson
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb
from perfetto.trace_builder.proto_builder import StreamingTraceProtoBuilder

from whyprobe.export.timeline import ScalarArg, Timeline

__all__ = ["write_perfetto", "write_chrome", "SEQUENCE_ID"]

SEQUENCE_ID = 0x5759  # any non-zero id; one writer sequence for the whole trace
_CHROME_SYNTHETIC_TID = 1 << 30  # chrome JSON tids for child tracks, clear of real tids


def write_perfetto(timeline: Timeline, out: IO[bytes]) -> int:
    """Stream the timeline as Perfetto TracePackets; returns the number of packets written."""
    builder = StreamingTraceProtoBuilder(out)
    written = 0
    for track in timeline.tracks:
        packet = builder.create_packet()
        packet.trusted_packet_sequence_id = SEQUENCE_ID
        if written == 0:
            packet.sequence_flags = pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
        desc = packet.track_descriptor
        desc.uuid = track.uuid
        if track.kind == "process":
            desc.process.pid = track.pid
            desc.process.process_name = track.name
        elif track.kind == "thread":
            desc.thread.pid = track.pid
            desc.thread.tid = track.tid
            desc.thread.thread_name = track.name
        else:
            desc.name = track.name
            if track.parent:
                desc.parent_uuid = track.parent
        builder.write_packet(packet)
        written += 1
    for ts, phase, index in _ordered(timeline):
        item = timeline.slices[index]
        packet = builder.create_packet()
        packet.trusted_packet_sequence_id = SEQUENCE_ID
        packet.timestamp = ts
        event = packet.track_event
        event.track_uuid = item.track
        if phase == 0:
            event.type = pb.TrackEvent.TYPE_SLICE_END
        else:
            event.type = pb.TrackEvent.TYPE_SLICE_BEGIN if item.dur else pb.TrackEvent.TYPE_INSTANT
            event.name = item.name
            event.categories.append(item.category)
            for key, value in item.args.items():
                _annotate(event.debug_annotations.add(), key, value)
        builder.write_packet(packet)
        written += 1
    return written


def _ordered(timeline: Timeline) -> list[tuple[int, int, int]]:
    """(timestamp, phase, slice index) with phase 0 = END, 1 = BEGIN/INSTANT, sorted.

    At one instant, ENDs close innermost first (a nested slice has the larger index).
    """
    marks = []
    for index, item in enumerate(timeline.slices):
        marks.append((item.ts, 1, index))
        if item.dur:
            marks.append((item.ts + item.dur, 0, -index))
    marks.sort()
    return [(ts, phase, abs(index)) for ts, phase, index in marks]


def _annotate(annotation: pb.DebugAnnotation, key: str, value: ScalarArg) -> None:
    annotation.name = key
    if isinstance(value, bool):
        annotation.bool_value = value
    elif isinstance(value, int):
        annotation.int_value = value
    elif isinstance(value, float):
        annotation.double_value = value
    else:
        annotation.string_value = str(value)


def write_chrome(timeline: Timeline, path: Path) -> int:
    """Chrome trace-event JSON (µs timestamps, ph X/i/M); returns the number of trace events."""
    events: list[dict] = []
    chrome_tid: dict[int, tuple[int, int]] = {}
    next_synthetic = _CHROME_SYNTHETIC_TID
    for order, track in enumerate(timeline.tracks):
        if track.kind == "process":
            events.append({"name": "process_name", "ph": "M", "ts": 0, "pid": track.pid, "args": {"name": track.name}})
            continue
        if track.kind == "thread":
            chrome_tid[track.uuid] = (track.pid, track.tid)
        else:
            chrome_tid[track.uuid] = (track.pid, next_synthetic)
            next_synthetic += 1
        pid, tid = chrome_tid[track.uuid]
        name = track.name if track.kind in ("thread", "global") else f"{_owner_name(timeline, track.parent)} {track.name}"
        events.append({"name": "thread_name", "ph": "M", "ts": 0, "pid": pid, "tid": tid, "args": {"name": name}})
        events.append({"name": "thread_sort_index", "ph": "M", "ts": 0, "pid": pid, "tid": tid, "args": {"sort_index": order}})
    for item in sorted(timeline.slices, key=lambda s: s.ts):
        pid, tid = chrome_tid[item.track]
        event = {"name": item.name, "cat": item.category, "ts": item.ts / 1000, "pid": pid, "tid": tid, "args": item.args}
        if item.dur:
            event.update(ph="X", dur=item.dur / 1000)
        else:
            event.update(ph="i", s="t")
        events.append(event)
    path.write_bytes(orjson.dumps({"traceEvents": events, "displayTimeUnit": "ms"}))
    return len(events)


def _owner_name(timeline: Timeline, uuid: int) -> str:
    return timeline.tracks[uuid - 1].name if 0 < uuid <= len(timeline.tracks) else ""
