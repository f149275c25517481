"""What each release of the VR-360 IC-LoRA was made for: its canvas, the sources it was trained on, and
so the reference it wants and the warnings a source outside them gets. Declared once here; the reference
builder, the CLI, the add-on and the engine's model search read it.

- **v0.1** (``ltx-2.3-22b-ic-lora-360-equirect-poc-step3500.safetensors``): 1920×960, sources cropped to
  2.39:1, semi-static city shots near 100° across (its model card).
- **1.0** ("VR-360-Outpaint 1.0", ``360vroutpaint_v2_step09000.safetensors``): retrained on mixed
  resolutions, run by its author at 2560×1280, from sources of 70–130° across and aspect 1.33–2.39, not
  cropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from .canvas import CanvasSize
from .errors import Equi360Error


@dataclass(frozen=True)
class LoraVersion:
    name: str
    canvas: CanvasSize                 # the reference's canvas
    crop: str                          # "center": the source cropped to 2.39:1; "none": kept as it is
    hfov_deg: tuple[float, float]      # the sources' horizontal FOV it works best with
    aspect: tuple[float, float]        # the sources' picture aspect it was trained on
    file_names: tuple[str, ...]        # as published

    def sweet_spot_warnings(self, hfov_deg: float, aspect: float) -> list[str]:
        """What a source of this FOV and picture aspect (after any crop) is told."""
        warnings = []
        low, high = self.hfov_deg
        if not low <= hfov_deg <= high:
            warnings.append(f"the clip spans {hfov_deg:.0f}° across; the VR-360 LoRA {self.name} works best from "
                            f"{low:.0f}° to {high:.0f}°")
        low, high = self.aspect
        if not low * 0.99 <= aspect <= high * 1.01:
            shape = f"{low:.2f}:1" if low == high else f"{low:.2f}:1 to {high:.2f}:1"
            warnings.append(f"the picture is {aspect:.2f}:1; the VR-360 LoRA {self.name} was trained on {shape}")
        return warnings


LORA_VERSIONS = {version.name: version for version in (
    LoraVersion("0.1", CanvasSize(1920, 960), "center", (80.0, 120.0), (2.39, 2.39),
                ("ltx-2.3-22b-ic-lora-360-equirect-poc-step3500.safetensors",)),
    LoraVersion("1.0", CanvasSize(2560, 1280), "none", (70.0, 130.0), (1.33, 2.39),
                ("360vroutpaint_v2_step09000.safetensors",)),
)}
DEFAULT_LORA_VERSION = "1.0"
CANVASES = tuple(str(version.canvas) for version in LORA_VERSIONS.values())  # the model's canvases


def lora_version(name: str) -> LoraVersion:
    try:
        return LORA_VERSIONS[name]
    except KeyError:
        raise Equi360Error(f"LoRA version {name!r} is not one of {', '.join(LORA_VERSIONS)}") from None
