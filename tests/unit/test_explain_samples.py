"""On-CPU samples in explain: which frames a thread ran in its GPU gaps and slow calls (synthetic arrays and traces)."""

from __future__ import annotations

import json
import sqlite3
from io import StringIO

import numpy as np
from explain_synth import ENGINE_PID, ENGINE_TID, MS, T0, US, blocked, ev, launch_loop, write_db

from whyprobe.analyze.explain import explain
from whyprobe.analyze.samples import Samples, hot_frames
from whyprobe.events import Source
from whyprobe.reporters.explain import render_explain_text
from whyprobe.store.reader import open_trace

SAMPLER = [{"s": "compute_logprobs", "f": "/srv/vllm/sampler.py", "l": 212, "py": True},
           {"s": "step", "f": "/srv/vllm/engine.py", "l": 90, "py": True},
           {"s": "_PyEval_EvalFrameDefault", "f": "/usr/lib/libpython3.11.so", "py": False}]
SAMPLER_213 = [dict(SAMPLER[0], l=213), *SAMPLER[1:]]
NATIVE = [{"s": "0x7f00aa", "f": "", "py": False}, {"s": "memcpy", "f": "/usr/lib/libc.so.6", "py": False}]
COLLATE = [{"s": "default_collate", "f": "/venv/torch/utils/data/_utils/collate.py", "l": 141, "py": True}, *SAMPLER[1:]]
FRAMES = {11: SAMPLER, 12: SAMPLER_213, 13: NATIVE, 14: COLLATE}


def _samples(tid, ts, stack) -> Samples:
    return Samples(np.array(tid), np.array(ts), np.array(stack), lambda h: FRAMES.get(h, []))


def test_samples_inside_stretches_are_the_threads_own_within_any_interval():
    # GIVEN samples of tid 7 every 10 ns and one of tid 8 in the middle, stretches [10, 30) and [20, 26) (overlapping) and [40, 50)
    s = _samples([7, 7, 7, 7, 7, 8, 7], [45, 5, 15, 25, 35, 25, 49], [1, 1, 1, 1, 1, 1, 1])
    idx = s.inside(7, np.array([40, 10, 20]), np.array([50, 30, 26]))
    # THEN exactly tid 7's samples at 15, 25, 45 and 49 are inside
    assert sorted(s.ts[idx].tolist()) == [15, 25, 45, 49] and set(s.tid[idx].tolist()) == {7}
    assert len(s.inside(9, np.array([0]), np.array([100]))) == 0


def test_hot_frames_charge_each_sample_to_its_innermost_python_frame_with_shares_of_all_samples():
    # GIVEN 10 samples in a gap: 5 at sampler.py:212, 2 at sampler.py:213, 2 in native memcpy only, 1 without any stack
    stacks = [11] * 5 + [12] * 2 + [13] * 2 + [0]
    s = _samples([7] * 10, list(range(10)), stacks)
    hot = hot_frames(s, 7, np.array([0]), np.array([10]))
    # THEN compute_logprobs has 70% (its most sampled line, 212), memcpy (first symbolized native frame) 20%,
    # the stackless sample counts in the total only, and nothing was data loading
    assert hot["samples"] == 10 and hot["data_loading"] == 0
    assert hot["frames"] == [
        {"function": "compute_logprobs", "file": "/srv/vllm/sampler.py", "line": 212, "share": 0.7},
        {"function": "memcpy", "file": "/usr/lib/libc.so.6", "line": None, "share": 0.2},
    ]
    assert hot_frames(s, 7, np.array([100]), np.array([200])) is None


def _gap_trace() -> tuple[list[dict], list[int]]:
    """The engine thread: 5 bursts of 20 launches, 200 ms gaps between them, scheduling traced
    (short waits); and the times of samples every 10 ms, all inside the gaps."""
    events, samples, ts = [], [], T0
    for burst in range(5):
        calls, _ = launch_loop(20, start=ts)
        events += calls
        ts = calls[-1]["timestamp"] + calls[-1]["duration"]
        if burst < 4:
            samples += [ts + k * 10 * MS + 5 * MS for k in range(20)]
            events.append(blocked(ts + 100 * US, 20 * US))
            ts += 200 * MS
    return events, samples


def _doc(tmp_path, stack: int | None, frames: dict) -> dict:
    """explain of the gap trace, its samples on `stack` (None: a trace without samples)."""
    events, samples = _gap_trace()
    path = write_db(tmp_path / f"s{stack}.db", events)
    con = sqlite3.connect(path)
    with con:
        if stack is not None:
            con.executemany(
                "INSERT INTO events(timestamp, pid, tid, source, op, duration, arg0, stack_hash) VALUES (?, ?, ?, ?, 16, 0, ?, ?)",
                [(ts, ENGINE_PID, ENGINE_TID, int(Source.HOST), 10 * MS, stack) for ts in samples],
            )
        con.executemany("INSERT INTO stack_traces(hash, ips, frames) VALUES (?, '[]', ?)", [(h, json.dumps(f)) for h, f in frames.items()])
    con.close()
    with open_trace(path) as db:
        return explain(db)


def test_gap_finding_names_the_sampled_function_and_advises_taking_it_off_the_critical_path(tmp_path):
    # GIVEN 4 GPU gaps of 200 ms on the engine thread, all 80 samples in them at sampler.py:212 compute_logprobs
    doc = _doc(tmp_path, 11, FRAMES)
    gap = doc["findings"][0]
    assert (gap["kind"], gap["tid"], gap["dominant_cause"], gap["slow_calls"]) == ("gap", ENGINE_TID, "on_cpu", 4)
    on_cpu = next(c for c in gap["causes"] if c["kind"] == "on_cpu")
    # THEN the on_cpu cause carries that frame with share 1.0, the summary says so, the fix names it
    assert on_cpu["samples"] == 80
    assert on_cpu["frames"] == [{"function": "compute_logprobs", "file": "/srv/vllm/sampler.py", "line": 212, "share": 1.0}]
    assert "100% of gap samples in sampler.py:212 compute_logprobs" in gap["summary"]
    fix = " ".join(gap["recommendations"])
    assert "`compute_logprobs` (sampler.py:212" in fix and "critical path" in fix and "DataLoader" not in fix
    # AND the text output shows the frames under the cause
    out = StringIO()
    render_explain_text(doc, out)
    assert "ran (80 on-CPU samples): 100% sampler.py:212 compute_logprobs" in out.getvalue()


def test_dataloader_advice_only_when_data_loading_frames_were_sampled(tmp_path):
    # GIVEN the same gaps, the samples in torch's collate
    gap = _doc(tmp_path, 14, FRAMES)["findings"][0]
    # THEN the advice is DataLoader workers, with the share of data-loading samples
    fix = " ".join(gap["recommendations"])
    assert "DataLoader workers" in fix and "100% of gap samples in data-loading code" in fix


def test_a_trace_without_samples_says_so_and_keeps_the_conditional_dataloader_advice(tmp_path):
    gap = _doc(tmp_path, None, {})["findings"][0]
    on_cpu = next(c for c in gap["causes"] if c["kind"] == "on_cpu")
    assert on_cpu["frames"] == [] and "samples" not in on_cpu
    fix = " ".join(gap["recommendations"])
    assert "no on-CPU sample says what" in fix and "DataLoader workers" in fix


def test_findings_below_materiality_are_minor_listed_last_without_a_fix(tmp_path):
    # GIVEN a 10 s window: a real tail (10 slow launches of 9 ms) and 3 syncs 30 us slower than
    # their median behind queued launches (90 us in all: < max(1 ms, 0.1% of 10 s = 10 ms))
    calls, _ = launch_loop(200, slow={i: 9 * MS for i in range(15, 200, 19)})
    ts = calls[-1]["timestamp"] + 10 * MS
    syncs = []
    for i in range(40):
        syncs.append(ev(ts, 10 * US, arg0=0x7F00))
        syncs.append(ev(ts + 20 * US, 40 * US if i % 13 == 5 else 10 * US, op=6))
        ts += 1 * MS
    end = ev(T0 + 10_000 * MS, 0, source=int(Source.HOST), op=16)
    doc = _explain_db(tmp_path, calls + syncs + [end])
    kinds = [(f["op"], f["minor"]) for f in doc["findings"]]
    # THEN the launch tail comes first and is not minor; the sync tail is minor, last, low, with no fix
    assert kinds[0] == ("cudaLaunchKernel", False)
    sync = doc["findings"][-1]
    assert (sync["op"], sync["minor"], sync["severity"], sync["recommendations"]) == ("cudaDeviceSynchronize", True, "low", [])
    assert sync["lost_ns"] < 1 * MS
    out = StringIO()
    render_explain_text(doc, out)
    text = out.getvalue()
    assert "1 minor finding(s)" in text and text.index("minor finding(s)") > text.index("1. [")


def _explain_db(tmp_path, events) -> dict:
    with open_trace(write_db(tmp_path / "m.db", events)) as db:
        return explain(db)


def test_on_cpu_slow_calls_name_what_ran_inside_them(tmp_path):
    # GIVEN 200 launches on the engine thread, 10 of them 9 ms long and on-CPU (scheduling traced, no off-CPU
    # time inside them), with 3 samples inside each slow call: 2 in native memcpy, 1 at sampler.py:212
    calls, spans = launch_loop(200, slow={i: 9 * MS for i in range(15, 200, 19)})
    events = calls + [blocked(calls[0]["timestamp"] - 500 * US, 100 * US), blocked(calls[-1]["timestamp"] + 2 * MS, 100 * US)]
    path = write_db(tmp_path / "tail.db", events)
    con = sqlite3.connect(path)
    with con:
        rows = [(s + k * 2 * MS + MS, ENGINE_PID, ENGINE_TID, int(Source.HOST), 10 * MS, 13 if k < 2 else 11) for s, _ in spans for k in range(3)]
        con.executemany("INSERT INTO events(timestamp, pid, tid, source, op, duration, arg0, stack_hash) VALUES (?, ?, ?, ?, 16, 0, ?, ?)", rows)
        con.executemany("INSERT INTO stack_traces(hash, ips, frames) VALUES (?, '[]', ?)", [(h, json.dumps(f)) for h, f in FRAMES.items()])
    con.close()
    with open_trace(path) as db:
        top = explain(db)["findings"][0]
    # THEN the tail's on_cpu cause has the 30 samples: 2/3 in memcpy, 1/3 in compute_logprobs, and the summary says so
    assert (top["kind"], top["op"], top["dominant_cause"]) == ("tail", "cudaLaunchKernel", "on_cpu")
    on_cpu = next(c for c in top["causes"] if c["kind"] == "on_cpu")
    assert on_cpu["samples"] == 30
    assert [(f["function"], f["share"]) for f in on_cpu["frames"]] == [("memcpy", 0.667), ("compute_logprobs", 0.333)]
    assert "67% of slow-call samples in libc.so.6 memcpy, 33% in sampler.py:212 compute_logprobs" in top["summary"]


def test_only_data_loading_frames_count_as_data_loading():
    # GIVEN a sample in torch's collate, one in PIL's JPEG decoder, one detokenizing, one parsing JSON
    frames = {
        1: COLLATE,
        2: [{"s": "decode", "f": "/venv/PIL/JpegImagePlugin.py", "l": 400, "py": True}],
        3: [{"s": "decode", "f": "/venv/vllm/transformers_utils/detokenizer.py", "l": 120, "py": True}],
        4: [{"s": "raw_decode", "f": "/usr/lib/python3.11/json/decoder.py", "l": 353, "py": True}],
    }
    s = Samples(np.array([7] * 4), np.arange(4), np.array([1, 2, 3, 4]), lambda h: frames[h])
    # THEN half the samples were loading data: the collate and the image decoding
    assert hot_frames(s, 7, np.array([0]), np.array([4]))["data_loading"] == 0.5
