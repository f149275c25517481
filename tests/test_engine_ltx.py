"""The LTX backend for real — diffusers' LTX2InContextPipeline built by our loader from a tiny model set in
Lightricks' file layouts — on the CPU, offline: conversion, recipes, LoRAs, events, cancel, errors."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from blender_equi360 import Camera, CanvasSize, ReferenceSettings, build_reference
from blender_equi360.jobs.job import Job
from blender_equi360.jobs.protocol import EXIT_CODES, parse_event
from blender_equi360.media.video import probe
from conftest import CPU, ROOT, make_job, run_engine, smooth_texture, write_clip
from engine import ltx, recipes, runner, tiny
from engine.configs import LTX23_CONFIGS
from engine.device import DEVICE_ENV
from engine.models import LOADED, component_class, load_components
from engine.protocol_io import Channel, EngineError
from engine.text_encoder import check_text_encoder
from engine.weights import CheckpointKind, check_checkpoint, check_lora

DEV = CheckpointKind("dev", fp8=False, told_by="name")

# Lightricks' 30-step LTX-2.3 dev schedule (ltx-core LTX2Scheduler, no latent: shift 2.05, terminal 0.1).
OFFICIAL_30 = (1.0, .995, .9896, .9839, .9778, .9714, .9644, .957, .949, .9403, .931, .9209, .9098, .8977, .8845,
               .8699, .8537, .8356, .8153, .7924, .7664, .7364, .7017, .6608, .6121, .5531, .4802, .3875, .2661, .1)


class Captured:
    """Runs the backend in this process and keeps the decoder's input and output."""

    def __init__(self, monkeypatch):
        monkeypatch.setenv(DEVICE_ENV, "cpu")
        self.latents, self.video = None, None
        real_decode = ltx.decode

        def decode(vae, latents, device):
            self.latents = latents.clone()
            self.video = real_decode(vae, latents, device)
            return self.video
        monkeypatch.setattr(ltx, "decode", decode)

    def run(self, job_dir):
        from blender_equi360.jobs.job import load_job
        out = io.StringIO()
        result = runner.run_job(job_dir, load_job(job_dir), "ltx", Channel(out=out))
        return result, [parse_event(line) for line in out.getvalue().splitlines()]


# --- the files -------------------------------------------------------------------------------------------

def test_tiny_models_are_in_the_real_file_layouts(models):
    header = check_checkpoint(__import__("pathlib").Path(models["checkpoint"]))
    keys = set(header.keys)
    for original in ("model.diffusion_model.patchify_proj.weight", "model.diffusion_model.adaln_single.linear.weight",
                     "model.diffusion_model.prompt_adaln_single.linear.weight",
                     "model.diffusion_model.audio_prompt_adaln_single.linear.weight",
                     "model.diffusion_model.transformer_blocks.0.attn1.q_norm.weight",
                     "model.diffusion_model.video_embeddings_connector.transformer_1d_blocks.0.attn1.to_q.weight",
                     "text_embedding_projection.video_aggregate_embed.weight",
                     "vae.per_channel_statistics.mean-of-means", "vae.per_channel_statistics.channel",
                     "vae.encoder.down_blocks.1.conv.conv.weight",
                     "vae.decoder.up_blocks.8.res_blocks.0.conv1.conv.weight",
                     "audio_vae.per_channel_statistics.std-of-means", "vocoder.vocoder.conv_pre.weight",
                     "vocoder.vocoder.ups.0.weight", "vocoder.bwe_generator.resblocks.0.convs1.0.weight",
                     "vocoder.mel_stft.mel_basis"):
        assert original in keys, original
    diffusers_only = ("time_embed.", "norm_q", "prompt_adaln.", "resnets", "upsamplers", "latents_mean",
                      "conv_in.weight")
    assert not [k for k in keys if any(name in k for name in diffusers_only) and not k.startswith("vae.")]
    assert check_lora(__import__("pathlib").Path(models["ic_lora"]))[1] == 1
    with safe_open(models["ic_lora"], "pt") as f:
        assert all(k.startswith("diffusion_model.transformer_blocks.") and ".lora_" in k for k in f.keys())
    assert check_text_encoder(__import__("pathlib").Path(models["text_encoder"])).layout == "folder"


def test_every_component_loads_strictly_with_every_weight_in_place(models):
    from pathlib import Path
    path = Path(models["checkpoint"])
    loaded = load_components(path, check_checkpoint(path), "cpu", torch.float32)
    built = tiny.build_components()
    assert set(loaded) == {"transformer", "connectors", "vae", "audio_vae"}  # not the vocoder: no sound is made
    for name, module in loaded.items():
        state, original = module.state_dict(), built[name]
        assert set(state) == set(original.state_dict()), name
        for key, value in original.state_dict().items():
            assert torch.equal(state[key], value), (name, key)


def test_full_size_ltx23_configs_build_with_the_published_sizes():
    from accelerate import init_empty_weights
    counts = {}
    for name in ("transformer", "connectors"):
        with init_empty_weights():
            module = component_class(name).from_config(LTX23_CONFIGS[name])
        counts[name] = sum(p.numel() for p in module.parameters())
    # 22B in all: 18.99 B transformer + 3.17 B text connectors (analytical, see docs/ENGINE.md).
    assert counts["transformer"] == pytest.approx(18.99e9, rel=0.01)
    assert counts["connectors"] == pytest.approx(3.17e9, rel=0.02)


def test_the_real_checkpoint_layout_converts_onto_every_full_size_component():
    """Every tensor name and shape of ltx-2.3-22b-dev.safetensors (dumped from Lightricks' ltx-core 1.2.0
    modules built on the meta device from the LTX-2.3 config) lands on exactly one parameter of the
    full-size diffusers components the engine loads, and every parameter gets one."""
    import gzip

    from accelerate import init_empty_weights

    from engine.configs import component_configs
    from engine.convert import split_checkpoint
    from engine.weights import Header
    original = json.loads(gzip.decompress((ROOT / "tests/data/ltx23_original_keys.json.gz").read_bytes()))
    header = Header(tuple(original), {}, {})
    configs, plan = component_configs(header), split_checkpoint(original)
    assert configs["vae"]["layers_per_block"] == (4, 6, 4, 2, 2) and not configs["vae"]["timestep_conditioning"]
    used = set()
    for name in LOADED:
        mapping = plan[name]
        with init_empty_weights():
            module = component_class(name).from_config(configs[name])
        shapes = {k: list(v.shape) for k, v in module.state_dict().items()}
        assert set(mapping) == set(shapes), (name, sorted(set(mapping) ^ set(shapes))[:5])
        for key, source in mapping.items():
            assert original[source] == shapes[key], (name, key)
        used |= set(mapping.values())
    unused = sorted(set(original) - used)  # and the vocoder's: the engine makes no sound
    assert [k for k in unused if not k.startswith("vocoder.")] == ["vae.per_channel_statistics.channel",
                                                                   "vae.per_channel_statistics.mean-of-stds"]


# --- recipes -----------------------------------------------------------------------------------------------

def test_quality_uses_lightricks_fixed_shift_schedule_and_official_guidance():
    rec = recipes.recipe(Job.from_fields(reference="r", mask="m"), DEV, num_layers=48)
    assert np.allclose(rec.sigmas, OFFICIAL_30, atol=6e-5)
    assert rec.guidance["guidance_scale"] == 3 and rec.guidance["stg_scale"] == 1
    assert rec.guidance["spatio_temporal_guidance_blocks"] == [28] and rec.guidance["guidance_rescale"] == 0.7
    assert rec.guidance["modality_scale"] == 3 and rec.uses_cfg


def test_fast_turns_every_guidance_term_off_for_video_and_audio():
    rec = recipes.recipe(Job.from_fields(reference="r", mask="m", preset="fast"), DEV, num_layers=48)
    assert rec.sigmas == recipes.DISTILLED_SIGMAS and len(rec.sigmas) == 8 and rec.distilled_lora
    g = rec.guidance
    assert g["guidance_scale"] == g["audio_guidance_scale"] == 1
    assert g["modality_scale"] == g["audio_modality_scale"] == 1
    assert g["stg_scale"] == g["audio_stg_scale"] == 0 and not rec.uses_cfg


# --- generation ----------------------------------------------------------------------------------------------

def test_engine_run_generates_through_the_in_context_pipeline(tmp_path, tiny_reference, models):
    rc, events, err = run_engine(make_job(tmp_path, tiny_reference, models))
    assert rc == 0, err
    stages = []
    for e in events:
        if e["event"] == "progress" and (not stages or stages[-1] != e["stage"]):
            stages.append(e["stage"])
    assert stages == ["encode_prompt", "load", "denoise", "decode", "finish"]
    denoise = [e for e in events if e["event"] == "progress" and e["stage"] == "denoise"]
    assert [e["step"] for e in denoise] == [0, 1, 2] and denoise[-1]["total"] == 2
    done = events[-1]
    assert done["event"] == "done" and done["backend"] == "ltx" and done["draft"] is False
    info = probe(done["outputs"]["video"])
    assert (info.width, info.height, info.frame_count, info.fps) == (256, 128, 9, 24)
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]
    assert "engine.log" in {p.name for p in tmp_path.iterdir()}


def test_reference_tokens_never_reach_the_decoder(tmp_path, tiny_reference, models, monkeypatch):
    captured = Captured(monkeypatch)
    captured.run(make_job(tmp_path, tiny_reference, models))
    # 9 frames at 128×64 are 2×2×4 latents: the target alone, not target + reference.
    assert tuple(captured.latents.shape) == (1, tiny.METADATA_CONFIG["vae"]["latent_channels"], 2, 2, 4)
    assert captured.video.shape == (9, 64, 128, 3)


def test_the_vae_encoder_only_ever_sees_pixels_in_minus_1_to_1(tmp_path, models, monkeypatch):
    """The reference and a continuation window's frames, on the real engine path (two windows): the
    encoder's input spans the whole range (black is −1, the plate reaches near 1) and never leaves it."""
    from diffusers import AutoencoderKLLTX2Video
    clip = write_clip(tmp_path / "clip.mp4", 33, 240, 100, 24, lambda k: smooth_texture(240, 100, k / 5))
    build_reference(clip, tmp_path / "reference.mkv", tmp_path / "mask.mkv",
                    ReferenceSettings(camera=Camera(100), size=CanvasSize(128, 64), frames=None))
    job_dir = make_job(tmp_path / "job", tmp_path, models, steps=1, window_frames=25, window_overlap=9)
    seen = []
    real_encode = AutoencoderKLLTX2Video.encode

    def encode(vae, pixels, *args, **kwargs):
        seen.append((tuple(pixels.shape), float(pixels.min()), float(pixels.max())))
        return real_encode(vae, pixels, *args, **kwargs)
    monkeypatch.setattr(AutoencoderKLLTX2Video, "encode", encode)
    Captured(monkeypatch).run(job_dir)
    # window 1: its reference; window 2: the previous window's 9 shared frames, then its reference
    assert [shape[2] for shape, _, _ in seen] == [25, 9, 17], seen  # the last window is 17 frames (8k+1)
    assert all(-1 <= low and high <= 1 for _, low, high in seen), seen
    assert all(low < -0.99 and high > 0.5 for _, low, high in seen[::2]), seen  # the references: black is −1


def test_the_lora_changes_the_output_and_strength_zero_is_the_base_model(tmp_path, tiny_reference, models, monkeypatch):
    videos = {}
    for name, strength in (("full", 1.0), ("zero", 0.0)):
        captured = Captured(monkeypatch)
        captured.run(make_job(tmp_path / name, tiny_reference, models, lora_strength=strength, preset="quality"))
        videos[name] = captured.latents
    monkeypatch.setattr(ltx, "_apply_loras", lambda *args: None)
    captured = Captured(monkeypatch)
    captured.run(make_job(tmp_path / "base", tiny_reference, models))
    assert torch.allclose(videos["zero"], captured.latents, atol=1e-6)
    assert (videos["full"] - captured.latents).abs().mean() > 0.05


def test_fast_preset_fuses_the_distilled_lora_and_runs_eight_steps(tmp_path, tiny_reference, models, monkeypatch):
    captured = Captured(monkeypatch)
    result, events = captured.run(make_job(tmp_path, tiny_reference, models, preset="fast", steps=None))
    assert [e["total"] for e in events if e["event"] == "progress" and e["stage"] == "denoise"][-1] == 8
    missing = {**models, "distilled_lora": None}
    with pytest.raises(EngineError) as info:
        captured.run(make_job(tmp_path / "nodistilled", tiny_reference, missing, preset="fast"))
    assert info.value.code == "missing_weights" and "distilled LoRA" in str(info.value)


def test_a_checkpoint_without_audio_vae_or_vocoder_makes_the_same_video(tmp_path, tiny_reference, models, monkeypatch):
    """The engine makes no sound: the vocoder is never loaded, and without an audio VAE the audio latents'
    statistics are not needed either (the audio starts from noise and is never decoded)."""
    runs = {}
    for name, keep in (("whole", lambda k: True),
                       ("video_only", lambda k: not k.startswith(("audio_vae.", "vocoder.")))):
        files = _rewritten(models, tmp_path / f"{name}-dev.safetensors", keep)
        captured = Captured(monkeypatch)
        captured.run(make_job(tmp_path / name, tiny_reference, files))
        runs[name] = captured.latents
    assert torch.equal(runs["whole"], runs["video_only"])


def test_low_vram_path_runs(tmp_path, tiny_reference, models, monkeypatch):
    captured = Captured(monkeypatch)
    captured.run(make_job(tmp_path, tiny_reference, models, low_vram=True))
    assert captured.video.shape == (9, 64, 128, 3)


# --- cancel and errors -------------------------------------------------------------------------------------------

def test_cancel_stops_within_one_denoising_step_and_writes_nothing(tmp_path, tiny_reference, models):
    job_dir = make_job(tmp_path, tiny_reference, models, steps=60)
    proc = subprocess.Popen([sys.executable, "-m", "engine", "run", str(job_dir)], cwd=ROOT, env=CPU, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    events, cancelled_at = [], None
    for line in proc.stdout:
        event = parse_event(line)
        events.append(event)
        if cancelled_at is None and event["event"] == "progress" and event["stage"] == "denoise" and event["step"] == 2:
            proc.stdin.write("cancel\n")
            proc.stdin.flush()
            cancelled_at = 2
    proc.wait(timeout=60)
    assert proc.returncode == EXIT_CODES["cancelled"]
    steps = [e["step"] for e in events if e["event"] == "progress" and e["stage"] == "denoise"]
    assert max(steps) <= cancelled_at + 1 < 60
    assert events[-1] == {"event": "error", "code": "cancelled", "message": events[-1]["message"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine.log", "job.json", "job.lock", "mask.mkv",
                                                          "reference.json", "reference.mkv", "windows",
                                                          "windows.json"]
    assert not list((tmp_path / "windows").iterdir())


def _rewritten(models, path, keep):
    with safe_open(models["checkpoint"], "pt") as f:
        save_file({k: f.get_tensor(k) for k in f.keys() if keep(k)}, str(path), metadata=f.metadata())
    return {**models, "checkpoint": str(path)}


def _ltx20(models, folder):
    return _rewritten(models, folder / "ltx-2.safetensors", lambda k: "prompt_adaln_single" not in k)


def _missing_tensor(models, folder):
    return _rewritten(models, folder / "partial-dev.safetensors", lambda k: k != "vae.decoder.conv_out.conv.weight")


def _truncated(models, folder):
    data = open(models["checkpoint"], "rb").read()
    (folder / "cut.safetensors").write_bytes(data[: len(data) // 2])
    return {**models, "checkpoint": str(folder / "cut.safetensors")}


def _lora_for_another_model(models, folder):
    tensors = {"diffusion_model.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 999),
               "diffusion_model.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(16, 4)}
    save_file(tensors, str(folder / "other.safetensors"), metadata={"reference_downscale_factor": "1"})
    return {**models, "ic_lora": str(folder / "other.safetensors")}


@pytest.mark.parametrize("break_models, code, words", [
    (lambda m, f: {**m, "checkpoint": str(f / "nowhere.safetensors")}, "missing_weights", "not found"),
    (_truncated, "corrupt_weights", "incomplete"),
    (_ltx20, "ltx20_checkpoint", "LTX-2.0"),
    (_missing_tensor, "corrupt_weights", "video VAE"),
    (lambda m, f: {**m, "ic_lora": m["checkpoint"]}, "wrong_lora", "LoRA"),
    (_lora_for_another_model, "wrong_lora", "does not fit"),
])
def test_each_model_fault_has_its_code_and_names_the_file(tmp_path, tiny_reference, models, break_models, code, words,
                                                         monkeypatch):
    """In this process (each code's exit status through ``python -m engine run`` is test_engine_protocol's)."""
    broken = break_models(models, tmp_path)
    with pytest.raises(EngineError) as info:
        Captured(monkeypatch).run(make_job(tmp_path / "job", tiny_reference, broken))
    assert info.value.code == code and words in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "job" / "result.mp4").exists()


def test_no_cuda_is_its_own_error(tmp_path, tiny_reference, models):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    env = {k: v for k, v in os.environ.items() if k != DEVICE_ENV}
    rc, events, _ = run_engine(make_job(tmp_path, tiny_reference, models), env=env)
    assert rc == EXIT_CODES["no_cuda"] and events[-1]["code"] == "no_cuda"


def test_a_reference_the_model_cannot_take_is_bad_input(tmp_path, tiny_reference, models, monkeypatch):
    job_dir = make_job(tmp_path, tiny_reference, models)
    clip = write_clip(tmp_path / "odd.mp4", 9, 120, 64, 24, lambda k: smooth_texture(120, 64, k))
    (job_dir / "reference.mkv").write_bytes(clip.read_bytes())
    with pytest.raises(EngineError) as info:
        Captured(monkeypatch).run(job_dir)
    assert info.value.code == "bad_input" and "multiples of 32" in str(info.value)


def test_cuda_out_of_memory_says_what_to_do(tmp_path, tiny_reference, models, monkeypatch):
    captured = Captured(monkeypatch)

    def out_of_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    monkeypatch.setattr(ltx, "decode", out_of_memory)
    with pytest.raises(EngineError) as info:
        captured.run(make_job(tmp_path, tiny_reference, models))
    assert info.value.code == "cuda_oom" and "low VRAM" in str(info.value) and "decode" in str(info.value)


def test_engine_check_reports_each_model_file(tmp_path, tiny_reference, models):
    job_dir = make_job(tmp_path, tiny_reference, {**models, "ic_lora": str(tmp_path / "missing.safetensors")})
    run = subprocess.run([sys.executable, "-m", "engine", "check", str(job_dir)], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    report = json.loads(run.stdout)
    assert report["models"]["checkpoint"]["ok"] and report["models"]["text_encoder"]["ok"]
    assert report["models"]["distilled_lora"]["ok"]
    assert report["models"]["ic_lora"]["code"] == "missing_weights" and "model:ic_lora" in report["missing"]
    assert report["ready_for_ltx"] is False
