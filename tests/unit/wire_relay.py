"""Test-only stdio relay: runs a command, pumps our stdin to its stdin and its stdout to ours,
and records every chunk as one JSON line {ts, dir, hex} ("c2s" or "s2c") in the file argv[1]."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

lock = threading.Lock()


def pump(src: int, dst: int, direction: str, log) -> None:
    while True:
        data = os.read(src, 65536)
        if not data:
            break
        with lock:
            log.write(json.dumps({"ts": time.time_ns(), "dir": direction, "hex": data.hex()}) + "\n")
            log.flush()
        os.write(dst, data)
    os.close(dst)


def main() -> int:
    log = open(sys.argv[1], "w")
    child = subprocess.Popen(sys.argv[2:], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    up = threading.Thread(target=pump, args=(0, child.stdin.fileno(), "c2s", log), daemon=True)
    up.start()
    pump(child.stdout.fileno(), 1, "s2c", log)
    return child.wait()


if __name__ == "__main__":
    sys.exit(main())
