"""`stacks --folded`: one root-first path per stack, Python frames merged where the eval loop runs them."""

from __future__ import annotations

from whyprobe.analyze.stacks import frame_label, root_first


def _native(*symbols: str) -> list[dict]:
    return [{"s": s, "f": "python3.11" if s.startswith(("_Py", "Py", "main", "_start")) else "lib.so", "py": False} for s in symbols]


def _python(*frames: tuple[str, int]) -> list[dict]:
    return [{"s": name, "f": "train.py", "l": line, "py": True} for name, line in frames]


def _path(frames: list[dict]) -> list[str]:
    return [f["s"] for f in root_first(frames)]


def test_python_frames_sit_at_the_eval_loop_and_the_native_callee_below_them() -> None:
    # GIVEN a stored stack: Python frames innermost first, then native frames innermost first
    frames = _python(("step", 7), ("<module>", 11)) + _native(
        "cudaMalloc", "ffi_call", "_ctypes_callproc", "_PyEval_EvalFrameDefault", "PyEval_EvalCode", "Py_RunMain", "main", "_start"
    )
    # THEN the flame graph reads from _start down through <module> and step to cudaMalloc
    assert _path(frames) == [
        "_start", "main", "Py_RunMain", "PyEval_EvalCode", "<module>", "step", "_ctypes_callproc", "ffi_call", "cudaMalloc",
    ]


def test_nested_eval_loops_collapse_into_the_python_frames() -> None:
    frames = _python(("inner", 3), ("outer", 9), ("<module>", 20)) + _native(
        "cudaLaunchKernel", "_PyEval_EvalFrameDefault", "_PyObject_Call", "_PyEval_EvalFrameDefault", "Py_RunMain", "main"
    )
    assert _path(frames) == ["main", "Py_RunMain", "<module>", "outer", "inner", "cudaLaunchKernel"]


def test_a_native_unwind_that_stops_short_hangs_below_the_python_frames() -> None:
    # GIVEN an interpreter without frame pointers: the unwind ends in libffi, before the eval loop
    frames = _python(("step", 7), ("<module>", 11)) + _native("cudaMalloc", "ffi_call")
    assert _path(frames) == ["<module>", "step", "ffi_call", "cudaMalloc"]


def test_native_only_and_python_only_stacks_are_reversed() -> None:
    assert _path(_native("cudaMalloc", "launch", "main")) == ["main", "launch", "cudaMalloc"]
    assert _path(_python(("f", 1), ("<module>", 2))) == ["<module>", "f"]
    assert frame_label(_python(("f", 1))[0]) == "f (train.py:1)"
