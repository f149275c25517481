"""Find Models and Download Models (``equi360.find_models``, ``equi360.download_models``) in real Blender (the
``bpy`` wheel, headless, background mode: they block until the engine is done), with the real engine: find
over the tiny model set, downloads through the loopback Hugging Face hub (tests/hub_server.py). No user
settings leak in: another home, an empty Hugging Face cache, no token."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_addon import blender, bpy_python  # noqa: F401  (fixture)
from test_engine_models_cli import environment, hub  # noqa: F401  (fixture)

from conftest import ROOT
from engine.model_sets import SETS

ROLES = ("checkpoint", "text_encoder", "ic_lora", "distilled_lora")
PREFERENCES = """
ROLES = ("checkpoint", "text_encoder", "ic_lora", "distilled_lora")

def model_prefs():
    return {name: getattr(prefs, name) for name in ROLES + ("checkpoint_variant", "lora_version", "preset")}

def run(operator, **properties):
    try:
        return sorted(operator(**properties)), ""
    except RuntimeError as err:  # reports of level ERROR raise from bpy.ops in background mode
        return ["CANCELLED"], str(err)
"""


def in_blender(tmp_path, bpy_python, body: str) -> dict:  # noqa: F811
    return blender(tmp_path, bpy_python=bpy_python, body=PREFERENCES + textwrap.dedent(body))


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Blender and the engines it starts see ``environment()`` (with the hub given, HF_ENDPOINT is it)."""
    def use(hub_server=None):
        env = environment(tmp_path, hub_server, HF_HUB_CACHE=str(tmp_path / "no-cache"))
        for key in set(os.environ) - set(env):
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        return env
    return use


@pytest.fixture
def tiny_folder(tiny_files, tmp_path):
    """The tiny model set in one folder, its IC-LoRA under the VR-360 LoRA 1.0's name (find knows it by name)."""
    folder = tmp_path / "tiny"
    shutil.copytree(Path(tiny_files["checkpoint"]).parent, folder)
    (folder / Path(tiny_files["ic_lora"]).name).rename(folder / "360vroutpaint_v2_step09000.safetensors")
    return folder


def test_find_models_uses_the_most_capable_set_and_lists_the_others(tmp_path, tiny_folder, isolated, bpy_python):  # noqa: F811
    env = isolated()
    engine = subprocess.run([sys.executable, "-m", "engine", "models", "find", str(tiny_folder)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    expected = json.loads(engine.stdout)["sets"]
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(tiny_folder / "ltx-2.3-tiny-distilled.safetensors", partial)
    result = in_blender(tmp_path, bpy_python, f"""
        prefs.checkpoint, prefs.checkpoint_variant, prefs.lora_version = "/old/ckpt.safetensors", "dev", "0.1"
        before = model_prefs()
        nothing = run(bpy.ops.equi360.find_models, directory={str(partial)!r})
        after_nothing = model_prefs()
        nothing_report = prefs.models_report
        prefs.models_dir = {str(tiny_folder)!r}
        found = run(bpy.ops.equi360.find_models)
        first = model_prefs()
        first_report = prefs.models_report
        labels = [entry.label for entry in prefs.found_sets]
        prefs.preset = "quality"
        prefs.found_set = str([entry.variant for entry in prefs.found_sets].index("distilled"))
        report(before=before, nothing=nothing, after_nothing=after_nothing, nothing_report=nothing_report,
               found=found, first=first, first_report=first_report, labels=labels, chosen=model_prefs(),
               chosen_report=prefs.models_report)
    """)
    # Nothing complete: a warning with why, and the preferences as they were.
    assert result["nothing"][0] == ["CANCELLED"] and result["after_nothing"] == result["before"]
    assert "No complete model set found" in result["nothing_report"]
    assert "ltx-2.3-tiny-distilled.safetensors: no Gemma 3 12B text encoder found" in result["nothing_report"]

    # The most capable set (find's first), with the kind and LoRA version that go with it.
    assert result["found"] == [["FINISHED"], ""]
    assert {role: result["first"][role] for role in ROLES} == {role: expected[0][role] or "" for role in ROLES}
    assert result["first"]["checkpoint_variant"] == "auto" and result["first"]["lora_version"] == "1.0"
    assert result["first_report"].startswith("Using: ") and "recipes: quality, fast" in result["first_report"]
    assert "GPU memory" in result["first_report"] and "2 more complete set(s)" in result["first_report"]
    assert len(result["labels"]) == len(expected) == 3

    # Another set chosen from the list: its files, no distilled LoRA, and a preset it can run.
    distilled = next(s for s in expected if s["checkpoint_variant"] == "distilled")
    assert {role: result["chosen"][role] for role in ROLES} == {role: distilled[role] or "" for role in ROLES}
    assert result["chosen"]["distilled_lora"] == "" and result["chosen"]["preset"] == "fast"
    assert "preset: fast" in result["chosen_report"]


def test_download_models_fills_the_preferences_from_the_set_downloaded(tmp_path, hub, isolated, bpy_python):  # noqa: F811
    isolated(hub)
    folder = tmp_path / "models"
    result = in_blender(tmp_path, bpy_python, f"""
        bpy.context.preferences.system.use_online_access = True
        prefs.models_dir = {str(folder)!r}
        prefs.preset, prefs.lora_version = "quality", "0.1"
        outcomes = {{}}
        for name in ("dev-fp8", "distilled-fp8"):
            outcomes[name] = [run(bpy.ops.equi360.download_models, model_set=name), model_prefs(),
                              prefs.models_report]
        report(outcomes=outcomes)
    """)
    for name, ((status, message), paths, text) in result["outcomes"].items():
        assert status == ["FINISHED"], message
        wanted = dict.fromkeys(ROLES, "") | {item.role: str(folder / item.local_name) for item in SETS[name].files}
        assert {role: paths[role] for role in ROLES} == wanted
        assert all(Path(paths[role]).is_file() for role in ROLES if paths[role])
        assert paths["checkpoint_variant"] == "auto" and paths["lora_version"] == "1.0"
        assert text.startswith(f"Downloaded the set {name} into {folder}")
    assert result["outcomes"]["dev-fp8"][1]["preset"] == "quality"  # the dev set runs both recipes
    assert result["outcomes"]["distilled-fp8"][1]["preset"] == "fast"  # the distilled one only the fast one


def test_a_failed_download_is_reported_with_its_code_and_changes_nothing(tmp_path, hub, isolated, bpy_python):  # noqa: F811
    hub.gated.add("Lightricks/LTX-2.3-fp8")
    isolated(hub)
    folder = tmp_path / "models"
    result = in_blender(tmp_path, bpy_python, f"""
        prefs.models_dir = {str(folder)!r}
        prefs.checkpoint, prefs.distilled_lora = "/mine/ckpt.safetensors", "/mine/lora.safetensors"
        before = model_prefs()
        outcomes = {{}}
        bpy.context.preferences.system.use_online_access = False
        outcomes["offline"] = run(bpy.ops.equi360.download_models, model_set="distilled-fp8")
        bpy.context.preferences.system.use_online_access = True
        outcomes["gated"] = run(bpy.ops.equi360.download_models, model_set="distilled-fp8")
        gated_report = prefs.models_report
        outcomes["unknown"] = run(bpy.ops.equi360.download_models, model_set="no-such-set")
        report(outcomes=outcomes, same=model_prefs() == before, gated_report=gated_report)
    """)
    outcomes = result["outcomes"]
    assert outcomes["offline"][0] == ["CANCELLED"] and "online access is off" in outcomes["offline"][1]
    status, message = outcomes["gated"]
    assert status == ["CANCELLED"] and "Equi360 [gated_repo]: " in message and "accept its licence" in message
    assert result["gated_report"].startswith("Download of distilled-fp8 failed [gated_repo]")
    assert outcomes["unknown"][0] == ["CANCELLED"] and "'no-such-set' is not a model set" in outcomes["unknown"][1]
    assert "distilled-fp8" in outcomes["unknown"][1]  # the sets there are
    assert result["same"] and not folder.exists()


def test_ctrl_c_in_background_mode_cancels_the_download_and_keeps_what_came(tmp_path, hub, isolated):  # noqa: F811
    """A script's download interrupted (SIGINT): the engine is cancelled, the part downloaded is kept for the
    next run, and the preferences stay as they were."""
    from test_addon import PRELUDE
    from test_engine_models_cli import big_checkpoint, leftovers

    item = SETS["distilled-fp8"].files[0]
    big_checkpoint(hub, item)
    hub.trickle_after[(item.repo, item.path)] = 1 << 20  # then slowly: seconds to interrupt it
    isolated(hub)
    folder = tmp_path / "models"
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "equi360").symlink_to(ROOT, target_is_directory=True)
    script = PRELUDE.format(user=str(tmp_path / "user"), repo=str(repo), python=sys.executable,
                            jobs=str(tmp_path / "jobs")) + PREFERENCES + textwrap.dedent(f"""
        bpy.context.preferences.system.use_online_access = True
        prefs.models_dir = {str(folder)!r}
        before = model_prefs()
        outcome = run(bpy.ops.equi360.download_models, model_set="distilled-fp8")
        report(outcome=outcome, same=model_prefs() == before, text=prefs.models_report)
    """)
    with subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:
        for line in proc.stdout:  # the download's progress, printed in background mode
            if f"({Path(item.path).name})" in line and " 0 kB of" not in line:
                proc.send_signal(signal.SIGINT)
                break
        out, err = proc.communicate(timeout=60)
    results = [json.loads(line[7:]) for line in out.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and results, out[-3000:] + err[-3000:]
    (status, message), same, text = results[-1]["outcome"], results[-1]["same"], results[-1]["text"]
    assert status == ["CANCELLED"] and same and "[cancelled]" in text, (message, text)
    assert len(leftovers(folder)) == 1 and not (folder / item.local_name).exists()


def test_the_preferences_show_the_model_section(tmp_path, bpy_python):  # noqa: F811
    """The preferences' draw (through a layout that records what it is asked to draw): the model paths, the
    models folder, Find Models, the Download Models menu with the engine's sets, and the last report."""
    result = in_blender(tmp_path, bpy_python, """
        class Layout:  # records every call; rows, columns and boxes are layouts too
            def __init__(self, calls):
                self.calls = calls
            def __getattr__(self, name):
                def call(*args, **kwargs):
                    self.calls.append([name] + [a if isinstance(a, (str, int, float)) else type(a).__name__
                                                for a in args] + sorted(f"{k}={v}" for k, v in kwargs.items()))
                    return Layout(self.calls)
                return call
        addon = sys.modules["bl_ext.test_repo.equi360.operators.models"]
        prefs.models_report = "Using: a set\\nrecipes: fast"
        prefs_calls = []
        proxy = type("Drawn", (), {"layout": Layout(prefs_calls), "__getattr__": lambda s, n: getattr(prefs, n)})()
        type(prefs).draw(proxy, bpy.context)
        addon.catalog(prefs, wait=True)
        menu_calls = []
        addon.EQUI360_MT_model_sets.draw(type("Menu", (), {"layout": Layout(menu_calls)})(), bpy.context)
        tooltip = addon.EQUI360_OT_download_models.description(bpy.context, type("P", (), {"model_set": "dev"})())
        report(prefs_calls=prefs_calls, menu_calls=menu_calls, tooltip=tooltip)
    """)
    props = [c[2] for c in result["prefs_calls"] if c[0] == "prop"]
    assert props[:7] == ["engine_python", "engine_dir", "checkpoint", "text_encoder", "ic_lora", "distilled_lora",
                         "models_dir"]
    assert ["operator", "equi360.find_models", "icon=VIEWZOOM"] in result["prefs_calls"]
    assert ["menu", "EQUI360_MT_model_sets", "icon=IMPORT", "text=Download Models"] in result["prefs_calls"]
    assert ["label", "text=Using: a set"] in result["prefs_calls"]
    offered = [c[-1] for c in result["menu_calls"] if c[:2] == ["operator", "equi360.download_models"]]
    assert [text.removeprefix("text=").split(":")[0] for text in offered] == list(SETS)
    assert result["tooltip"].startswith("Download the set dev (about ") and "quality, fast" in result["tooltip"]
