"""The engine computes what Lightricks' own code computes.

A golden set (tests/data/ltx23-golden-a, made with Lightricks' ltx-core / ltx-pipelines 1.2.0 only; its
README says how) holds a tiny LTX-2.3 checkpoint in their single-file layout, the inputs of a run and the
official outputs. Here the checkpoint is loaded through the engine's own loader (its config read off the
file's metadata), and the engine's own denoising function — the one ``python -m engine run`` calls — runs
the fast and the guided recipe, each with and without a continuation window, and once with a reference
downscaled 2×. Every expected tensor is compared (relative error of the whole tensor ≤ 1e-4).

The seam roll is off here (``roll=None``): it is the engine's own measure, with no official counterpart,
tested in test_engine_seam.py. ``EQUI360_GOLDEN`` names another golden set of the same format to run.
"""

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from blender_equi360.jobs.job import Job
from conftest import ROOT
from engine import ltx, official, recipes
from engine.configs import component_configs
from engine.models import load_components
from engine.weights import CheckpointKind, check_checkpoint

GOLDEN = Path(os.environ.get("EQUI360_GOLDEN") or ROOT / "tests" / "data" / "ltx23-golden-a")
TOLERANCE = 1e-4
RUNS = {"fast": ("fast", False), "fast_cont": ("fast", True), "quality": ("quality", False),
        "quality_cont": ("quality", True)}


def expected_names():
    with open(GOLDEN / "expected.safetensors", "rb") as f:  # names only: the header, without torch
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    return sorted(name for name in header if name != "__metadata__")


@pytest.fixture(scope="module")
def golden():
    return {"settings": json.loads((GOLDEN / "golden.json").read_text()),
            "inputs": load_file(GOLDEN / "inputs.safetensors"),
            "expected": load_file(GOLDEN / "expected.safetensors"), "checkpoint": GOLDEN / "checkpoint.safetensors"}


@pytest.fixture(scope="module")
def pipe(golden):
    path = golden["checkpoint"]
    header = check_checkpoint(path)
    pipe = ltx.denoising_pipeline(load_components(path, header, "cpu", torch.float32))
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Recorder:
    """What the official set records, taken from the engine's run: the connectors' output, the tokens the
    transformer sees first, and every Euler step's velocity and result (video and audio)."""

    def __init__(self, pipe, monkeypatch):
        from diffusers import FlowMatchEulerDiscreteScheduler
        self.contexts, self.first_tokens, self.video_steps, self.audio_steps = None, None, [], []
        self._handles = [
            pipe.connectors.register_forward_hook(lambda _m, _a, out: setattr(self, "contexts", out)),
            pipe.transformer.register_forward_pre_hook(self._first_call, with_kwargs=True)]
        real_step = FlowMatchEulerDiscreteScheduler.step

        def step(scheduler, model_output, timestep, sample, **kwargs):
            result = real_step(scheduler, model_output, timestep, sample, **kwargs)
            steps = self.video_steps if scheduler is pipe.scheduler else self.audio_steps
            steps.append((model_output.detach().clone(), result[0].detach().clone()))
            return result
        monkeypatch.setattr(FlowMatchEulerDiscreteScheduler, "step", step)

    def _first_call(self, _module, _args, kwargs):
        if self.first_tokens is None:
            self.first_tokens = kwargs["hidden_states"][-1:].detach().clone()  # the positive pass under CFG

    def close(self):
        for handle in self._handles:
            handle.remove()

DEV = CheckpointKind("dev", fp8=False, told_by="job")  # Lightricks' runs: Euler on the dev model


def run(pipe, golden, monkeypatch, preset: str, continuation: bool, downscale: int = 1, steps: int | None = None):
    """The engine's denoise on the golden inputs, starting from the golden noise."""
    s, inputs = golden["settings"]["settings"], golden["inputs"]
    quality_steps = len(golden["settings"]["guidance"]["quality"]["sigmas"]) - 1
    job = Job.from_fields(reference="r", mask="m", preset=preset, steps=quality_steps, sampler="euler")
    rec = recipes.recipe(job, DEV, pipe.transformer.config.num_layers)
    if steps:
        rec = dataclasses.replace(rec, sigmas=rec.sigmas[:steps])
    vae, audio_vae = pipe.vae, pipe.audio_vae
    f, h, w, c = s["latent_frames"], s["latent_height"], s["latent_width"], s["latent_channels"]
    video = inputs["noise_video_packed"].reshape(1, f, h, w, c).permute(0, 4, 1, 2, 3)
    video = video * vae.latents_std.view(1, -1, 1, 1, 1) + vae.latents_mean.view(1, -1, 1, 1, 1)
    audio = inputs["noise_audio_packed"] * audio_vae.latents_std + audio_vae.latents_mean
    audio = audio.unflatten(2, (s["audio_latent_channels"], s["audio_latent_mel_bins"])).transpose(1, 2)
    embeds = (inputs["prompt_embeds"], inputs["prompt_attention_mask"], inputs["negative_prompt_embeds"],
              inputs["negative_prompt_attention_mask"])
    recorder = Recorder(pipe, monkeypatch)
    try:
        latents = ltx.denoise(pipe, rec, embeds, inputs["reference_frames"].numpy(),
                              inputs["condition_frames"].numpy() if continuation else None,
                              num_frames=s["num_frames"], frame_rate=float(inputs["frame_rate"][0]),
                              downscale=downscale, noise=(video, audio), roll=None)
    finally:
        recorder.close()
        monkeypatch.undo()
    return rec, recorder, latents


@pytest.fixture(scope="module")
def actual(pipe, golden):
    """Every tensor the golden set expects, as the engine computes it."""
    s = golden["settings"]["settings"]
    n, cond_tokens = s["target_tokens"], s["cond_latent_frames"] * s["latent_height"] * s["latent_width"]
    vae = pipe.vae
    out, sigmas = {}, {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        for name, (preset, continuation) in RUNS.items():
            rec, recorder, latents = run(pipe, golden, monkeypatch, preset, continuation)
            sigmas[name] = rec.sigmas
            velocities = [v[:, :n] for v, _ in recorder.video_steps]
            out[f"{name}_velocity_step0_target"] = velocities[0]
            out[f"{name}_velocity_target_all_steps"] = torch.stack(velocities)
            out[f"{name}_final_latents_packed"] = recorder.video_steps[-1][1][:, :n]
            out[f"{name}_final_latents_5d_denormalized"] = latents
            out[f"{name}_final_audio_packed"] = recorder.audio_steps[-1][1]
            if name == "quality":
                video_ctx, audio_ctx, mask = recorder.contexts  # batch [negative, positive]
                out.update(context_video_neg=video_ctx[:1], context_video_pos=video_ctx[1:],
                           context_audio_neg=audio_ctx[:1], context_audio_pos=audio_ctx[1:],
                           context_mask_neg=mask[:1], context_mask_pos=mask[1:])
            if name == "fast":
                out["ref_latents_packed"] = recorder.first_tokens[:, n:]
            if name == "fast_cont":
                out["cond_latents_packed"] = recorder.first_tokens[:, :cond_tokens]
        _, recorder, _ = run(pipe, golden, monkeypatch, "fast", False, downscale=2, steps=1)
        out["ref_latents_packed_downscale2"] = recorder.first_tokens[:, n:]
    # The final packed latents are the normalised ones; check they are what the denormalised output says.
    unpacked = out["fast_final_latents_packed"].reshape(1, s["latent_frames"], s["latent_height"],
                                                        s["latent_width"], -1).permute(0, 4, 1, 2, 3)
    renormalised = (out["fast_final_latents_5d_denormalized"] - vae.latents_mean.view(1, -1, 1, 1, 1)) \
        / vae.latents_std.view(1, -1, 1, 1, 1)
    assert torch.allclose(unpacked, renormalised, atol=1e-5)
    out["_sigmas"] = sigmas
    return out


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double(), want.double()
    return float((got - want).norm() / want.norm()) if want.norm() > 0 else float(got.norm())


@pytest.mark.parametrize("name", expected_names())
def test_the_engine_matches_the_official_output(actual, golden, name):
    assert name in actual, f"{name}: the golden set expects it and the engine's run does not give it"
    got, want = actual[name], golden["expected"][name]
    assert tuple(got.shape) == tuple(want.shape), (name, tuple(got.shape), tuple(want.shape))
    if not want.is_floating_point():
        assert torch.equal(got.to(want.dtype), want), name
        return
    error = relative_error(got, want)
    assert error <= TOLERANCE, f"{name}: relative error {error:.2e} (tolerance {TOLERANCE:.0e})"


def test_the_recipes_use_the_official_sigmas_exactly(actual, golden):
    """As the scheduler holds them (float32); the pipeline appends the final 0."""
    for name, (preset, _) in RUNS.items():
        official_sigmas = np.float32(golden["settings"]["guidance"][preset]["sigmas"][:-1])
        assert np.array_equal(np.float32(actual["_sigmas"][name]), official_sigmas), name


def test_the_reference_and_pinned_frames_stay_at_their_clean_latents(pipe, golden, monkeypatch):
    s = golden["settings"]["settings"]
    n, cond_tokens = s["target_tokens"], s["cond_latent_frames"] * s["latent_height"] * s["latent_width"]
    _, recorder, _ = run(pipe, golden, monkeypatch, "quality", True)
    first = recorder.first_tokens
    for _velocity, after in recorder.video_steps:
        assert torch.equal(after[:, n:], first[:, n:])  # the reference
        assert torch.equal(after[:, :cond_tokens], first[:, :cond_tokens])  # the continuation frames


def test_the_config_is_read_off_the_checkpoints_own_metadata(golden):
    header = check_checkpoint(golden["checkpoint"])
    assert "config" in header.metadata
    expected = json.loads((GOLDEN / "configs.json").read_text())
    configs = component_configs(header)
    for component, fields in expected.items():
        got = {k: list(v) if isinstance(v, tuple) else v for k, v in configs[component].items()}
        assert got == fields, component


def test_official_reference_pixels_are_floats_in_0_1_and_resized_bilinearly():
    frames = np.random.default_rng(0).integers(0, 256, (3, 64, 128, 3), np.uint8)
    same = official.reference_pixels(frames, 64, 128)
    assert same.dtype == np.float32 and same.min() >= 0 and same.max() <= 1
    assert np.allclose(same * 255, frames, atol=1e-4)
    half = official.reference_pixels(frames, 32, 64)
    # Bilinear halving without antialiasing, pixel centres aligned: each output pixel is its 2×2 block's mean.
    blocks = frames.astype(np.float32).reshape(3, 32, 2, 64, 2, 3).mean(axis=(2, 4)) / 255
    assert half.shape == (3, 32, 64, 3) and np.allclose(half, blocks, atol=1e-6)
    cropped = official.reference_pixels(frames, 32, 32)  # a square from a 2:1 picture: cover, then centre crop
    assert cropped.shape == (3, 32, 32, 3)
    assert np.allclose(cropped, official.reference_pixels(frames[:, :, 32:96], 32, 32), atol=1e-6)


def test_the_released_config_at_full_size_reads_as_the_built_in_ltx23_configs():
    """The golden checkpoint's config is the released LTX-2.3 one with only the sizes changed: at 22B's sizes
    it must read as the configs the engine falls back to (read off the real file's tensor names)."""
    import gzip
    import inspect

    from engine.configs import LTX23_CONFIGS, from_metadata, vae_depths
    from engine.models import component_class
    config = json.loads(check_checkpoint(GOLDEN / "checkpoint.safetensors").metadata["config"])
    config["transformer"].update(
        in_channels=128, out_channels=128, num_attention_heads=32, attention_head_dim=128, cross_attention_dim=4096,
        audio_in_channels=128, audio_out_channels=128, audio_num_attention_heads=32, audio_attention_head_dim=64,
        audio_cross_attention_dim=2048, num_layers=48, caption_channels=3840, connector_num_attention_heads=32,
        connector_attention_head_dim=128, audio_connector_num_attention_heads=32,
        audio_connector_attention_head_dim=64, connector_num_layers=8)
    keys = json.loads(gzip.decompress((ROOT / "tests/data/ltx23_original_keys.json.gz").read_bytes()))
    depths = vae_depths(keys)
    vae = config["vae"]
    vae.update(latent_channels=128, encoder_base_channels=128, decoder_base_channels=128)
    for blocks, layers in ((vae["encoder_blocks"], depths["layers_per_block"]),
                           (vae["decoder_blocks"], depths["decoder_layers_per_block"])):
        for block, n in zip([b for b in blocks if b[0] == "res_x"], layers):
            block[1]["num_layers"] = n
    config["audio_vae"]["model"]["params"]["ddconfig"].update(ch=128, z_channels=8, mel_bins=64, num_res_blocks=2)
    read = from_metadata(config, 3840 * 49)
    assert read["transformer"] == LTX23_CONFIGS["transformer"]
    assert read["connectors"] == LTX23_CONFIGS["connectors"]
    assert read["vae"] == {**LTX23_CONFIGS["vae"], **depths}
    defaults = inspect.signature(component_class("audio_vae").__init__).parameters
    assert all(tuple(defaults[k].default) == v if isinstance(v, tuple) else defaults[k].default == v
               for k, v in read["audio_vae"].items())
