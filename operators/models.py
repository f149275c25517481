# SPDX-License-Identifier: GPL-3.0-or-later
"""The model files: ``equi360.find_models`` looks for the ones this machine has, ``equi360.download_models``
downloads a set from Hugging Face; both fill the preferences' model paths. The engine does the work in its
own Python (``python -m engine models find | sets | fetch``): here only starting it, reading its answer and
showing it. With a UI both are modal with a timer (Esc cancels) and Blender never waits on the engine; in
background mode, where timers and modal handlers never run, they block until the engine is done."""

import time
from dataclasses import dataclass
from pathlib import Path

import bpy
from bpy.props import StringProperty

from ..blender_equi360 import Equi360Error
from ..blender_equi360.jobs.engine_process import EngineProcess, EngineQuery
from ..blender_equi360.jobs.lora_versions import LORA_VERSIONS
from .preferences import ADDON_ROOT, MODEL_ROLES, PACKAGE, preferences, use_found_set, use_model_files
from .reports import REPORTED, engine_failure, report_engine_error, report_error
from .waiting import (
    TIMER_S,
    WaitsForEngine,
    WaitsForQuery,
    duration,
    engine_env,
    engine_python,
    redraw_preferences,
    status_text,
    wait_modally,
)

STOP_GRACE_S = 3.0       # after Esc, the download stops at its next chunk; a stalled connection is killed
REPORTED_UNUSED = 8      # files in no set listed in the preferences (the report has them all)
CATALOG_RETRY_S = 10.0   # a failed ``models sets`` is tried again (the engine's environment may have been fixed)


def models_folder(prefs) -> Path:
    """The preferences' models folder, or the extension's own (``…/extensions/.user/…/equi360/models``)."""
    if not prefs.models_dir.strip():
        return Path(bpy.utils.extension_path_user(PACKAGE, path="models", create=False))
    folder = Path(bpy.path.abspath(prefs.models_dir)).expanduser()
    if not folder.is_absolute():  # the engine runs in the extension's folder: a relative path would land there
        raise Equi360Error(f"the models folder {prefs.models_dir!r} is not an absolute path: choose a folder")
    return folder


def _size(nbytes: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes / 1e3:.0f} kB"


# --- the downloadable sets (``models sets``), for the Download Models menu -------------------------------------------

@dataclass
class _Catalog:
    """The sets ``python -m engine models sets`` lists, read once per engine Python on a thread (the menu is
    drawn on Blender's main thread, and the engine's Python takes a moment to start)."""
    python: str | None = None
    query: EngineQuery | None = None
    sets: dict | None = None
    error: str | None = None
    failed_at: float = 0.0


CATALOG = _Catalog()


def catalog(prefs, wait: bool = False) -> dict | None:
    """The sets by name (``{name: {description, recipes, approx_gb, files}}``), or None while they are being
    read or could not be (``CATALOG.error`` says why). Starts reading them when needed; ``wait`` (background
    mode only) waits for them."""
    python = bpy.path.abspath(prefs.engine_python) if prefs.engine_python else None
    retry = CATALOG.error is not None and time.monotonic() - CATALOG.failed_at > CATALOG_RETRY_S
    if python != CATALOG.python or (retry and python is not None):
        CATALOG.python, CATALOG.query, CATALOG.sets, CATALOG.error = python, None, None, None
        if python is None:
            CATALOG.error = "set the engine's Python first"
            return None
        try:
            CATALOG.query = EngineQuery(python, ["models", "sets"], cwd=ADDON_ROOT, env=engine_env())
        except REPORTED as err:
            CATALOG.error, CATALOG.failed_at = str(err), time.monotonic()
            return None
        if not bpy.app.background and not bpy.app.timers.is_registered(_catalog_timer):
            bpy.app.timers.register(_catalog_timer, first_interval=TIMER_S)
    if CATALOG.query is not None and (wait or CATALOG.query.finished):
        _keep_catalog()
    return CATALOG.sets


def _keep_catalog() -> None:
    """The sets read (waiting for them if they are not yet), or why not."""
    query, CATALOG.query = CATALOG.query, None
    try:
        CATALOG.sets = query.wait()
    except REPORTED as err:
        CATALOG.error, CATALOG.failed_at = str(err), time.monotonic()


def _catalog_timer():
    """Once the sets are read, keep them and redraw the preferences, where the menu is."""
    if CATALOG.query is not None and not CATALOG.query.finished:
        return TIMER_S
    if CATALOG.query is not None:
        _keep_catalog()
        redraw_preferences()
    return None


def stop() -> None:
    """The add-on is unregistering: no timer of this module may outlive it (engines are killed by kill_all)."""
    if bpy.app.timers.is_registered(_catalog_timer):
        bpy.app.timers.unregister(_catalog_timer)
    CATALOG.__init__()


# --- Find Models --------------------------------------------------------------------------------------------------

def set_label(found: dict) -> str:
    parts = [Path(found["checkpoint"]).name, found["text_encoder_kind"], f"IC-LoRA {found['ic_lora_version']}"]
    return " + ".join(parts + (["distilled LoRA"] if found["distilled_lora"] else []))


def set_summary(found: dict) -> str:
    memory, low = found["memory_gb"], found["memory_gb_low_vram"]
    recipes = ", ".join(found["recipes"]) or "none until the checkpoint kind is set"
    return (f"recipes: {recipes}; GPU memory for the weights: text {memory['text_gb']} GB, denoise "
            f"{memory['denoise_gb']} GB, decode {memory['decode_gb']} GB (Low VRAM: denoise {low['denoise_gb']} GB)")


class EQUI360_OT_find_models(WaitsForQuery, bpy.types.Operator):
    """Look for the model files on this machine (the models folder, ComfyUI installs, the Hugging Face cache)
    and use the most capable complete set"""
    bl_idname = "equi360.find_models"
    bl_label = "Find Models"
    bl_options = {"REGISTER"}

    directory: StringProperty(name="Also search", subtype="DIR_PATH", options={"SKIP_SAVE"},
                              description="A folder to search as well (with its subfolders)")

    waiting = "Equi360: looking for the model files (Esc cancels)"

    def _start(self, context) -> bool:
        prefs = preferences(context)
        try:
            folders = [bpy.path.abspath(self.directory)] if self.directory else []
            if models_folder(prefs).is_dir():
                folders.append(str(models_folder(prefs)))
            self._query = EngineQuery(engine_python(prefs), ["models", "find", *folders], cwd=ADDON_ROOT,
                                      env=engine_env())
        except REPORTED as err:
            report_error(self, err)
            return False
        return True

    def _finish(self, context, read_report) -> set:
        prefs = preferences(context)
        try:
            report = read_report()
        except REPORTED as err:
            prefs.models_report = f"Find Models failed: {err}"
            return report_error(self, err)
        prefs.found_sets.clear()
        if not report["sets"]:
            return self._nothing_found(prefs, report)
        for found in report["sets"]:
            entry = prefs.found_sets.add()
            entry.label, entry.summary = set_label(found), set_summary(found)
            for role in MODEL_ROLES:
                setattr(entry, role, found[role] or "")
            entry.variant = found["checkpoint_variant"] or ""
            entry.lora_version = found["ic_lora_version"] or ""
            entry.recipes = ",".join(found["recipes"])
        changes = use_found_set(prefs, 0)  # the most capable set
        prefs.found_set = "0"  # shown as the one in use (choosing it again changes nothing)
        first = report["sets"][0]
        others = len(report["sets"]) - 1
        lines = [f"Using: {set_label(first)}", set_summary(first), *changes, *first["notes"], *report["notes"]]
        if others:
            lines.append(f"{others} more complete set(s) found: choose one under Model set")
        prefs.models_report = "\n".join(lines)
        self.report({"INFO"}, f"Equi360: model files found; using {set_label(first)}: {set_summary(first)}"
                              + "".join(f"; {change}" for change in changes))
        for note in first["notes"] + report["notes"]:
            self.report({"WARNING"}, f"Equi360: {note}")
        return {"FINISHED"}

    def _nothing_found(self, prefs, report: dict) -> set:
        """No complete set: say why each file found is in none, and what the search noted."""
        why = [f"{Path(u['path']).name}: {u['why']}" for u in report["unused"]]
        searched = [s["path"] for s in report["searched"]]
        shown = why[:REPORTED_UNUSED] + ([f"… and {len(why) - REPORTED_UNUSED} more"] if why[REPORTED_UNUSED:] else [])
        lines = [f"No complete model set found (searched {len(searched)} folder(s); Download Models brings one)",
                 *shown, *report["notes"]]
        prefs.models_report = "\n".join(lines)
        self.report({"WARNING"}, "Equi360: " + "; ".join(lines[:1] + why + report["notes"]))
        return {"CANCELLED"}


# --- Download Models ----------------------------------------------------------------------------------------------

@dataclass
class _Download:
    """The download in progress (one at a time), for the preferences' progress bar."""
    running: bool = False
    progress: float = 0.0
    status: str = ""


DOWNLOAD = _Download()


def lora_version_of(path: str | None) -> str | None:
    """The VR-360 IC-LoRA's release by its published file name (the files carry no version of their own)."""
    name = Path(path).name.lower() if path else ""
    return next((v.name for v in LORA_VERSIONS.values() if name in (n.lower() for n in v.file_names)), None)


class EQUI360_OT_download_models(WaitsForEngine, bpy.types.Operator):
    """Download a model set from Hugging Face into the models folder and use it (Esc cancels; what was
    downloaded is kept, and downloading the same set again continues)"""
    bl_idname = "equi360.download_models"
    bl_label = "Download Models"
    bl_options = {"REGISTER"}

    model_set: StringProperty(name="Model set", options={"SKIP_SAVE"},
                              description="The set to download: one that python -m engine models sets lists")

    stop_grace_s = STOP_GRACE_S
    shown = DOWNLOAD
    _percent = -1       # the last percentage printed in background mode

    @classmethod
    def poll(cls, context):
        return not DOWNLOAD.running

    @classmethod
    def description(cls, context, properties):
        sets = CATALOG.sets or {}
        entry = sets.get(properties.model_set) if properties else None
        if entry is None:
            return " ".join(cls.__doc__.split())
        return (f"Download the set {properties.model_set} (about {entry['approx_gb']:.0f} GB; recipes: "
                f"{', '.join(entry['recipes'])}): {entry['description']}")

    def execute(self, context):  # background mode and scripts: block until the download ends
        if not self._start(context):
            return {"CANCELLED"}
        final = self._process.wait(lambda event: self._on_event(context, event))
        return self._finish(context, final)

    def invoke(self, context, event):
        if bpy.app.background:
            return self.execute(context)
        if not self._start(context):
            return {"CANCELLED"}
        context.window_manager.progress_begin(0, 1000)
        return wait_modally(self, context, f"Equi360: {DOWNLOAD.status} (Esc cancels)")

    def cancel(self, context):  # Blender closing the operator (file load, quit, its window closed)
        if self._process and not self._process.finished:
            self._process.kill()
            preferences(context).models_report = (f"Download of {self.model_set} stopped: download it again to "
                                                  "continue where it stopped")
        DOWNLOAD.running = False

    def _start(self, context) -> bool:
        prefs = preferences(context)
        try:
            python = engine_python(prefs)
            if not bpy.app.online_access:
                raise Equi360Error("Blender's online access is off: allow it in Preferences > System > Network to "
                                   "download the model files")
            sets = catalog(prefs, wait=bpy.app.background)  # with a UI, the menu only offers the sets there are
            names = f"one of {', '.join(sets)}" if sets else "one that python -m engine models sets lists"
            if not self.model_set:
                raise Equi360Error(f"choose the model set to download: {names}")
            if sets is not None and self.model_set not in sets:
                raise Equi360Error(f"{self.model_set!r} is not a model set to download: choose {names}")
            folder = models_folder(prefs)
            self._process = EngineProcess(python, None, cwd=ADDON_ROOT, env=engine_env(),
                                          args=["models", "fetch", self.model_set, str(folder)])
        except REPORTED as err:
            report_error(self, err)
            return False
        DOWNLOAD.running, DOWNLOAD.progress = True, 0.0
        DOWNLOAD.status = f"{self.model_set}: asking Hugging Face about the files"
        prefs.models_report = f"Downloading the set {self.model_set} into {folder}"
        return True

    def _on_event(self, context, event: dict) -> None:
        kind = event["event"]
        if kind == "progress" and event.get("total"):
            DOWNLOAD.progress = event["step"] / event["total"]
            eta = f", {duration(event['eta_s'])} left" if event.get("eta_s") is not None else ""
            where = f" ({Path(event['file']).name})" if event.get("file") else ""
            DOWNLOAD.status = (f"{self.model_set}: {_size(event['step'])} of {_size(event['total'])}{eta}"
                               f"{where}")
            if bpy.app.background:
                if int(DOWNLOAD.progress * 100) != self._percent:  # a line per percent, not two a second
                    self._percent = int(DOWNLOAD.progress * 100)
                    print(f"equi360: {DOWNLOAD.status}", flush=True)
            else:
                context.window_manager.progress_update(int(DOWNLOAD.progress * 1000))
                status_text(context, f"Equi360: {DOWNLOAD.status} (Esc cancels)")
                redraw_preferences()
        elif kind == "warning":
            self.report({"WARNING"}, event["message"])
        elif kind == "log" and bpy.app.background:
            print(f"equi360: {event['message']}", flush=True)

    def _finish(self, context, final: dict | None) -> set:
        """The download ended: use its files, or report why not (the preferences stay as they were)."""
        prefs = preferences(context)
        DOWNLOAD.running = False
        if not bpy.app.background:
            redraw_preferences()
        if final is None or final["event"] == "error":
            code, message = engine_failure(final)
            outcome = "stopped" if code == "cancelled" else "failed"
            prefs.models_report = f"Download of {self.model_set} {outcome} [{code}]: " + message
            return report_engine_error(self, final)
        outputs = final["outputs"]
        sets = catalog(prefs, wait=bpy.app.background) or {}  # read while the set downloaded
        recipes = sets.get(final.get("set"), {}).get("recipes", ())
        # The published checkpoints say their kind (metadata, name): Auto reads it.
        changes = use_model_files(prefs, outputs, True, lora_version_of(outputs.get("ic_lora")), recipes)
        prefs.found_sets.clear()  # the last search's list no longer says what is in use
        done = (f"Downloaded the set {final.get('set', self.model_set)} into {final.get('folder')} "
                f"({_size(final.get('downloaded_bytes', 0))} in {duration(final.get('seconds', 0))}): using it")
        prefs.models_report = "\n".join([done, *changes])
        self.report({"INFO"}, f"Equi360: {done}" + "".join(f"; {change}" for change in changes))
        return {"FINISHED"}


# --- in the preferences ---------------------------------------------------------------------------------------------

class EQUI360_MT_model_sets(bpy.types.Menu):
    """The sets Download Models can download, as ``python -m engine models sets`` lists them"""
    bl_idname = "EQUI360_MT_model_sets"
    bl_label = "Download Models"

    def draw(self, context):
        layout = self.layout
        sets = catalog(preferences(context))
        if sets is None:
            layout.label(text=CATALOG.error or "reading the model sets…", icon="INFO")
            return
        for name, entry in sets.items():
            text = f"{name}: about {entry['approx_gb']:.0f} GB ({', '.join(entry['recipes'])})"
            layout.operator(EQUI360_OT_download_models.bl_idname, text=text).model_set = name


def draw_model_files(layout, prefs, context) -> None:
    """The model paths, and finding or downloading them (the preferences' draw)."""
    for name in MODEL_ROLES:
        layout.prop(prefs, name)
    layout.prop(prefs, "models_dir")
    catalog(prefs)  # read before the menu is opened: it is there by the time the user clicks
    row = layout.row()
    row.operator(EQUI360_OT_find_models.bl_idname, icon="VIEWZOOM")
    row.menu(EQUI360_MT_model_sets.bl_idname, text="Download Models", icon="IMPORT")
    if len(prefs.found_sets) > 1:
        layout.prop(prefs, "found_set")
    if DOWNLOAD.running:
        layout.progress(factor=DOWNLOAD.progress, type="BAR", text=DOWNLOAD.status)
    for line in prefs.models_report.splitlines():
        layout.label(text=line)
