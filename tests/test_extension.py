"""The repository is a Blender extension: the manifest passes Blender's own validator, it builds into
a zip without development files, and Blender registers it from an extensions repository."""

import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT


def blender_ext():
    import importlib.util
    spec = importlib.util.find_spec("bpy")
    if spec is None:
        pytest.skip("bpy is not installed")
    found = sorted(Path(spec.origin).parent.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    assert found, "blender_ext.py not found in the bpy wheel"
    return found[-1]


def run(*args, **kw):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=300, **kw)


def test_manifest_passes_blenders_validator():
    proc = run(blender_ext(), "validate", ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_extension_builds_into_a_zip_without_development_files(tmp_path):
    proc = run(blender_ext(), "build", "--source-dir", ROOT, "--output-dir", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (zip_path,) = tmp_path.glob("equi360-*.zip")
    names = zipfile.ZipFile(zip_path).namelist()
    assert "blender_manifest.toml" in names and "__init__.py" in names
    assert any(n.startswith("blender_equi360/") for n in names)
    assert any(n.startswith("operators/") for n in names) and any(n.startswith("engine/") for n in names)
    assert "requirements-engine.txt" in names  # Install Engine (python -m engine setup) installs from it
    assert not [n for n in names if n.split("/")[0] in {"tests", "bench", ".venv", ".ci", "samples", "docs"}]


def test_blender_registers_the_extension_from_a_repository(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "equi360").symlink_to(ROOT, target_is_directory=True)
    script = textwrap.dedent(f"""
        import os
        os.environ["BLENDER_USER_RESOURCES"] = {str(tmp_path / "user")!r}
        import bpy, addon_utils
        bpy.ops.wm.read_factory_settings(use_empty=True)
        bpy.context.preferences.extensions.repos.new(
            name="test_repo", module="test_repo", custom_directory={str(repo)!r}, source="USER")
        addon_utils.enable("bl_ext.test_repo.equi360", default_set=True, handle_error=None)
        import bl_ext.test_repo.equi360 as ext
        assert "bl_ext.test_repo.equi360" in bpy.context.preferences.addons
        from bl_ext.test_repo.equi360.blender_equi360 import Camera
        print("OK", Camera(100.0).hfov_deg)
    """)
    proc = run("-c", script)
    assert proc.returncode == 0 and "OK 100.0" in proc.stdout, proc.stdout + proc.stderr


def test_the_platform_zip_bundles_pyav_and_installs_in_blender(tmp_path):
    """tools/build_extension.py: one zip per platform with PyAV's wheel, installable by Blender itself."""
    proc = run(ROOT / "tools" / "build_extension.py", "--platforms", "linux-x64", "--output-dir", tmp_path / "dist")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (zip_path,) = (tmp_path / "dist").glob("equi360-*-linux_x64.zip")
    names = zipfile.ZipFile(zip_path).namelist()
    assert [n for n in names if n.startswith("wheels/av-") and n.endswith("manylinux_2_28_x86_64.whl")]
    manifest = zipfile.ZipFile(zip_path).read("blender_manifest.toml").decode()
    assert 'platforms = ["linux-x64"]' in manifest and "./wheels/av-" in manifest
    script = textwrap.dedent(f"""
        import os
        os.environ["BLENDER_USER_RESOURCES"] = {str(tmp_path / "user")!r}
        import bpy
        bpy.ops.wm.read_factory_settings(use_empty=True)
        bpy.ops.extensions.package_install_files(filepath={str(zip_path)!r}, repo="user_default",
                                                 enable_on_install=True)
        assert "bl_ext.user_default.equi360" in bpy.context.preferences.addons
        assert hasattr(bpy.ops.equi360, "convert")
        print("INSTALLED")
    """)
    proc = run("-c", script)
    assert proc.returncode == 0 and "INSTALLED" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
