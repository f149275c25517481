"""The seam wrap: rolling packed tokens is a roll of the latent grid (target and reference together) and
undoes exactly; the engine's model sees a moving edge while its output stays in the canvas frame; the
wrapped decode sees across the edge."""

import torch
from diffusers import LTX2InContextPipeline
from test_engine_ltx import Captured

from conftest import make_job
from engine import seam, tiny


def test_rolling_tokens_rolls_the_grid_of_target_and_reference():
    grid = (2, 3, 8)
    target = torch.randn(1, 4, *grid)
    ref = torch.randn(1, 4, 2, 3, 4)  # a reference downscaled 2x in space
    tokens = torch.cat([LTX2InContextPipeline._pack_latents(target), LTX2InContextPipeline._pack_latents(ref)], 1)
    rolled = seam.roll_tokens(tokens, grid, 4, reference_factor=2)
    expected = torch.cat([LTX2InContextPipeline._pack_latents(target.roll(4, dims=-1)),
                          LTX2InContextPipeline._pack_latents(ref.roll(2, dims=-1))], 1)
    assert torch.equal(rolled, expected)
    assert torch.equal(seam.roll_tokens(rolled, grid, -4, reference_factor=2), tokens)


def test_shifts_move_the_edge_by_a_quarter_each_step_in_whole_reference_tokens():
    class Dummy(torch.nn.Module):
        def forward(self, **kwargs):
            return kwargs["hidden_states"], None
    roll = seam.LatentRoll(Dummy(), reference_factor=2)
    shifts = []
    for step in range(5):
        roll.advance(step)
        shifts.append(roll.shift(60))
    assert shifts == [0, 14, 30, 44, 0]


def test_the_model_sees_a_rolled_canvas_but_answers_in_the_canvas_frame():
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, **kwargs):
            seen.append(kwargs["hidden_states"].clone())
            return kwargs["hidden_states"] * 2, None

    model, grid = Probe(), (1, 2, 8)
    roll = seam.LatentRoll(model)
    roll.advance(1)  # a quarter of 8 = 2 columns
    tokens = torch.randn(1, 32, 3)  # target + a same-size reference
    out, _ = model(hidden_states=tokens, num_frames=1, height=2, width=8, timestep=torch.zeros(1, 32))
    assert torch.equal(seen[0], seam.roll_tokens(tokens, grid, 2))
    assert torch.equal(out, tokens * 2)  # unrolled: the pipeline never sees the roll
    roll.remove()
    model(hidden_states=tokens, num_frames=1, height=2, width=8)
    assert torch.equal(seen[1], tokens)


def test_the_wrapped_decode_crops_back_to_the_canvas_and_sees_across_the_edge():
    vae = tiny.build_components()["vae"]
    torch.manual_seed(0)
    latents = torch.randn(1, tiny.METADATA_CONFIG["vae"]["latent_channels"], 2, 2, 4)

    def roll_error(pad):
        """How far decoding is from commuting with a roll of the canvas: 0 for a perfect wrap."""
        with torch.no_grad():
            video = seam.decode_wrapped(vae, latents, None, pad)
            rolled = seam.decode_wrapped(vae, latents.roll(1, dims=-1), None, pad)
        assert video.shape == (1, 3, 9, 64, 128)
        return (rolled - video.roll(32, dims=-1)).abs().mean().item()
    assert roll_error(seam.DECODE_WRAP_LATENTS) < roll_error(0) / 5


def test_the_engine_rolls_during_denoising(tmp_path, tiny_reference, models, monkeypatch):
    results = {}
    for name, per_step in (("rolled", seam.ROLL_PER_STEP), ("still", 0.0)):
        monkeypatch.setattr(seam, "ROLL_PER_STEP", per_step)
        monkeypatch.setattr(seam.LatentRoll.__init__, "__defaults__", (1, per_step))
        captured = Captured(monkeypatch)
        captured.run(make_job(tmp_path / name, tiny_reference, models, steps=4))
        results[name] = captured.latents
    assert (results["rolled"] - results["still"]).abs().mean() > 1e-3
