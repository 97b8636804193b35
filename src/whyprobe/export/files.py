"""Write export outputs whole or not at all: a temp file next to the target, then rename.

A failed export (unwritable directory, bad input, a crash half-way) leaves
nothing at the destination; an existing target is replaced only with force.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from whyprobe.errors import CommandError

__all__ = ["check_target", "atomic_file"]


def check_target(path: Path, *, force: bool) -> None:
    """Fail before any work if path's directory is missing/unwritable or path exists without force."""
    parent = path.resolve().parent
    if not parent.is_dir():
        raise CommandError(f"No such directory: {parent} (create it or choose another output path)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CommandError(f"Cannot write to directory: {parent} (permission denied)")
    if not force and path.exists():
        raise CommandError(f"File exists, will not overwrite without --force: {path}")


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a not-yet-existing path in a private temp directory next to path; on success it
    is renamed onto path (side files a writer leaves there, like a DuckDB WAL, go with the directory)."""
    workdir = Path(tempfile.mkdtemp(dir=path.resolve().parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        tmp = workdir / path.name
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
