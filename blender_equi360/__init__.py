"""Equi360 core: everything that imports neither ``bpy`` nor ``torch``, so Blender's Python, the engine's
Python and the tests all share it. Layers, each importing only those before it:

- :mod:`.jobs` — the contract (standard library only): job.json, events, windows, the engine client;
- :mod:`.geometry` — camera, projection, poles (numpy);
- :mod:`.media` — video, sound, MP4 360° metadata, image sequences (PyAV);
- :mod:`.stages` — the reference, joining windows, the finish, the delivery;
- :mod:`.quality` — measures, ``score``, the preview sheet;
- :mod:`.farm` and :mod:`.cli` on top.

The names below are the public API; they are imported on first use, so ``import blender_equi360.jobs`` needs
neither PyAV nor numpy. Conventions are stated in :mod:`.geometry.camera`.
"""

from importlib import import_module

_PUBLIC = {"Camera": ".geometry.camera", "CanvasSize": ".jobs.canvas", "Equi360Error": ".jobs.errors",
           "ReferenceResult": ".stages.reference", "ReferenceSettings": ".stages.reference",
           "build_reference": ".stages.reference"}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_PUBLIC[name], __name__), name)
