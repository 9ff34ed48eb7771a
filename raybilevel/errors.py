"""Errors a user can fix. The CLI prints them as one line and exits 2; never a traceback."""


class UserError(Exception):
    """Bad input: the message names the problem and the fix."""


class ConfigError(UserError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"config error at '{field}': {message}")
        self.field = field
