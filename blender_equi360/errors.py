"""The one error type that reaches users: its message says what was wrong and what to do."""


class Equi360Error(Exception):
    """Bad input or an unusable environment; ``str(err)`` is meant for the user as it is."""
