"""User-facing errors: the CLI prints their message on one line and exits with code 2."""


class UserError(Exception):
    """An error caused by the user's input (file, column, model, recipe...), not a bug."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`UserError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise UserError(message)
