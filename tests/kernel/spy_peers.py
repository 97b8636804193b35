"""Shared helpers of the spy/footprint kernel tests: run the CLI in-process, the test peers' paths."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from whyprobe.commands import main

HERE = Path(__file__).resolve().parent
PY = sys.executable
SERVER = [PY, str(HERE / "spy_server.py")]
CLIENT = [PY, str(HERE / "spy_client.py")]
BATCH = [PY, str(HERE / "spy_batch.py")]
BIN = Path(PY).parent


def run_json(capsys, argv: list[str]) -> dict:
    """main(argv) with --json; the exit status must be 0; returns the parsed summary."""
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 0, err
    return json.loads(out.strip().splitlines()[-1])


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]
