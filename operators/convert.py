# SPDX-License-Identifier: GPL-3.0-or-later
"""``equi360.convert``: the selected movie strips to 360° videos, one after the other, by the engine as a
subprocess: modal with a timer when Blender has a UI (progress in the status bar, Esc cancels), blocking in
background mode, where timers and modal handlers never run."""

import os
from pathlib import Path

import bpy

from ..blender_equi360 import Equi360Error
from ..blender_equi360.jobs.engine_process import CANCEL_GRACE_S, EngineProcess
from ..blender_equi360.jobs.remote import RemoteEngineProcess, RemoteHost
from ..blender_equi360.media.remux import span_for_upload
from . import compat, scene_read, world
from .compat import sequencer_scene
from .job_setup import prepare_job, show_result, strips_to_convert
from .preferences import ADDON_ROOT, PACKAGE, preferences
from .reports import REPORTED, engine_failure, report_engine_error, report_error
from .waiting import TIMER_S, WaitsForEngine, duration

BYTE_STAGES = ("upload", "download")  # progress counted in bytes (the engine on another machine)


def remote_host(prefs) -> RemoteHost:
    """The preferences' remote engine (Equi360Error when it is not set up)."""
    if not bpy.app.online_access:  # a machine on the LAN is still the network, which the user controls
        raise Equi360Error("Blender's online access is off: allow it in Preferences > System > Network to run the "
                           "engine on another machine")
    if not prefs.remote_host.strip():
        raise Equi360Error("set the remote host (user@host[:port]) in the add-on preferences, or turn off running "
                           "the engine on another machine")
    # Host keys: the user's own record is honoured; a new host is recorded in the add-on's (first on first use).
    known_hosts = (str(Path(bpy.utils.extension_path_user(PACKAGE, create=True)) / "known_hosts"), "~/.ssh/known_hosts")
    return RemoteHost(prefs.remote_host.strip(), python=prefs.remote_python, root=prefs.remote_root,
                      jobs=prefs.remote_jobs, identity=bpy.path.abspath(prefs.remote_identity) or None,
                      known_hosts=known_hosts)


def start_engine(prefs, job_dir, remote: RemoteHost | None = None):
    """The engine on the job: here (EngineProcess), or on ``remote`` over SSH."""
    if remote is not None:
        return RemoteEngineProcess(remote, job_dir, prepare_source=span_for_upload)
    return EngineProcess(bpy.path.abspath(prefs.engine_python), job_dir, cwd=ADDON_ROOT,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})


class EQUI360_OT_convert(WaitsForEngine, bpy.types.Operator):
    """Convert the selected movie strips (or the active one) to 360° videos with the engine, one after
    the other"""
    bl_idname = "equi360.convert"
    bl_label = "Convert to 360°"
    bl_options = {"REGISTER"}

    stop_after = "delivery"  # what the engine makes of each job (job.json's stop_after)
    _process = None  # the EngineProcess while running
    _timer = None
    _queue = ()      # names of the strips still to convert
    _remote = None   # the RemoteHost the engine runs on (the preferences' Run on another machine), or None
    _failed = False
    stop_grace_s = CANCEL_GRACE_S  # the engine ends its denoising step first

    def strips(self, scene) -> list:
        return strips_to_convert(scene)

    def show(self, context, final: dict) -> None:
        """The engine's result in the scene."""
        video = final["outputs"]["video"]
        show_result(context, video)
        sent = f" (made on {final['remote']}: {final.get('uploaded_bytes', 0) / 1e6:.1f} MB up, " \
            f"{final.get('downloaded_bytes', 0) / 1e6:.1f} MB down)" if final.get("remote") else ""
        self.report({"INFO"}, f"360° video: {video}{sent}" + (" (a draft: no model was run)" if final.get("draft")
                                                              else ""))
        sequencer_scene(context).equi360.status = ("DRAFT " if final.get("draft") else "") + f"done: {video}"

    @classmethod
    def poll(cls, context):
        return not sequencer_scene(context).equi360.running

    def _queue_strips(self, context) -> bool:
        prefs = preferences(context)
        if not (prefs.use_remote or prefs.engine_python):
            self.report({"ERROR"}, "the engine is not configured: set the engine's Python in the add-on preferences")
            return False
        try:
            self._remote = None
            if prefs.use_remote:  # before any job folder is made
                self._remote = remote_host(prefs)
                self._remote.check_client()
            self._queue = [s.name for s in self.strips(sequencer_scene(context))]
        except REPORTED as err:
            report_error(self, err)
            return False
        return True

    def _start_next(self, context) -> bool:
        """Prepare and start the next strip's job; False when the queue is empty or the strip failed."""
        scene, prefs = sequencer_scene(context), preferences(context)
        while self._queue:
            name, self._queue = self._queue[0], self._queue[1:]
            try:
                job_dir = prepare_job(context, self, compat.strips(scene.sequence_editor, everything=True)[name],
                                      stop_after=self.stop_after)
                self._process = start_engine(prefs, job_dir, self._remote)
            except REPORTED as err:
                report_error(self, err, f"{name}: ")
                self._failed = True
                continue
            state = scene.equi360
            state.running, state.progress, state.status = True, 0.0, f"{name}: starting the engine"
            return True
        return False

    def execute(self, context):  # background mode and scripts: block until the engines end
        if not self._queue_strips(context):
            return {"CANCELLED"}
        while self._start_next(context):
            final = self._process.wait(lambda event: self._on_event(context, event))
            self._finish(context, final)
            if final and final.get("code") == "cancelled":
                break
        return {"CANCELLED"} if self._failed else {"FINISHED"}

    def invoke(self, context, event):
        if bpy.app.background:
            return self.execute(context)
        if not (self._queue_strips(context) and self._start_next(context)):
            return {"CANCELLED"}
        wm = context.window_manager
        self._timer = wm.event_timer_add(TIMER_S, window=context.window)
        wm.modal_handler_add(self)
        wm.progress_begin(0, 1000)
        return {"RUNNING_MODAL"}

    def _shown(self, context):
        return sequencer_scene(context).equi360

    def modal(self, context, event):
        if not self._watch(context, event):
            return {"PASS_THROUGH"}
        final = self._process.final_event
        self._finish(context, final)
        if not (final and final.get("code") == "cancelled") and self._start_next(context):
            return {"PASS_THROUGH"}
        self._stop_waiting(context)
        return {"CANCELLED"} if self._failed else {"FINISHED"}

    def cancel(self, context):  # Blender closing the operator (file load, quit): never leave the engine
        if self._process and not self._process.finished:
            self._process.kill()
        sequencer_scene(context).equi360.running = False

    def _on_event(self, context, event: dict) -> None:
        state = sequencer_scene(context).equi360
        kind = event["event"]
        if kind == "progress" and event.get("total"):
            if "job_fraction" in event:  # the engine's share of the whole job: only grows, across its stages
                state.progress = max(state.progress, event["job_fraction"])
                left = event.get("job_eta_s")
            else:  # the upload before or the download after a remote engine's run: the bar waits
                left = event.get("eta_s")
            eta = f", {duration(left)} left" if left is not None else ""
            window = f"window {event['window']}/{event['windows']}: " if event.get("windows", 1) > 1 else ""
            if event["stage"] in BYTE_STAGES:
                state.status = f"{event['stage']} {event['step'] / 1e6:.1f}/{event['total'] / 1e6:.1f} MB{eta}"
            else:
                state.status = f"{window}{event['stage']} {event['step']}/{event['total']}{eta}"
            if not bpy.app.background:
                context.window_manager.progress_update(int(state.progress * 1000))
                context.workspace.status_text_set(f"Equi360: {state.status} (Esc cancels)")
                for area in context.screen.areas:
                    area.tag_redraw()
        elif kind == "warning":
            self.report({"WARNING"}, event["message"])
        elif kind == "log" and bpy.app.background:
            print(f"equi360: {event['message']}")

    def _finish(self, context, final: dict | None) -> None:
        """One job ended: show its result, or report why not."""
        state = sequencer_scene(context).equi360
        state.running = False
        if final is None or final["event"] == "error":
            state.status = "[{}] {}".format(*engine_failure(final))
            report_engine_error(self, final)
            self._failed = True
            return
        try:
            self.show(context, final)
        except REPORTED as err:
            report_error(self, err)
            self._failed = True
            return
        state.progress = 1.0


class EQUI360_OT_build_reference(EQUI360_OT_convert):
    """Build the masked 360° reference of the active movie strip (in the engine: Blender does not wait) and
    show it as the world, to check the plate's placement before any GPU time is spent"""
    bl_idname = "equi360.build_reference"
    bl_label = "Build 360° Reference"
    stop_after = "reference"

    def strips(self, scene) -> list:
        return [scene_read.active_movie_strip(scene)]

    def show(self, context, final: dict) -> None:
        scene = sequencer_scene(context)
        reference = final["outputs"]["reference"]
        world.load_world(scene, reference, scene.equi360.heading_deg, scene.equi360.source_start)
        scene.equi360.status = f"reference: {reference}"
        self.report({"INFO"}, f"reference in {scene.equi360.job_dir}")
