# SPDX-License-Identifier: GPL-3.0-or-later
"""Everything that imports ``bpy``: operators, panels, preferences. Registered by the extension root."""

import bpy

CLASSES: tuple = ()


def register():
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister():
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
