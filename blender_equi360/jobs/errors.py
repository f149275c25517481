"""The one error type that reaches users: its message says what was wrong and what to do."""


class Equi360Error(Exception):
    """Bad input or an unusable environment; ``str(err)`` is meant for the user as it is."""


class IncompatibleJob(Equi360Error):
    """A job folder made by a version of Equi360 that this one cannot run or continue."""


def require(ok: bool, message: str) -> None:
    """Raise :class:`Equi360Error` with ``message`` unless ``ok``: the one way the core checks what it is given."""
    if not ok:
        raise Equi360Error(message)
