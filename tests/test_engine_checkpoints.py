"""The checkpoints users have — dev and distilled, bf16 and Lightricks' fp8 — and the recipe each runs:
which is which, fp8 dequantised with its scales, the distilled model without the distilled LoRA, a
preset/checkpoint mismatch refused, and the author's euler_ancestral sampler."""

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from test_engine_ltx import Captured

from blender_equi360.jobs.job import Job
from blender_equi360.jobs.protocol import EXIT_CODES
from conftest import make_job, run_engine
from engine import models as engine_models
from engine import recipes, samplers
from engine.models import load_components
from engine.protocol_io import EngineError
from engine.weights import FP8_DTYPE, CheckpointKind, Header, check_checkpoint, checkpoint_kind


def header_of(path) -> Header:
    return check_checkpoint(Path(path))


# --- which checkpoint is which ------------------------------------------------------------------------------

def _header(names=(), metadata=None, dtypes=None) -> Header:
    names = tuple(names) or ("model.diffusion_model.x.weight",)
    dtypes = dtypes or {n: "BF16" for n in names}
    return Header(names, metadata or {}, {n: 2 for n in names}, {n: (1,) for n in names}, dtypes)


@pytest.mark.parametrize("name, metadata, choice, expected", [
    ("ltx-2.3-22b-dev.safetensors", {}, "auto", ("dev", "name")),
    ("ltx-2.3-22b-distilled-1.1.safetensors", {}, "auto", ("distilled", "name")),
    ("ltx-2.3-22b-distilled.safetensors", {}, "auto", ("distilled", "name")),
    ("ltx-2.3-22b-distilled-fp8.safetensors", {}, "auto", ("distilled", "name")),
    ("model.safetensors", {"model_variant": "distilled"}, "auto", ("distilled", "metadata")),
    ("ltx-2.3-22b-dev.safetensors", {"model_variant": "distilled"}, "auto", ("distilled", "metadata")),
    ("renamed.safetensors", {}, "distilled", ("distilled", "job")),
    ("ltx-2.3-22b-distilled-1.1.safetensors", {}, "dev", ("dev", "job")),
])
def test_the_variant_is_told_by_the_job_then_the_metadata_then_the_name(name, metadata, choice, expected):
    kind = checkpoint_kind(Path(name), _header(metadata=metadata), choice)
    assert (kind.variant, kind.told_by) == expected and not kind.fp8


def test_a_checkpoint_that_does_not_say_is_refused_with_how_to_choose():
    with pytest.raises(EngineError) as info:
        checkpoint_kind(Path("my-model.safetensors"), _header())
    assert info.value.code == "unknown_checkpoint"
    assert "my-model.safetensors" in str(info.value) and "checkpoint_variant" in str(info.value)


def test_fp8_is_read_off_the_tensor_types_and_a_missing_scale_is_refused():
    names = ("model.diffusion_model.transformer_blocks.2.attn1.to_q.weight",
             "model.diffusion_model.transformer_blocks.2.attn1.to_q.weight_scale")
    fp8 = _header(names, dtypes={names[0]: FP8_DTYPE, names[1]: "F32"})
    assert checkpoint_kind(Path("ltx-2.3-22b-dev-fp8.safetensors"), fp8).fp8
    without_scale = _header(names[:1], dtypes={names[0]: FP8_DTYPE})
    with pytest.raises(EngineError) as info:
        checkpoint_kind(Path("ltx-2.3-22b-dev-fp8.safetensors"), without_scale)
    assert info.value.code == "corrupt_weights" and "weight_scale" in str(info.value)


def test_the_tiny_fp8_twin_is_in_the_layout_of_lightricks_fp8_files(tiny_files):
    header = header_of(tiny_files["checkpoint_fp8"])
    kind = checkpoint_kind(Path(tiny_files["checkpoint_fp8"]), header)
    assert kind == CheckpointKind("dev", True, "name")
    quantised = [k for k, d in header.dtypes.items() if d == FP8_DTYPE]
    assert quantised and all(k.startswith("model.diffusion_model.transformer_blocks.1.") for k in quantised)
    assert "model.diffusion_model.transformer_blocks.1.attn1.to_gate_logits.weight" in quantised
    for key in quantised:
        stem = key.removesuffix(".weight")
        assert header.shapes[stem + ".weight_scale"] == () and header.dtypes[stem + ".weight_scale"] == "F32"
        assert header.shapes[stem + ".input_scale"] == ()
    block0 = [k for k in header.keys if k.startswith("model.diffusion_model.transformer_blocks.0.")]
    assert block0 and all(header.dtypes[k] == "BF16" for k in block0)  # the edge block stays bf16


# --- fp8 loading --------------------------------------------------------------------------------------------

def _relative_error(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_the_fp8_twin_loads_strictly_to_the_dev_weights_within_fp8_error(tiny_files):
    dev = load_components(Path(tiny_files["checkpoint"]), header_of(tiny_files["checkpoint"]), "cpu", torch.float32)
    path = Path(tiny_files["checkpoint_fp8"])
    fp8 = load_components(path, header_of(path), "cpu", torch.float32)
    with safe_open(str(path), "pt") as f:
        quantised = [k for k in f.keys() if f.get_slice(k).get_dtype() == FP8_DTYPE]
    errors = []
    for key in quantised:
        name = key.removeprefix("model.diffusion_model.")
        ours = fp8["transformer"].state_dict().get(name) if name in fp8["transformer"].state_dict() else None
        if ours is None:  # renamed on the way (q_norm → norm_q and the like do not hit Linear weights)
            continue
        errors.append(_relative_error(ours, dev["transformer"].state_dict()[name]))
    assert len(errors) > 20
    # e4m3 keeps 3 mantissa bits: a relative step of 2^-4 at most, about 2.5 % in the mean.
    assert max(errors) < 0.05, max(errors)  # measured: max 0.030, mean 0.024


def _denoised(monkeypatch, tmp_path, reference, files, **fields):
    captured = Captured(monkeypatch)
    captured.run(make_job(tmp_path, reference, files, **fields))
    return captured.latents


def test_the_fp8_twin_makes_the_dev_output_and_without_its_scales_it_is_far_off(tmp_path, tiny_reference, models,
                                                                                 tiny_files, monkeypatch):
    """The output of the fp8 file stays within fp8 error of the bf16 one; dequantising without the scale
    (the raw cast some loaders do) is off by orders of magnitude more, so this test sees that bug."""
    dev = _denoised(monkeypatch, tmp_path / "dev", tiny_reference, models)
    fp8_files = {**models, "checkpoint": tiny_files["checkpoint_fp8"]}
    fp8 = _denoised(monkeypatch, tmp_path / "fp8", tiny_reference, fp8_files)
    good = _relative_error(fp8, dev)
    real = engine_models.dequantised
    monkeypatch.setattr(engine_models, "dequantised", lambda weight, scale, dtype: real(weight, scale * 0 + 1, dtype))
    raw = _relative_error(_denoised(monkeypatch, tmp_path / "raw", tiny_reference, fp8_files), dev)
    assert good < 0.02, good  # measured 0.0025; without the scales 1.15
    assert raw > 20 * good, (good, raw)


# --- the recipe each checkpoint runs ---------------------------------------------------------------------------

DEV, DISTILLED = CheckpointKind("dev", False, "name"), CheckpointKind("distilled", False, "name")


def test_fast_on_distilled_fuses_no_distilled_lora_and_on_dev_it_does():
    job = Job.from_fields(reference="r", mask="m", preset="fast")
    assert not recipes.recipe(job, DISTILLED, 48).distilled_lora
    assert recipes.recipe(job, DEV, 48).distilled_lora
    assert recipes.recipe(job, DISTILLED, 48).sampler == "euler_ancestral"  # the author's
    assert recipes.recipe(Job.from_fields(reference="r", mask="m", preset="fast", sampler="euler"),
                          DISTILLED, 48).sampler == "euler"
    assert recipes.recipe(Job.from_fields(reference="r", mask="m"), DEV, 48).sampler == "euler"


def test_quality_on_the_distilled_checkpoint_is_refused_with_what_to_choose():
    with pytest.raises(EngineError) as info:
        recipes.recipe(Job.from_fields(reference="r", mask="m", preset="quality"), DISTILLED, 48)
    message = str(info.value)
    assert info.value.code == "wrong_recipe" and "fast preset" in message and "ltx-2.3-22b-dev" in message


def test_the_distilled_checkpoint_runs_the_fast_recipe_without_the_distilled_lora(tmp_path, tiny_reference, models,
                                                                                  tiny_files, monkeypatch):
    files = {**models, "checkpoint": tiny_files["checkpoint_distilled"], "distilled_lora": None}
    job_dir = make_job(tmp_path / "alone", tiny_reference, files, preset="fast", steps=None)
    _, events = Captured(monkeypatch).run(job_dir)
    steps = [e["total"] for e in events if e["event"] == "progress" and e["stage"] == "denoise"]
    assert steps[-1] == 8
    logs = " ".join(e["message"] for e in events if e["event"] == "log")
    assert "LTX-2.3 distilled" in logs and "told by its file name" in logs
    # A distilled LoRA named anyway is left out, and said so.
    with_lora = {**files, "distilled_lora": models["distilled_lora"]}
    _, events = Captured(monkeypatch).run(make_job(tmp_path / "lora", tiny_reference, with_lora, preset="fast",
                                                   steps=None))
    assert [e["code"] for e in events if e["event"] == "warning"] == ["distilled_lora_ignored"]


def test_a_mismatch_exits_with_its_code_and_leaves_nothing(tmp_path, tiny_reference, models, tiny_files):
    files = {**models, "checkpoint": tiny_files["checkpoint_distilled"]}
    rc, events, _ = run_engine(make_job(tmp_path, tiny_reference, files, preset="quality"))
    assert rc == EXIT_CODES["wrong_recipe"] and events[-1]["code"] == "wrong_recipe"
    assert not (tmp_path / "result.mp4").exists()


def test_a_renamed_checkpoint_runs_once_the_job_says_which_it_is(tmp_path, tiny_reference, models, monkeypatch):
    renamed = tmp_path / "model.safetensors"
    renamed.write_bytes(Path(models["checkpoint"]).read_bytes())
    files = {**models, "checkpoint": str(renamed)}
    with pytest.raises(EngineError) as info:
        Captured(monkeypatch).run(make_job(tmp_path / "unsaid", tiny_reference, files))
    assert info.value.code == "unknown_checkpoint" and "checkpoint_variant" in str(info.value)
    Captured(monkeypatch).run(make_job(tmp_path / "said", tiny_reference, files, checkpoint_variant="dev"))
    assert (tmp_path / "said" / "result.mp4").exists()


def test_a_job_canvas_the_reference_does_not_have_is_bad_input(tmp_path, tiny_reference, models, monkeypatch):
    with pytest.raises(EngineError) as info:
        Captured(monkeypatch).run(make_job(tmp_path, tiny_reference, models, canvas="2560x1280"))
    assert info.value.code == "bad_input" and "2560x1280" in str(info.value)


# --- euler_ancestral, as ComfyUI defines it for flow-matching models -----------------------------------------

def test_ancestral_steps_keep_the_flow_matching_marginals():
    """With the true x0, every step lands on (1 - s') x0 + s' ε with ε unit Gaussian (fresh noise, unlike
    Euler's), and the last step is x0: a wrong renoise coefficient or signal scale moves the figures."""
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(400_000, generator=gen)
    sigmas = [*recipes.DISTILLED_SIGMAS, 0.0]
    first = torch.randn(400_000, generator=gen)
    x = (1 - sigmas[0]) * x0 + sigmas[0] * first
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        x = samplers.ancestral_step(x, x0, s, s_next, torch.randn(400_000, generator=gen))
        if s_next == 0:
            assert torch.equal(x, x0)
            break
        eps = (x - (1 - s_next) * x0) / s_next
        assert abs(float(eps.std()) - 1) < 0.005 and abs(float(eps.mean())) < 0.005
    # and the noise is renewed: after the big 0.909 → 0.725 step, the first noise is largely gone
    assert float(torch.corrcoef(torch.stack([first, eps]))[0, 1]) < 0.9


def test_ancestral_scheduler_keeps_pinned_tokens_and_is_seeded(tmp_path, tiny_reference, models, monkeypatch):
    from engine import official
    pins = []
    real = official.in_context_pipeline_class

    def spying():
        cls = real()

        class Spy(cls):
            def prepare_latents(self, *args, **kwargs):
                prepared = super().prepare_latents(*args, **kwargs)
                pins.append(getattr(self.scheduler, "_pinned", None) is prepared[1])
                return prepared
        return Spy
    monkeypatch.setattr(official, "in_context_pipeline_class", spying)
    first = _denoised(monkeypatch, tmp_path / "a", tiny_reference, models, preset="fast", steps=None)
    again = _denoised(monkeypatch, tmp_path / "b", tiny_reference, models, preset="fast", steps=None)
    euler = _denoised(monkeypatch, tmp_path / "c", tiny_reference, models, preset="fast", steps=None,
                      sampler="euler")
    other_seed = _denoised(monkeypatch, tmp_path / "d", tiny_reference, models, preset="fast", steps=None, seed=7)
    assert pins == [True, True, False, True]  # the euler run has nothing to pin
    assert torch.equal(first, again)
    assert _relative_error(first, euler) > 0.01 and _relative_error(first, other_seed) > 0.01


def test_the_ancestral_step_leaves_pinned_tokens_exactly_as_they_were():
    scheduler = samplers.scheduler("euler_ancestral", 3)
    scheduler.set_timesteps(sigmas=list(recipes.DISTILLED_SIGMAS))
    sample = torch.randn(1, 6, 4)
    velocity = torch.randn(1, 6, 4)
    pinned = torch.tensor([1.0, 1, 0, 0, 0, 1]).view(1, 6, 1)
    scheduler.pin(pinned)
    stepped = scheduler.step(velocity, scheduler.timesteps[0], sample, return_dict=False)[0]
    keep = pinned[0, :, 0].bool()
    assert torch.equal(stepped[:, keep], sample[:, keep])
    assert not torch.allclose(stepped[:, ~keep], sample[:, ~keep])


def test_the_authors_set_runs_end_to_end(tmp_path, tiny_reference, models, tiny_files):
    """The fp8 checkpoint with the distilled LoRA, ComfyUI's fp8 Gemma and a LoRA shipped as 1.0 is
    (no reference_downscale_factor in its metadata): the fast recipe through ``python -m engine run``."""
    files = {"checkpoint": tiny_files["checkpoint_fp8"], "text_encoder": tiny_files["text_encoder_fp8"],
             "ic_lora": tiny_files["ic_lora_1"], "distilled_lora": models["distilled_lora"]}
    rc, events, err = run_engine(make_job(tmp_path, tiny_reference, files, preset="fast", steps=None))
    assert rc == 0, err
    logs = " ".join(e["message"] for e in events if e["event"] == "log")
    assert "LTX-2.3 dev fp8" in logs and events[-1]["event"] == "done"
