"""User-facing errors: the CLI prints their message on one line and exits with code 2."""

from pathlib import Path


class UserError(Exception):
    """An error caused by the user's input (file, column, model, recipe...), not a bug."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`UserError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise UserError(message)


def require_at_least(name: str, value: float | None, low: float, strict: bool = False) -> None:
    """Refuse a numeric setting below ``low`` (or equal to it when ``strict``); ``None`` passes."""
    if value is not None:
        require(value > low if strict else value >= low,
                f"{name} must be {'>' if strict else '>='} {low:g}, got {value:g}")


def require_file(path: Path, what: str) -> None:
    """Refuse a missing ``path`` ("WHAT not found") or a directory given where a file is expected."""
    require(not path.is_dir(), f"{what} {path} is a directory, not a file")
    require(path.is_file(), f"{what} not found: {path}")


class Interrupted(BaseException):
    """SIGINT or SIGTERM, raised in the main thread by the CLI's handlers.

    A ``BaseException`` like ``KeyboardInterrupt`` (no ``except Exception`` swallows it; atomic
    writers remove their temporary output), but not one: click/typer would turn that into exit 0.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
