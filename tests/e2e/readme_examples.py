"""The examples of README.md and of every command's --help, as runnable steps.

Collected with markdown-it-py (the CommonMark parser rich already depends on):
every inline code span that is a `whyprobe ...` command line, and every fenced
`console` block of `$ ` lines (the lines after one, up to the next, are its
expected output). mktestdocs and pytest-examples run whole fenced Python/bash
blocks; they see neither commands inside table cells nor a command's expected
output, so they fit neither half of this README.

A trailing shell comment on an example is checked:

* `# not run here: REASON` skips it, with the reason, visibly in the README;
* `# exit N` expects exit status N (default 0);
* every `"quoted text"` in it must appear in the command's output.

How a line runs (tests/e2e/test_readme_examples.py): `sudo` is dropped (the
test runs as root); `trace`/`spy`/`footprint` get `--duration 2s` unless they
launch a program with `--cmd`; `$(pgrep -f NAME)` finds a stand-in process
started from `bin/NAME` in the workspace (narrowed with `-P` to the test's
own children: a real NAME elsewhere on the host must not match); `mcp` and `dashboard` are servers,
asked one real request and then stopped with SIGINT.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
COMMAND = re.compile(r"^(?:sudo\s+)?(?:[A-Z_][A-Z0-9_]*=\S+\s+)*whyprobe(?:\s|$)")
SHORT = "2s"
RECORDERS = ("trace", "spy", "footprint")


@dataclass
class Step:
    line: str
    expected: list[str] = field(default_factory=list)

    @property
    def command(self) -> str:
        return split_comment(self.line)[0]

    @property
    def comment(self) -> str:
        return split_comment(self.line)[1]

    @property
    def exit_code(self) -> int:
        m = re.search(r"\bexits?\s+(\d+)\b", self.comment)
        return int(m.group(1)) if m else 0

    @property
    def quoted(self) -> list[str]:
        return re.findall(r'"([^"]+)"', self.comment)

    @property
    def skip(self) -> str | None:
        m = re.search(r"not run here:\s*(.+)", self.comment, re.IGNORECASE)
        return m.group(1).strip() if m else None


@dataclass
class Example:
    where: str
    steps: list[Step]

    @property
    def skip(self) -> str | None:
        """Why none of its steps runs here, when each is marked."""
        reasons = [step.skip for step in self.steps]
        return "; ".join(reasons) if all(reasons) else None

    @property
    def id(self) -> str:
        return f"{self.where}: {self.steps[0].command[:70]}"


def split_comment(line: str) -> tuple[str, str]:
    """(command, comment): a `#` outside quotes, after whitespace, starts a shell comment."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1 :].strip()
    return line.rstrip(), ""


def readme_examples(path: Path = README) -> list[Example]:
    md = MarkdownIt("commonmark").enable("table")
    examples: list[Example] = []
    for token in md.parse(path.read_text()):
        line_no = (token.map[0] + 1) if token.map else 0
        if token.type == "fence" and token.info.strip() == "console":
            steps = _console_steps(token.content)
            if steps:
                examples.append(Example(f"README.md:{line_no}", steps))
        for child in token.children or ():
            text = child.content.strip()
            if child.type == "code_inline" and COMMAND.match(text):
                examples.append(Example(f"README.md:{line_no}", [Step(text)]))
    return examples


def _console_steps(block: str) -> list[Step]:
    steps: list[Step] = []
    for raw in block.splitlines():
        if raw.startswith("$ "):
            steps.append(Step(raw[2:].strip()))
        elif steps and raw.strip():
            steps[-1].expected.append(raw.rstrip())
    return [s for s in steps if COMMAND.match(s.line)] if all(COMMAND.match(s.line) for s in steps) else []


def help_examples() -> list[Example]:
    """The example lines of `whyprobe --help` and of each command's --help: one example per help
    text, its lines run in order (they read as a workflow: import, then explain the result)."""
    import typer

    from whyprobe.commands import build_app

    group = typer.main.get_command(build_app())
    texts = [("whyprobe --help", group.help or "")]
    texts += [(f"whyprobe {name} --help", cmd.help or "") for name, cmd in sorted(group.commands.items())]
    examples = [Example(where, [Step(line.strip()) for line in text.splitlines() if COMMAND.match(line.strip())]) for where, text in texts]
    return [e for e in examples if e.steps]


def words(command: str) -> list[str]:
    """The whyprobe argv of a (single, unpiped) command line, env assignments and sudo dropped."""
    argv = shlex.split(command.split("|")[0].split(">")[0])
    while argv and (argv[0] == "sudo" or re.match(r"^[A-Z_][A-Z0-9_]*=", argv[0])):
        argv.pop(0)
    return argv[1:]


def subcommand(command: str) -> str:
    return next((w for w in words(command) if not w.startswith("-")), "")


def for_this_host(command: str, parent: int | None = None) -> str:
    """The line as the test runs it: no sudo, short recordings, pgrep among `parent`'s children."""
    line = re.sub(r"^sudo\s+", "", command)
    if parent is not None:
        line = re.sub(r"\$\(pgrep -f ([\w.-]+)\)", rf"$(pgrep -P {parent} -f \1)", line)
    line = re.sub(r"(^|[;&|]\s*)sudo\s+", r"\1", line)
    sub = subcommand(line)
    if sub in RECORDERS:
        if "--duration" in line:
            line = re.sub(r"--duration\s+\S+", f"--duration {SHORT}", line)
        elif "--cmd" not in words(line):
            line = re.sub(rf"\bwhyprobe\s+{sub}\b", f"whyprobe {sub} --duration {SHORT}", line, count=1)
    return line


def pgrep_names(command: str) -> list[str]:
    return re.findall(r"\$\(pgrep -f ([\w.-]+)\)", command)


def option(argv: list[str], *names: str) -> str | None:
    for i, w in enumerate(argv):
        for name in names:
            if w == name and i + 1 < len(argv):
                return argv[i + 1]
            if w.startswith(name + "="):
                return w.split("=", 1)[1]
    return None


def env_assignments(command: str) -> dict[str, str]:
    out = {}
    for w in shlex.split(command):
        m = re.match(r"^([A-Z_][A-Z0-9_]*)=(.*)$", w)
        if not m:
            break
        out[m.group(1)] = m.group(2)
    return out


def outputs(command: str) -> list[str]:
    """Files the command will create: its --out/-o value, else that option's default."""
    import typer

    from whyprobe.commands import build_app

    argv = words(command)
    sub = subcommand(command)
    value = option(argv[: argv.index("--")] if "--" in argv else argv, "--out", "-o")
    if value is not None:
        return [value]
    cmd = typer.main.get_command(build_app()).commands.get(sub)
    for param in getattr(cmd, "params", ()):
        if param.name == "out" and param.default not in (None, ""):
            return [str(param.default)]
    return []


def matches(expected: list[str], actual: str) -> str | None:
    """None when every expected line appears, in order, in `actual` (whitespace runs compared as
    one space; a line ending in `...` matches a line it begins); else the first one missing."""
    norm = [" ".join(line.split()) for line in actual.splitlines()]
    i = 0
    for want in expected:
        w = " ".join(want.split())
        prefix = w.endswith("...")
        w = w[:-3].rstrip() if prefix else w
        while i < len(norm) and not (norm[i].startswith(w) if prefix else norm[i] == w):
            i += 1
        if i == len(norm):
            return want
        i += 1
    return None
