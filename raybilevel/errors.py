"""Errors a user can fix (the CLI prints them as one line and exits 2; never a traceback), and a run
that diverged (one line, exit 1)."""


class UserError(Exception):
    """Bad input: the message names the problem and the fix."""


class ConfigError(UserError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"config error at '{field}': {message}")
        self.field = field


class NonFiniteLossError(FloatingPointError):
    """Training hit a NaN/inf loss (train.on_nonfinite=stop) or skipped too many steps (skip)."""
