"""``python -m engine models sets | find | fetch``: the model files a user has, and the sets the engine
downloads, through a Hugging Face Hub on the loopback interface (tests/hub_server.py) and the real
huggingface_hub. The model files are tiny safetensors files with the real files' tensor names, written here
(their headers are all that ``find`` reads); sparse files stand in for big ones."""

from __future__ import annotations

import io
import json
import math
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from hub_server import FakeHub

from blender_equi360.jobs.job import ModelFiles
from blender_equi360.jobs.protocol import EXIT_CODES, parse_event
from conftest import ROOT
from engine.model_sets import GEMMA_FOLDER, SETS, RemoteFile

DTYPE_BYTES = {"BF16": 2, "F32": 4, "F8_E4M3": 1, "U8": 1}
GIB = 2**30


# --- tiny model files, as the real ones are laid out --------------------------------------------------------------

def safetensors(tensors: dict, metadata: dict | None = None, seed: int = 0, contents: dict | None = None) -> bytes:
    """A valid safetensors file: ``tensors`` = {name: (dtype, shape)}, random contents but for ``contents``
    ({name: its bytes})."""
    header, offsets = _header(tensors, metadata)
    data = bytearray(random.Random(seed).randbytes(offsets[-1][1] if offsets else 0))
    for name, raw in (contents or {}).items():
        start, end = offsets[list(tensors).index(name)]
        data[start:end] = raw
    return header + bytes(data)


def write_sparse(path: Path, tensors: dict, contents: dict | None = None) -> Path:
    """A big safetensors file that takes no room: its tensors' bytes are a hole, but for ``contents``."""
    header, offsets = _header(tensors, None)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + (offsets[-1][1] if offsets else 0))
        for name, raw in (contents or {}).items():
            f.seek(len(header) + offsets[list(tensors).index(name)][0])
            f.write(raw)
    return path


def _header(tensors: dict, metadata: dict | None) -> tuple[bytes, list]:
    entries, offsets, offset = {}, [], 0
    for name, (dtype, shape) in tensors.items():
        size = DTYPE_BYTES[dtype] * math.prod(shape)
        entries[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offsets.append((offset, offset + size))
        offset += size
    if metadata:
        entries["__metadata__"] = metadata
    raw = json.dumps(entries).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, offsets


def checkpoint(fp8: bool = False, ltx20: bool = False, transformer_shape=(4, 4)) -> dict:
    """An LTX-2.3 single-file checkpoint's layout: transformer with the audio stream, connectors, text
    projection (16 × 3 features: a Gemma of hidden size 16 and 2 layers), VAEs, vocoder."""
    weight = "F8_E4M3" if fp8 else "BF16"
    tensors = {
        "model.diffusion_model.patchify_proj.weight": ("BF16", (4, 4)),
        "model.diffusion_model.audio_patchify_proj.weight": ("BF16", (4, 4)),
        "model.diffusion_model.transformer_blocks.0.attn1.to_q.weight": (weight, transformer_shape),
        "model.diffusion_model.video_embeddings_connector.transformer_1d_blocks.0.attn1.to_q.weight": ("BF16", (4, 4)),
        "text_embedding_projection.video_aggregate_embed.weight": ("BF16", (16, 48)),
        "vae.decoder.conv_in.conv.weight": ("BF16", (4, 4)),
        "audio_vae.decoder.conv_in.weight": ("BF16", (4, 4)),
        "vocoder.conv_pre.weight": ("BF16", (4, 4)),
    }
    if fp8:
        tensors["model.diffusion_model.transformer_blocks.0.attn1.to_q.weight_scale"] = ("F32", ())
    if not ltx20:
        tensors["model.diffusion_model.prompt_adaln_single.linear.weight"] = ("BF16", (4, 4))
    return tensors


def gemma_file(spiece: bytes, precision: str = "bf16") -> tuple[dict, dict]:
    """ComfyUI's single-file Gemma 3 (hidden size 16, 2 layers): language model keys, and its tokenizer
    (SentencePiece's model file, ``spiece``) as a byte tensor. Returns (tensors, contents)."""
    weight = {"bf16": "BF16", "fp8": "F8_E4M3", "fp4": "U8"}[precision]
    tensors = {"model.embed_tokens.weight": ("BF16", (32, 16))}
    for layer in range(2):
        tensors[f"model.layers.{layer}.self_attn.q_norm.weight"] = ("BF16", (8,))
        tensors[f"model.layers.{layer}.self_attn.q_proj.weight"] = (weight, (16, 16))
        if precision == "fp8":
            tensors[f"model.layers.{layer}.self_attn.q_proj.weight_scale"] = ("F32", ())
    tensors["spiece_model"] = ("U8", (len(spiece),))
    return tensors, {"spiece_model": spiece}


def gemma_bytes(spiece: bytes, precision: str = "bf16") -> bytes:
    tensors, contents = gemma_file(spiece, precision)
    return safetensors(tensors, contents=contents, seed=2)


@pytest.fixture(scope="session")
def spiece(tiny_files) -> bytes:
    """A Gemma tokenizer (the tiny model set's), as ComfyUI's files embed it."""
    from safetensors import safe_open
    with safe_open(tiny_files["text_encoder_file"], framework="np") as f:
        return f.get_tensor("spiece_model").tobytes()


def gemma_folder_files(tiny_files) -> dict[str, bytes]:
    """A Hugging Face Gemma 3 folder (the tiny set's, as transformers saves it), with files fetch leaves out."""
    folder = Path(tiny_files["text_encoder"])
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    return {**files, "README.md": b"# Gemma", "onnx/model.onnx": b"not wanted"}


def lora(ic: bool = True, prefix: str = "diffusion_model.transformer_blocks.0.attn1.to_q") -> dict:
    return {f"{prefix}.lora_A.weight": ("BF16", (4, 16)), f"{prefix}.lora_B.weight": ("BF16", (16, 4))}


def content(item, tiny_files) -> dict[str, bytes]:
    """What the fake hub serves for one catalog entry: {path in the repository: bytes}. The Gemma files are the
    tiny set's (they must pass the engine's own checks, tokenizer included)."""
    if not isinstance(item, RemoteFile):
        return gemma_folder_files(tiny_files)
    name = item.path.lower()
    if item.role == "checkpoint":
        data = safetensors(checkpoint(fp8="fp8" in name), seed=1)
    elif item.role == "text_encoder":
        data = Path(tiny_files["text_encoder_fp8" if "fp8" in name else "text_encoder_file"]).read_bytes()
    elif item.role == "ic_lora":
        data = safetensors(lora(), {"reference_downscale_factor": "1"}, seed=3)
    else:
        data = safetensors(lora(), seed=4)
    return {item.path: data}


@pytest.fixture
def hub(tiny_files):
    """The fake hub with every file of every set."""
    with FakeHub() as server:
        for model_set in SETS.values():
            for item in model_set.files:
                for path, data in content(item, tiny_files).items():
                    server.add(item.repo, path, data)
        yield server


def served(hub: FakeHub, item: RemoteFile) -> bytes:
    return hub.files[(item.repo, item.path)]


def big_checkpoint(hub: FakeHub, item: RemoteFile) -> bytes:
    """Make the set's checkpoint 3 MiB, so a slow connection is still downloading it a while."""
    data = safetensors(checkpoint(fp8="fp8" in item.path, transformer_shape=(1024, 3 * 1024)), seed=7)
    hub.add(item.repo, item.path, data)
    return data


# --- running the command ------------------------------------------------------------------------------------------

def environment(tmp_path: Path, hub: FakeHub | None = None, **extra) -> dict:
    """No user settings leak in: another home, an empty Hugging Face home (no token), no proxy."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGING", "EQUI360_", "XDG_")) and "PROXY" not in k.upper()}
    env.update(HOME=str(tmp_path / "home"), HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1",
               NO_PROXY="127.0.0.1,localhost", **extra)
    if hub is not None:
        env["HF_ENDPOINT"] = hub.endpoint
    return env


def models(*args, env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", "models", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def fetch(set_name: str, folder: Path, env: dict) -> tuple[int, list[dict], str]:
    run = models("fetch", set_name, folder, env=env)
    return run.returncode, [parse_event(line) for line in run.stdout.splitlines()], run.stderr


def find(*dirs, env: dict) -> dict:
    run = models("find", *dirs, env=env)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def leftovers(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.incomplete"))


# --- models sets / fetch ------------------------------------------------------------------------------------------

def test_sets_lists_each_file_with_its_role_and_place(tmp_path):
    run = models("sets", env=environment(tmp_path))
    assert run.returncode == 0, run.stderr
    catalog = json.loads(run.stdout)
    assert set(catalog) == {"distilled-fp8", "distilled", "dev", "dev-fp8"}
    roles = {f.name for f in fields(ModelFiles)}
    for entry in catalog.values():
        assert {f["role"] for f in entry["files"]} <= roles and entry["approx_gb"] > 0
        assert all(f["local"].split("/")[0] in ("checkpoints", "text_encoders", "loras") for f in entry["files"])
    assert catalog["dev"]["recipes"] == ["quality", "fast"] and catalog["distilled-fp8"]["recipes"] == ["fast"]


def test_fetch_downloads_a_set_that_find_then_finds(hub, tiny_files, tmp_path):
    folder, env = tmp_path / "models", environment(tmp_path, hub)
    rc, events, err = fetch("dev", folder, env)
    assert rc == 0, err
    done = events[-1]
    assert done["event"] == "done" and done["set"] == "dev"
    assert set(done["outputs"]) == {f.name for f in fields(ModelFiles)}  # job.json's models names
    for item in SETS["dev"].files:
        assert done["outputs"][item.role] == str(folder / item.local_name)
        if isinstance(item, RemoteFile):
            assert Path(done["outputs"][item.role]).read_bytes() == served(hub, item)
    gemma = folder / GEMMA_FOLDER.subfolder
    wanted = sorted(p.name for p in Path(tiny_files["text_encoder"]).iterdir())  # no README, nothing below
    assert sorted(p.name for p in gemma.iterdir()) == wanted and "config.json" in wanted
    assert not leftovers(folder)
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and all(e["stage"] == "download" for e in progress)
    assert [e["step"] for e in progress] == sorted(e["step"] for e in progress)
    assert progress[-1]["step"] == progress[-1]["total"] == done["downloaded_bytes"]
    assert any(e.get("file") == done["outputs"]["checkpoint"] and e["file_step"] == e["file_total"] for e in progress)

    report = find(folder, env=env)
    (found,) = report["sets"]
    assert {role: found[role] for role in done["outputs"]} == done["outputs"]
    assert found["checkpoint_variant"] == "dev" and found["recipes"] == ["quality", "fast"]
    assert found["ic_lora_version"] == "1.0" and found["canvases"] == ["1920x960", "2560x1280"]
    assert report["unused"] == []

    gets = len([r for r in hub.requests if r["method"] == "GET"])
    rc, events, err = fetch("dev", folder, env)  # again: everything is there
    assert rc == 0 and events[-1]["downloaded_bytes"] == 0, err
    assert len([r for r in hub.requests if r["method"] == "GET"]) == gets  # asked about, not downloaded


def test_a_dropped_connection_is_taken_up_from_the_last_byte(hub, tmp_path):
    item = SETS["distilled-fp8"].files[0]
    data = big_checkpoint(hub, item)
    hub.drop_after[(item.repo, item.path)] = 1_000_000
    folder = tmp_path / "models"
    rc, events, err = fetch("distilled-fp8", folder, environment(tmp_path, hub))
    assert rc == 0, err
    first, second = hub.gets(item.path)
    assert first["range"] is None and second["range"] == "bytes=1000000-"
    assert (folder / item.local_name).read_bytes() == data
    assert any("connection lost" in e.get("message", "") for e in events if e["event"] == "log")


def test_an_interrupted_run_continues_where_it_stopped(hub, tmp_path):
    item = SETS["distilled-fp8"].files[0]
    data = big_checkpoint(hub, item)
    key = (item.repo, item.path)
    hub.trickle_after[key] = 1 << 20
    folder, env = tmp_path / "models", environment(tmp_path, hub)
    with subprocess.Popen([sys.executable, "-m", "engine", "models", "fetch", "distilled-fp8", str(folder)],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as proc:
        for line in proc.stdout:  # until the first bytes of the checkpoint are on disk
            event = parse_event(line)
            if event["event"] == "progress" and event.get("file", "").endswith(item.path) and event["file_step"]:
                break
        proc.send_signal(signal.SIGKILL)  # a crash: nothing is tidied up
    (partial,) = leftovers(folder)
    kept = partial.stat().st_size
    assert 0 < kept < len(data) and not (folder / item.local_name).exists()

    del hub.trickle_after[key]
    rc, events, err = fetch("distilled-fp8", folder, env)
    assert rc == 0, err
    assert hub.gets(item.path)[-1]["range"] == f"bytes={kept}-"
    assert (folder / item.local_name).read_bytes() == data and not leftovers(folder)
    total = sum(len(hub.files[(f.repo, f.path)]) for f in SETS["distilled-fp8"].files)
    assert events[-1]["downloaded_bytes"] == total - kept


def test_cancel_stops_and_keeps_the_part_downloaded(hub, tmp_path):
    item = SETS["distilled-fp8"].files[0]
    big_checkpoint(hub, item)
    hub.trickle_after[(item.repo, item.path)] = 1 << 20
    folder = tmp_path / "models"
    proc = subprocess.Popen([sys.executable, "-m", "engine", "models", "fetch", "distilled-fp8", str(folder)],
                            cwd=ROOT, env=environment(tmp_path, hub), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    events = []
    for line in proc.stdout:
        events.append(parse_event(line))
        if events[-1]["event"] == "progress" and events[-1].get("file_step"):
            proc.stdin.write("cancel\n")
            proc.stdin.flush()
            break
    out, err = proc.communicate(timeout=30)
    events += [parse_event(line) for line in out.splitlines()]
    assert proc.returncode == EXIT_CODES["cancelled"], err
    assert events[-1]["code"] == "cancelled" and "run the same command again" in events[-1]["message"]
    assert len(leftovers(folder)) == 1 and not (folder / item.local_name).exists()


def test_a_file_of_another_size_than_the_hub_says_is_refused(hub, tmp_path):
    ic_lora = SETS["distilled-fp8"].files[2]
    hub.announce[(ic_lora.repo, ic_lora.path)] = len(served(hub, ic_lora)) + 10
    folder = tmp_path / "models"
    rc, events, err = fetch("distilled-fp8", folder, environment(tmp_path, hub))
    assert rc == EXIT_CODES["download_failed"], err
    assert "the hub says" in events[-1]["message"] and "deleted" in events[-1]["message"]
    assert not (folder / ic_lora.local_name).exists() and not leftovers(folder)


def test_too_little_disk_space_is_refused_before_any_byte(hub, tmp_path, monkeypatch):
    from engine import fetch as fetching
    from engine.protocol_io import Channel

    monkeypatch.setattr(fetching.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 999, 999))
    out = io.StringIO()
    folder = tmp_path / "models"
    rc = fetching.fetch("distilled-fp8", folder, Channel(out), endpoint=hub.endpoint)
    (error,) = [parse_event(line) for line in out.getvalue().splitlines() if '"error"' in line]
    assert rc == EXIT_CODES["disk_full"] and error["code"] == "disk_full"
    needed = sum(len(served(hub, f)) for f in SETS["distilled-fp8"].files)
    assert f"{needed:,} more bytes" in error["message"] and "999 bytes" in error["message"]
    assert not [r for r in hub.requests if r["method"] == "GET"] and not folder.exists()


def test_a_gated_repository_says_where_to_accept_its_licence_and_how_to_log_in(hub, tmp_path):
    hub.gated.add("Lightricks/LTX-2.3-fp8")
    folder = tmp_path / "models"
    rc, events, err = fetch("distilled-fp8", folder, environment(tmp_path, hub))
    assert rc == EXIT_CODES["gated_repo"], err
    message = events[-1]["message"]
    assert f"{hub.endpoint}/Lightricks/LTX-2.3-fp8" in message and "accept its licence" in message
    assert "hf auth login" in message and "HF_TOKEN" in message and "not logged in" in message
    assert not folder.exists()  # nothing written: the hub was asked first


def test_no_connection_is_a_clear_error(tmp_path):
    with FakeHub() as gone:
        endpoint = gone.endpoint
    rc, events, err = fetch("distilled-fp8", tmp_path / "models", environment(tmp_path, HF_ENDPOINT=endpoint))
    assert rc == EXIT_CODES["download_failed"] and "cannot reach" in events[-1]["message"], err
    assert "Traceback" not in err


# --- models find --------------------------------------------------------------------------------------------------

def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_find_reads_a_comfyui_install_and_its_extra_model_paths(spiece, tmp_path):
    comfy, store = tmp_path / "ComfyUI", tmp_path / "store"
    write(comfy / "main.py", b"")
    ckpt = write(comfy / "models/checkpoints/ltx-2.3-22b-dev.safetensors", safetensors(checkpoint()))
    ic = write(comfy / "models/loras/ltx/360vroutpaint_v2_step09000.safetensors", safetensors(lora(), seed=3))
    gemma = write(store / "encoders/gemma_3_12B_it.safetensors", gemma_bytes(spiece))
    distilled = write(store / "my loras/ltx-2.3-22b-distilled-lora-384-1.1.safetensors", safetensors(lora(), seed=4))
    (comfy / "extra_model_paths.yaml").write_text(
        "other_ui:\n"
        "    base_path: ../store\n"
        "    is_default: true\n"
        "    text_encoders: |\n        clip\n        encoders\n"
        "    loras: my loras\n"
        "    vae: vae\n"
        "broken: 3\n")
    env = environment(tmp_path, EQUI360_COMFYUI=str(comfy), HF_HUB_CACHE=str(tmp_path / "no-cache"))
    report = find(env=env)
    (found,) = report["sets"]
    assert (found["checkpoint"], found["text_encoder"], found["ic_lora"], found["distilled_lora"]) == tuple(
        map(str, (ckpt, gemma, ic, distilled)))
    assert found["recipes"] == ["quality", "fast"] and found["text_encoder_kind"] == "Gemma 3 single file (bf16)"
    searched = {s["path"]: s["found_in"] for s in report["searched"]}
    assert searched[str(store / "encoders")].endswith("(other_ui: text_encoders)")


def test_find_reads_the_hugging_face_cache(hub, tmp_path):
    from huggingface_hub import hf_hub_download

    cache = tmp_path / "hf-cache"
    for item in SETS["distilled-fp8"].files:
        hf_hub_download(item.repo, item.path, cache_dir=cache, endpoint=hub.endpoint)
    report = find(env=environment(tmp_path, HF_HUB_CACHE=str(cache)))
    (found,) = report["sets"]
    assert found["checkpoint_variant"] == "distilled" and found["checkpoint_fp8"] and found["recipes"] == ["fast"]
    assert found["text_encoder_kind"] == "Gemma 3 single file (fp8_scaled)"
    assert "/snapshots/" in found["checkpoint"]
    assert found["checkpoint"].endswith("ltx-2.3-22b-distilled-fp8.safetensors")
    assert any(s["found_in"] == "Hugging Face cache (Lightricks/LTX-2.3-fp8)" for s in report["searched"])


def test_find_says_why_each_file_is_in_no_set(spiece, tmp_path):
    folder = tmp_path / "downloads"
    write(folder / "ltx-2.3-22b-distilled-1.1.safetensors", safetensors(checkpoint()))
    write(folder / "ltx-2.3-22b-ic-lora-360-equirect-poc-step3500.safetensors", safetensors(lora()))
    write(folder / "ltx-2.3-22b-distilled-lora-384-1.1.safetensors", safetensors(lora()))
    write(folder / "gemma_3_12B_it_fp4_mixed.safetensors", gemma_bytes(spiece, "fp4"))
    write(folder / "ltx-2-19b-dev.safetensors", safetensors(checkpoint(ltx20=True)))
    write(folder / "ltx-2.3-22b-dev.safetensors", safetensors(checkpoint())[:-100])  # an interrupted copy
    write(folder / "my_ic_lora.safetensors", safetensors(lora(), {"reference_downscale_factor": "2"}))
    write(folder / "sdxl_style.safetensors", safetensors(lora(prefix="lora_unet_down_blocks_0")))  # not ours
    write(folder / "notes.safetensors", safetensors({"x": ("F32", (2,))}))  # not a model
    write(folder / "sub/model-00001-of-00002.safetensors", gemma_bytes(spiece))  # a shard alone
    report = find(folder, env=environment(tmp_path, HF_HUB_CACHE=str(tmp_path / "no-cache")))
    assert report["sets"] == []
    why = {Path(u["path"]).name: u["why"] for u in report["unused"]}
    assert why["ltx-2.3-22b-distilled-1.1.safetensors"] == "no Gemma 3 12B text encoder found"
    assert why["ltx-2.3-22b-ic-lora-360-equirect-poc-step3500.safetensors"].startswith("the LTX-2.3 checkpoints found")
    assert "need no distilled LoRA" in why["ltx-2.3-22b-distilled-lora-384-1.1.safetensors"]
    assert "fp4" in why["gemma_3_12B_it_fp4_mixed.safetensors"] and "cannot load" in why[
        "gemma_3_12B_it_fp4_mixed.safetensors"]
    assert "LTX-2.0" in why["ltx-2-19b-dev.safetensors"]
    assert "incomplete" in why["ltx-2.3-22b-dev.safetensors"]
    assert "not the VR-360 one" in why["my_ic_lora.safetensors"]
    assert set(why) == {"ltx-2.3-22b-distilled-1.1.safetensors", "ltx-2.3-22b-ic-lora-360-equirect-poc-step3500"
                        ".safetensors", "ltx-2.3-22b-distilled-lora-384-1.1.safetensors",
                        "gemma_3_12B_it_fp4_mixed.safetensors", "ltx-2-19b-dev.safetensors",
                        "ltx-2.3-22b-dev.safetensors", "my_ic_lora.safetensors"}


def test_find_estimates_the_gpu_memory_from_the_tensors(spiece, tmp_path):
    folder = tmp_path / "models"
    write_sparse(folder / "ltx-2.3-22b-dev-fp8.safetensors",
                 {**checkpoint(fp8=True, transformer_shape=(GIB // 4, 4)),  # 1 GiB of fp8: 2 GiB in bf16
                  "vae.decoder.big.weight": ("BF16", (GIB // 4, 1))})       # 0.5 GiB
    tensors, contents = gemma_file(spiece)
    write_sparse(folder / "gemma_3_12B_it.safetensors", {**tensors, "model.big": ("BF16", (GIB // 2, 3))}, contents)
    write(folder / "360vroutpaint_v2_step09000.safetensors", safetensors(lora()))
    (found,) = find(folder, env=environment(tmp_path, HF_HUB_CACHE=str(tmp_path / "no"))).get("sets")
    assert found["memory_gb"] == {"text_gb": 3.0, "denoise_gb": 2.5, "decode_gb": 0.5}
    assert found["memory_gb_low_vram"]["denoise_gb"] == pytest.approx(0.5 + 2 / 2 * 16 / 48, abs=0.05)
    assert found["recipes"] == ["quality"] and "distilled LoRA" in found["notes"][0]


def test_find_knows_the_tiny_model_set_made_by_the_engine(tiny_files, tmp_path):
    folder = tmp_path / "tiny"
    shutil.copytree(Path(tiny_files["checkpoint"]).parent, folder)
    (folder / Path(tiny_files["ic_lora"]).name).rename(folder / "360vroutpaint_v2_step09000.safetensors")
    (folder / Path(tiny_files["ic_lora_1"]).name).unlink()  # an IC-LoRA under no published name: unused
    report = find(folder, env=environment(tmp_path, HF_HUB_CACHE=str(tmp_path / "no")))
    variants = sorted((s["checkpoint_variant"], s["checkpoint_fp8"], tuple(s["recipes"])) for s in report["sets"])
    assert ("dev", False, ("quality", "fast")) in variants and ("distilled", False, ("fast",)) in variants
    encoders = {str(folder / Path(path).name) for name, path in tiny_files.items() if name.startswith("text_encoder")}
    assert {s["text_encoder"] for s in report["sets"]} <= encoders and report["unused"] == []
    if "text_encoder_fp8" in tiny_files:  # an fp8 checkpoint goes with the fp8 Gemma
        (fp8,) = [s for s in report["sets"] if s["checkpoint_fp8"]]
        assert fp8["text_encoder"] == str(folder / Path(tiny_files["text_encoder_fp8"]).name)
