# SPDX-License-Identifier: GPL-3.0-or-later
"""Equi360 Blender extension: entry point (registration only).

``blender_equi360`` is the bpy-free core, ``operators`` everything that touches ``bpy``; the generation
engine (``engine``) runs in its own Python and is only ever started as a subprocess.
"""

from . import operators


def register():
    operators.register()


def unregister():
    operators.unregister()
