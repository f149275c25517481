# SPDX-License-Identifier: GPL-3.0-or-later
"""Install Engine (``equi360.install_engine``): ``python -m engine setup ENGINE_FOLDER`` makes the engine's own
Python environment (torch, its CUDA build where an NVIDIA driver is, diffusers, …; never in Blender's Python),
then the preferences' Engine Python is set to it and the engine's check is shown. Pressing it again repairs the
environment. The engine does the work (:mod:`engine.setup`); here only choosing the Python that runs it,
starting it, showing its progress and its outcome. With a UI it is modal (progress in the status bar and the
preferences, Esc cancels); in background mode, where timers and modal handlers never run, it blocks."""

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import bpy
from bpy.props import BoolProperty

from ..blender_equi360 import Equi360Error
from ..blender_equi360.jobs.engine_process import EngineProcess
from .preferences import ADDON_ROOT, PACKAGE, preferences, summarize_check
from .reports import REPORTED, engine_failure, report_engine_error, report_error
from .waiting import TIMER_S, WaitsForEngine, duration, engine_env, redraw_preferences, status_text

MIN_PYTHON = (3, 11)
STOP_GRACE_S = 10.0   # after Esc, setup kills pip and ends within seconds; one that has not by then is killed
PROBE_TIMEOUT_S = 30.0
PHASES = {"venv": "making the environment", "torch": "installing torch", "packages": "installing the packages",
          "check": "checking the engine", "done": "done"}


@dataclass
class _Install:
    """The install in progress (one at a time), for the preferences' progress bar."""
    running: bool = False
    progress: float = 0.0
    status: str = ""


INSTALL = _Install()


def engine_folder(prefs) -> Path:
    """The preferences' engine folder, or the extension's own (``…/extensions/.user/…/equi360/engine-env``)."""
    if not prefs.engine_dir.strip():
        return Path(bpy.utils.extension_path_user(PACKAGE, path="engine-env", create=True))
    folder = Path(bpy.path.abspath(prefs.engine_dir)).expanduser()
    if not folder.is_absolute():  # the engine runs in the extension's folder: a relative path would land there
        raise Equi360Error(f"the engine folder {prefs.engine_dir!r} is not an absolute path: choose a folder")
    return folder


def _unusable(python: str) -> str | None:
    """Why ``python`` cannot make the environment (None: it runs, is 3.11 or newer, and has venv and ensurepip)."""
    code = "import sys, venv, ensurepip; print('%d.%d' % sys.version_info[:2])"
    try:
        run = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as err:
        return f"does not run ({err})"
    if run.returncode != 0:
        lines = run.stderr.strip().splitlines()
        return lines[-1] if lines else f"exit status {run.returncode}"
    try:
        version = tuple(int(part) for part in run.stdout.strip().split("."))
    except ValueError:
        return f"said {run.stdout.strip()[:40]!r} for its version"
    if version < MIN_PYTHON:
        return f"Python {run.stdout.strip()} is older than {'.'.join(map(str, MIN_PYTHON))}"
    return None


def setup_python(prefs) -> str:
    """The Python that runs setup (the new environment is made from it): the preferences' Engine Python when it
    works, else Blender's own."""
    candidates = [bpy.path.abspath(prefs.engine_python)] if prefs.engine_python else []
    candidates.append(sys.executable)
    why = []
    for python in dict.fromkeys(candidates):
        problem = _unusable(python)
        if problem is None:
            return python
        why.append(f"{python}: {problem}")
    raise Equi360Error("no Python 3.11 or newer with venv to make the engine's environment with ("
                       + "; ".join(why) + "): set Engine Python to one and install again")


class EQUI360_OT_install_engine(WaitsForEngine, bpy.types.Operator):
    """Make the engine's own Python environment in the engine folder (torch, with CUDA where an NVIDIA driver is,
    diffusers, …) and use it; again to repair it (Esc cancels; what is installed is kept)"""
    bl_idname = "equi360.install_engine"
    bl_label = "Install Engine"
    bl_options = {"REGISTER"}

    cpu: BoolProperty(name="CPU build", options={"SKIP_SAVE"},
                      description="torch's CPU build even where an NVIDIA driver is (drafts only, a smaller download)")

    stop_grace_s = STOP_GRACE_S
    shown = INSTALL
    _phase = "venv"
    _folder = None

    @classmethod
    def poll(cls, context):
        return not INSTALL.running

    def execute(self, context):  # background mode and scripts: block until the setup ends
        if not self._start(context):
            return {"CANCELLED"}
        final = self._process.wait(lambda event: self._on_event(context, event))
        return self._finish(context, final)

    def invoke(self, context, event):
        if bpy.app.background:
            return self.execute(context)
        if not self._start(context):
            return {"CANCELLED"}
        wm = context.window_manager
        wm.progress_begin(0, 1000)
        self._timer = wm.event_timer_add(TIMER_S, window=context.window)
        wm.modal_handler_add(self)
        status_text(context, f"Equi360: {INSTALL.status} (Esc cancels)")
        return {"RUNNING_MODAL"}

    def cancel(self, context):  # Blender closing the operator (file load, quit, its window closed)
        if self._process and not self._process.finished:
            self._process.kill()
            preferences(context).check_report = "Install Engine stopped: install again to finish"
        INSTALL.running = False

    def _start(self, context) -> bool:
        prefs = preferences(context)
        try:
            folder = engine_folder(prefs)
            python = setup_python(prefs)
            args = ["setup", str(folder), *(["--cpu"] if self.cpu else [])]
            self._process = EngineProcess(python, None, cwd=ADDON_ROOT, env=engine_env(), args=args)
        except REPORTED as err:
            report_error(self, err)
            return False
        self._folder = folder
        INSTALL.running, INSTALL.progress, INSTALL.status = True, 0.0, "installing the engine: starting"
        prefs.check_report = f"Installing the engine into {folder} (with {python})"
        return True

    def _on_event(self, context, event: dict) -> None:
        kind = event["event"]
        if kind == "progress" and event.get("stage") == "setup":
            self._phase = event.get("phase", self._phase)
            INSTALL.progress = event["step"] / event["total"]
            INSTALL.status = f"installing the engine, {min(event['step'] + 1, event['total'])}/{event['total']}: " \
                             f"{PHASES.get(self._phase, self._phase)}"
            if bpy.app.background:
                print(f"equi360: {INSTALL.status}", flush=True)
        elif kind == "log":
            if bpy.app.background:
                print(f"equi360: {event['message']}", flush=True)
                return
            line = event["message"].strip()
            INSTALL.status = f"installing the engine: {PHASES.get(self._phase, self._phase)}: {line[:90]}"
        elif kind == "warning":
            self.report({"WARNING"}, f"Equi360: {event['message']}")
            return
        else:
            return
        if not bpy.app.background:
            context.window_manager.progress_update(int(INSTALL.progress * 1000))
            status_text(context, f"Equi360: {INSTALL.status} (Esc cancels)")
            redraw_preferences()

    def _finish(self, context, final: dict | None) -> set:
        """The setup ended: use the environment, or say why not (Engine Python stays as it was)."""
        prefs = preferences(context)
        INSTALL.running = False
        if not bpy.app.background:
            redraw_preferences()
        if final is None or final["event"] == "error":
            code, message = engine_failure(final)
            outcome = "stopped" if code == "cancelled" else "failed"
            prefs.check_report = f"Install Engine {outcome} [{code}]: " + message
            return report_engine_error(self, final)
        prefs.engine_python = final["outputs"]["python"]
        done = (f"Engine installed in {final.get('folder', self._folder)}: torch {final.get('torch')} "
                f"({duration(final.get('seconds', 0))}); Engine Python set to it")
        prefs.check_report = "\n".join([done, summarize_check(final["check"])])
        self.report({"INFO"}, "Equi360: " + prefs.check_report.replace("\n", "; "))
        return {"FINISHED"}


def stop() -> None:
    """The add-on is unregistering (its engines, a setup among them, are killed by kill_all)."""
    INSTALL.__init__()


def draw_engine(layout, prefs) -> None:
    """The engine's part of the preferences: its Python, its folder, Install and Check, and what they said."""
    layout.prop(prefs, "engine_python")
    layout.prop(prefs, "engine_dir")
    row = layout.row()
    row.operator(EQUI360_OT_install_engine.bl_idname, icon="IMPORT")
    row.operator("equi360.check_engine", icon="CHECKMARK")
    if INSTALL.running:
        layout.progress(factor=INSTALL.progress, type="BAR", text=INSTALL.status)
    for line in prefs.check_report.splitlines():
        layout.label(text=line)
