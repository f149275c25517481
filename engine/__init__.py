# SPDX-License-Identifier: GPL-3.0-or-later
"""The generation engine: LTX-2.3 + the VR-360 IC-LoRA with torch/diffusers, in its own Python.

Blender never imports it; the add-on starts it as ``python -m engine`` and the two meet only through
the core's job format (``blender_equi360``) and JSON lines on stdout.
"""
