#!/usr/bin/env python
"""Build the installable extension zips, one per platform, with the wheels the Blender side needs.

    .venv/bin/python tools/build_extension.py [--platforms linux-x64 windows-x64 ...] [--output-dir dist]

Blender's Python has numpy but not PyAV, which the core uses to read and write video, so each zip
bundles PyAV's wheel for its platform (unmodified, from the package index, as Blender's extension rules
ask). The repository's own manifest lists no wheels (the development environment has PyAV installed);
this script stages the tracked files, downloads the wheels, adds them to the staged manifest and lets
Blender's own ``blender_ext.py build --split-platforms`` make the zips.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AV = "av==18.1.0"
PYTHON_VERSION = "3.11"  # Blender 4.2–5.0
# Blender's platform names → the wheel platform tags to ask the index for.
PLATFORMS = {
    "linux-x64": ["manylinux_2_28_x86_64"],
    "linux-arm64": ["manylinux_2_28_aarch64"],
    "windows-x64": ["win_amd64"],
    "macos-arm64": [f"macosx_{v}_0_arm64" for v in (11, 12, 13, 14, 15)],
    "macos-x64": [f"macosx_{v}_0_x86_64" for v in (10, 11, 12, 13, 14)],
}


def blender_ext() -> Path:
    spec = importlib.util.find_spec("bpy")
    if spec is None:
        sys.exit("the bpy module is needed for Blender's blender_ext.py (pip install bpy)")
    return sorted(Path(spec.origin).parent.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))[-1]


def stage(folder: Path) -> None:
    """The tracked files (the manifest's exclusions still apply at build time)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def download_wheels(folder: Path, platforms) -> list[str]:
    wheels = folder / "wheels"
    wheels.mkdir(exist_ok=True)
    for platform in platforms:
        tags = [arg for tag in PLATFORMS[platform] for arg in ("--platform", tag)]
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                        "--no-deps", "--only-binary=:all:", "--python-version", PYTHON_VERSION, *tags, AV,
                        "--dest", str(wheels)], check=True)
    return sorted(f"./wheels/{w.name}" for w in wheels.glob("*.whl"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--platforms", nargs="+", default=list(PLATFORMS), choices=list(PLATFORMS))
    parser.add_argument("--output-dir", default=str(ROOT / "dist"))
    args = parser.parse_args()
    output = Path(args.output_dir)
    staging = output / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    stage(staging)
    wheels = download_wheels(staging, args.platforms)
    manifest = staging / "blender_manifest.toml"
    text = manifest.read_text()
    listing = "".join(f'  "{w}",\n' for w in wheels)
    platforms = ", ".join(f'"{p}"' for p in args.platforms)
    head, tables = text.split("\n[", 1)  # top-level keys go before the first table
    manifest.write_text(f"{head.rstrip()}\n\nplatforms = [{platforms}]\nwheels = [\n{listing}]\n\n[{tables}")
    subprocess.run([sys.executable, str(blender_ext()), "build", "--split-platforms", "--source-dir", str(staging),
                    "--output-dir", str(output)], check=True)
    shutil.rmtree(staging)
    for zip_path in sorted(output.glob("equi360-*.zip")):
        print(zip_path)


if __name__ == "__main__":
    main()
