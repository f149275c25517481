# SPDX-License-Identifier: GPL-3.0-or-later
"""Waiting for the engine without Blender waiting: the engine's Python and environment for a subprocess, the
modal timer that polls it, and what the status bar says meanwhile. Every operator that runs the engine
(find/download models, install, the preview sheet) uses these."""

import os
import time

import bpy

from ..blender_equi360 import Equi360Error

TIMER_S = 0.1  # how often a modal operator looks at its engine


def engine_python(prefs) -> str:
    if not prefs.engine_python:
        raise Equi360Error("the engine is not configured: set the engine's Python in the add-on preferences")
    return bpy.path.abspath(prefs.engine_python)


def engine_env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def redraw_preferences() -> None:
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "PREFERENCES":
                area.tag_redraw()


def status_text(context, text: str | None) -> None:
    """The status bar's text (None: Blender's own again)."""
    if context.workspace is not None:
        context.workspace.status_text_set(text)


def wait_modally(operator, context, status: str) -> set:
    """Blender waits for nothing: a timer wakes the operator's ``modal`` until the engine has answered."""
    wm = context.window_manager
    operator._timer = wm.event_timer_add(TIMER_S, window=context.window)
    wm.modal_handler_add(operator)
    status_text(context, status)
    return {"RUNNING_MODAL"}


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds // 3600:.0f} h {seconds % 3600 / 60:02.0f} min"


class WaitsForEngine:
    """The modal half of an operator that runs one engine process at a time (an ``EngineProcess`` or its
    remote twin): Esc asks it to stop (never blocking) and a timer tick after ``stop_grace_s`` kills it; each
    tick hands its events to ``_on_event``; when it has ended, ``_finish(context, final_event)``.
    ``_shown(context)`` is the object whose ``status`` the UI draws."""
    stop_grace_s = 3.0
    shown = None
    _process = None
    _timer = None
    _stop_by = None

    def _shown(self, context):
        return self.shown

    def _watch(self, context, event) -> bool:
        """One event while the engine runs; True once it has ended (on a timer tick)."""
        if event.type == "ESC" and self._stop_by is None:
            self._process.ask_to_stop()
            self._stop_by = time.monotonic() + self.stop_grace_s
            self._shown(context).status = "cancelling…"
        if event.type != "TIMER":
            return False
        if self._stop_by is not None and time.monotonic() > self._stop_by and not self._process.finished:
            self._process.kill()
        for item in self._process.poll():
            self._on_event(context, item)
        if self._process.finished:
            self._stop_by = None
        return self._process.finished

    def _stop_waiting(self, context) -> None:
        wm = context.window_manager
        wm.event_timer_remove(self._timer)
        wm.progress_end()
        status_text(context, None)

    def modal(self, context, event):
        if not self._watch(context, event):
            return {"PASS_THROUGH"}
        self._stop_waiting(context)
        return self._finish(context, self._process.final_event)


class WaitsForQuery:
    """An operator that asks the engine one question (an ``EngineQuery``: ``models find``, ``preview``):
    ``_start(context)`` starts it (False: reported, nothing to wait for), then the answer goes to
    ``_finish(context, read_result)``; modal with a timer and Esc under a UI (``waiting`` is the status
    bar's text), blocking in background mode and scripts."""
    waiting = "Equi360: asking the engine (Esc cancels)"
    _query = None
    _timer = None

    def execute(self, context):
        if not self._start(context):
            return {"CANCELLED"}
        return self._finish(context, self._query.wait)

    def invoke(self, context, event):
        if bpy.app.background:
            return self.execute(context)
        if not self._start(context):
            return {"CANCELLED"}
        return wait_modally(self, context, self.waiting)

    def modal(self, context, event):
        if event.type == "ESC":
            self._query.kill()
        elif event.type != "TIMER" or not self._query.finished:
            return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        status_text(context, None)
        if event.type == "ESC":
            self.report({"WARNING"}, f"{self.bl_label} cancelled")
            return {"CANCELLED"}
        return self._finish(context, self._query.result)

    def cancel(self, context):  # Blender closing the operator (file load, quit, its window closed)
        if self._query and not self._query.finished:
            self._query.kill()
