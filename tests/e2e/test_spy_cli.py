"""`whyprobe spy` / `footprint` refuse bad input with one sentence, before any tracing."""

from __future__ import annotations

import pytest

from whyprobe.commands import main


@pytest.mark.parametrize(
    "argv, message",
    [
        (["spy", "--cmd"], "whyprobe: --cmd needs a command after `--`: whyprobe spy --cmd -- python client.py"),
        (["spy", "--max-message", "8MiB"], "whyprobe: Invalid --max-message '8MiB': between 1 byte and 4MiB (what the kernel copies per call)"),
        (["spy", "--max-message", "lots"], "whyprobe: Invalid --max-message 'lots': expected a size like 64MiB, 1GB or 512k. Try 'whyprobe spy --help'."),
        (["footprint", "--duration", "soon", "--pid", "1"], "whyprobe: Invalid --duration 'soon': expected a duration like 30s, 250ms, 5m or 1h. Try 'whyprobe footprint --help'."),
        (["footprint"], "whyprobe: footprint needs a server to watch: --pid N of a server in use by a client, "
                        "or --cmd -- CLIENT ARGS (a client that starts the server)"),
    ],
)
def test_bad_input_is_one_sentence(argv, message, capsys) -> None:
    assert main(argv) != 0
    assert capsys.readouterr().err.strip() == message
