"""On-CPU samples (HOST/cpu_sample, the profile family) inside a finding's stretches: what the thread ran.

A gap finding's stretches are its GPU-idle gaps, a tail finding's its slow
calls; every sample of the finding's thread inside one of them counts. Each
sample is charged to one frame: its innermost Python frame (the line that was
executing: Python code is what a person changes), else its innermost
symbolized native frame. Frames are grouped per function; a function's line
is its most sampled one; `share` is the function's part of all samples in
the stretches (samples without a stack count in the total, so the shares of
a thread that ran unsymbolized code add up to less than 1).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from whyprobe.events import Source

CPU_SAMPLE = (int(Source.HOST), 16)
TOP_FRAMES = 5
# Frames that mean the thread loads training data itself: PyTorch's loader and collate
# functions, dataset readers, image and audio decoding. Not "decode" alone: an inference
# engine detokenizing or a server parsing JSON is not loading data.
DATA_LOADING = re.compile(
    r"torch/utils/data/|collate|site-packages/datasets/|/PIL/|torchvision/(?:io|transforms|datasets)/|torchaudio/|"
    r"imdecode|imread|decode_(?:jpeg|png|image)|/cv2/|soundfile|librosa",
    re.IGNORECASE,
)


@dataclass
class Samples:
    """Sample times, threads and stack hashes, sorted by (tid, ts); `frames_of(hash)` gives parsed frames."""

    tid: np.ndarray
    ts: np.ndarray
    stack: np.ndarray
    frames_of: Callable[[int], list[dict]]
    _frames: dict[int, list[dict]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        order = np.lexsort((self.ts, self.tid))
        self.tid = np.asarray(self.tid, np.int64)[order]
        self.ts = np.asarray(self.ts, np.int64)[order]
        self.stack = np.asarray(self.stack, np.int64)[order]

    def __len__(self) -> int:
        return len(self.tid)

    def frames(self, stack_hash: int) -> list[dict]:
        if stack_hash not in self._frames:
            self._frames[stack_hash] = self.frames_of(stack_hash) if stack_hash else []
        return self._frames[stack_hash]

    def inside(self, tid: int, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """Indices of `tid`'s samples inside any [start, end) (intervals in any order, may overlap)."""
        lo, hi = np.searchsorted(self.tid, [tid, tid + 1])
        if hi == lo or not len(start):
            return np.zeros(0, np.int64)
        order = np.argsort(start, kind="stable")
        s = np.asarray(start, np.int64)[order]
        reach = np.maximum.accumulate(np.asarray(end, np.int64)[order])
        ts = self.ts[lo:hi]
        k = np.searchsorted(s, ts, "right") - 1
        hit = (k >= 0) & (ts < reach[np.maximum(k, 0)])
        return lo + np.flatnonzero(hit)


def _symbolized(frame: dict) -> bool:
    name = str(frame.get("s") or "")
    return bool(name) and not name.startswith("0x") and "+0x" not in name


def key_frame(frames: list[dict]) -> dict | None:
    """The frame a sample is charged to: innermost Python frame, else innermost symbolized native one."""
    py = next((f for f in frames if f.get("py")), None)
    if py is not None:
        return py
    return next((f for f in frames if _symbolized(f)), frames[0] if frames else None)


def hot_frames(samples: Samples, tid: int, start: np.ndarray, end: np.ndarray) -> dict | None:
    """{"samples": n, "frames": [...], "data_loading": share} for `tid`'s samples in the stretches; None without any."""
    idx = samples.inside(tid, start, end)
    if not len(idx):
        return None
    per_stack = Counter(samples.stack[idx].tolist())
    functions: Counter = Counter()
    lines: dict[tuple[str, str], Counter] = {}
    loading = 0
    for h, n in per_stack.items():
        frames = samples.frames(h)
        if any(DATA_LOADING.search(f"{f.get('f') or ''} {f.get('s') or ''}") for f in frames):
            loading += n
        top = key_frame(frames)
        if top is None:
            continue
        key = (str(top.get("s") or "?"), str(top.get("f") or ""))
        functions[key] += n
        lines.setdefault(key, Counter())[int(top.get("l") or 0)] += n
    total = len(idx)
    out = []
    for (function, file), n in sorted(functions.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_FRAMES]:
        line = lines[(function, file)].most_common(1)[0][0]
        out.append({"function": function, "file": file, "line": line or None, "share": round(n / total, 3)})
    return {"samples": total, "frames": out, "data_loading": round(loading / total, 3)}


def frame_where(frame: dict) -> str:
    """`sampler.py:212`: the file's basename, with the line when known."""
    file = (frame.get("file") or "").rsplit("/", 1)[-1]
    return f"{file}:{frame['line']}" if file and frame.get("line") else file


def frame_text(frame: dict) -> str:
    """`sampler.py:212 compute_logprobs`."""
    return f"{frame_where(frame)} {frame['function']}".strip()
