"""The one error module: every expected failure is a WhyprobeError with a sentence."""

from __future__ import annotations


class WhyprobeError(Exception):
    """An expected failure, reported to the user as one line (no traceback)."""


class CommandError(WhyprobeError):
    """A command cannot go on; `exit_code` is what the process exits with."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(CommandError):
    """A malformed value on the command line (duration, size, time): exit 2 with the usage hint."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=2)


class StoreError(WhyprobeError):
    """A database is missing, corrupt, of an unknown version, or not a trace."""


class KernelError(WhyprobeError):
    """The kernel side of a trace cannot be used as asked: a ring or map that does not match
    this build, a pid the kernel cannot hold."""


class ConfigError(WhyprobeError):
    """A configuration file or value is invalid."""
