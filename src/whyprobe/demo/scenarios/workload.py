"""Build and start the scenario processes: `train_loop` (held until traced) and the `cpu-hog`.

train_loop is built like the other workloads (demo/build.py flags, cached by a
hash of its source) next to them; the stand-in runtime comes from build.py.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from whyprobe.demo.build import CFLAGS, SRC_DIR, Workloads, build_workloads, default_cache_dir
from whyprobe.errors import WhyprobeError

SOURCE = SRC_DIR / "scenario_train.c"
BINARY = "train_loop"
IO_CHUNK_MB = 1
HOG_NICE = -5


@dataclass(frozen=True)
class ScenarioBinaries:
    runtime: Workloads  # the stand-in libcudart.so.12 (and driver)
    train_loop: Path


def _build_train_loop(cache_dir: Path) -> Path:
    digest = hashlib.sha256(" ".join(CFLAGS).encode() + SOURCE.read_bytes()).hexdigest()[:16]
    # The file name is the thread's comm in traces: keep it plain, put the hash in the directory.
    out = cache_dir / f"scenarios-{digest}" / BINARY
    if out.exists():
        return out
    cc = shutil.which(os.environ.get("CC", "gcc"))
    if not cc:
        raise WhyprobeError("gcc not found: the demo workloads are C programs built on first use (apt-get install gcc)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    res = subprocess.run([cc, *CFLAGS, "-o", str(tmp), str(SOURCE), "-ldl", "-lpthread"], capture_output=True, text=True)
    if res.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise WhyprobeError(f"building {BINARY} failed: {res.stderr.strip()[-2000:]}")
    tmp.rename(out)  # atomic: a concurrent builder never runs half a file
    return out


def build(cache_dir: str | os.PathLike | None = None) -> ScenarioBinaries:
    """The stand-in runtime and train_loop, compiled on first use."""
    runtime = build_workloads(cache_dir)
    base = Path(cache_dir) if cache_dir else default_cache_dir()
    return ScenarioBinaries(runtime, _build_train_loop(base))


def demo_cpu() -> int:
    """The CPU the contention scenario fights over: of those we may use, the one that served the
    fewest interrupts, so that the hog, not interrupt work (block I/O completions, softirqs, their
    kworkers), is what takes that CPU from the training thread."""
    allowed = sorted(os.sched_getaffinity(0))
    try:
        lines = Path("/proc/interrupts").read_text().splitlines()
    except OSError:
        return allowed[-1]
    cpus = [int(c[3:]) for c in lines[0].split()]
    load = dict.fromkeys(cpus, 0)
    for line in lines[1:]:
        counts = line.split()[1 : 1 + len(cpus)]
        for cpu, n in zip(cpus, counts):
            if n.isdigit():
                load[cpu] += int(n)
    return min(allowed, key=lambda c: (load.get(c, 0), -c))


def write_io_file(path: Path, size_mb: int) -> None:
    """A file of random bytes, synced to disk, for the O_DIRECT reads of io-stall."""
    chunk = os.urandom(IO_CHUNK_MB << 20)
    with open(path, "wb") as f:
        for _ in range(max(size_mb // IO_CHUNK_MB, 1)):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


def start_hog(binaries: ScenarioBinaries, cpu: int) -> subprocess.Popen:
    """A spinning `cpu-hog` pinned to `cpu`, at a higher priority (HOG_NICE) so that on a busy
    host it, not whatever else shares the core, is what takes the CPU from the training thread."""
    hog = subprocess.Popen([str(binaries.train_loop), "-H", "-c", str(cpu)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    os.setpriority(os.PRIO_PROCESS, hog.pid, HOG_NICE)
    return hog


def start_held(binaries: ScenarioBinaries, args: list[str], env: dict[str, str], duration_s: float) -> subprocess.Popen:
    """train_loop started and held before its first CUDA call (-w): release with release()."""
    cmd = [str(binaries.train_loop), "-w", "-d", f"{duration_s:g}", *args, str(binaries.runtime.cudart)]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env}
    )
    line = proc.stdout.readline()
    if not line.startswith("ready "):
        err = proc.stderr.read().strip() if proc.wait() is not None else ""
        raise WhyprobeError(f"{BINARY} did not start: {err or line.strip() or f'exit status {proc.returncode}'}")
    return proc


def release(proc: subprocess.Popen) -> None:
    proc.stdin.write("go\n")
    proc.stdin.flush()


def stop(proc: subprocess.Popen | None) -> None:
    """End a process we started (terminate, then kill), and reap it."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
