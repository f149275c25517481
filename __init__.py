# SPDX-License-Identifier: GPL-3.0-or-later
"""Equi360 Blender extension: entry point (registration only).

``blender_equi360`` is the bpy-free core, ``operators`` everything that touches ``bpy``; the generation
engine (``engine``) runs in its own Python and is only ever started as a subprocess. ``operators`` is
imported on registration, not at import, so tools that import this folder as a package (pytest collects
the repository root as one) don't pull in ``bpy``.
"""


def register():
    from . import operators
    operators.register()


def unregister():
    from . import operators
    operators.unregister()
