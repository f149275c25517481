# SPDX-License-Identifier: GPL-3.0-or-later
"""How an operator tells the user what went wrong: one ERROR report with the message (the core's errors
say what was wrong and what to do), and the operator cancelled, leaving nothing half-made."""

import functools

from ..blender_equi360 import Equi360Error

REPORTED = (Equi360Error, OSError)  # what users can act on; anything else is a bug and keeps its traceback


def report_error(operator, err: Exception | str, prefix: str = "") -> set:
    operator.report({"ERROR"}, f"{prefix}{err}")
    return {"CANCELLED"}


def engine_failure(final: dict | None) -> tuple[str, str]:
    """The code and message of an engine that ended badly: its ``error`` event, or none at all (crashed)."""
    return (final["code"], final["message"]) if final else ("crashed", "the engine ended without a result")


def report_engine_error(operator, final: dict | None) -> set:
    """The engine's final ``error`` event as ``Equi360 [code]: message`` (None: it ended without one); a
    cancel is a warning, not an error."""
    code, message = engine_failure(final)
    if code == "cancelled":
        operator.report({"WARNING"}, f"Equi360 [{code}]: {message}")
        return {"CANCELLED"}
    return report_error(operator, message, f"Equi360 [{code}]: ")


def reports_errors(execute):
    """An operator's ``execute`` whose Equi360Error or OSError becomes the report, and CANCELLED."""
    @functools.wraps(execute)
    def run(self, context):
        try:
            return execute(self, context)
        except REPORTED as err:
            return report_error(self, err)
    return run
