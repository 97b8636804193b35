"""Write export outputs whole or not at all: temp file/dir next to the target, then rename.

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

__all__ = ["check_target", "atomic_file", "atomic_dir"]


def check_target(path: Path, *, force: bool, directory: bool = False) -> None:
    """Fail before any work if path's directory is missing/unwritable or path exists without force.

    A directory target (Parquet) may already exist if it is empty.
    """
    parent = path.resolve().parent
    if not parent.is_dir():
        raise CommandError(f"No such directory: {parent} (create it or choose another output path)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CommandError(f"Cannot write to directory: {parent} (permission denied)")
    if force or not path.exists():
        return
    if not directory:
        raise CommandError(f"File exists, will not overwrite without --force: {path}")
    if not path.is_dir():
        raise CommandError(f"Not a directory: {path}")
    if any(path.iterdir()):
        raise CommandError(f"Directory is not empty, will not overwrite without --force: {path}")


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


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temp directory next to path; it becomes path when the block succeeds."""
    tmp = Path(tempfile.mkdtemp(dir=path.resolve().parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if path.is_dir() and not path.is_symlink():
            old = Path(tempfile.mkdtemp(dir=path.resolve().parent, prefix=f".{path.name}.", suffix=".old"))
            os.replace(path, old / "prev")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
