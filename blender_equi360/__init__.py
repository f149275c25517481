"""Equi360 core: camera model, flat→equirect projection, masks, video I/O.

Imports neither ``bpy`` nor ``torch`` (numpy and PyAV only), so Blender's Python, the engine's Python
and the tests all share it. Conventions are stated in :mod:`.camera`.
"""

from .camera import Camera
from .errors import Equi360Error
from .projection import CanvasSize
from .reference import ReferenceResult, ReferenceSettings, build_reference

__all__ = ["Camera", "CanvasSize", "Equi360Error", "ReferenceResult", "ReferenceSettings", "build_reference"]
