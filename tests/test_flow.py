"""Flow matching in the existing frame (toward issue 20): the sigma schedules of SD3 (static shift) and FLUX
(resolution-dependent shift) pinned to diffusers' `FlowMatchEulerDiscreteScheduler`, and noisecraft's Euler
sampler over a `FlowDenoiser` walking the same path as diffusers' flow Euler steps, on a toy velocity network."""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from noisecraft.denoiser import FlowDenoiser  # noqa: E402
from noisecraft.errors import UserError  # noqa: E402
from noisecraft.samplers import sample_euler  # noqa: E402
from noisecraft.schedules import flow_mu, flow_sigmas  # noqa: E402


@pytest.mark.parametrize("steps", [1, 4, 28, 50])
def test_static_shift_sigmas_are_diffusers(steps):
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(steps)
    ours = flow_sigmas(steps, shift=3.0)
    assert ours.dtype == torch.float64 and ours[-1] == 0 and ours[0] == 1
    assert (scheduler.sigmas.double() - ours).abs().max() < 1e-7  # diffusers keeps float32


@pytest.mark.parametrize("tokens", [256, 1024, 4096])
def test_resolution_shift_sigmas_are_diffusers(tokens):
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    mu = calculate_shift(tokens, 256, 4096, 0.5, 1.15)
    assert flow_mu(tokens) == pytest.approx(mu, abs=1e-12)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                          base_image_seq_len=256, max_image_seq_len=4096)
    scheduler.set_timesteps(28, mu=mu)
    assert (scheduler.sigmas.double() - flow_sigmas(28, mu=mu)).abs().max() < 1e-7
    with pytest.raises(UserError, match="one of the two"):
        flow_sigmas(28, shift=3.0, mu=mu)


class ToyVelocity(torch.nn.Module):
    """A fixed random velocity field v(x, t): a 3x3 convolution of x plus a term in t."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.1)
            self.conv.bias.copy_(torch.randn(4, generator=g) * 0.1)
        self.seen: list[float] = []

    def forward(self, x, t):
        self.seen.append(float(t.reshape(-1)[0]))
        return self.conv(x) + torch.sin(t / 1000.0).reshape(-1, 1, 1, 1)


def diffusers_walk(scheduler, net, start: torch.Tensor) -> torch.Tensor:
    """A diffusers flow scheduler's own loop over `net` from `start`."""
    x = start.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(net(x, t.expand(len(x))), t, x).prev_sample
    return x


def test_euler_over_a_flow_denoiser_is_diffusers_flow_euler():
    net = ToyVelocity()
    start = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(12)
    theirs = diffusers_walk(scheduler, net, start)
    their_ts = net.seen[:]
    net.seen.clear()
    denoiser = FlowDenoiser(net, shift=3.0)
    sigmas = flow_sigmas(12, shift=3.0)
    with torch.no_grad():
        ours = sample_euler(denoiser, start.clone() * float(sigmas[0]), sigmas.float())
    assert max(abs(a - b) for a, b in zip(net.seen, their_ts)) < 1e-3  # the network saw t = sigma * 1000
    assert float((ours - theirs).abs().max() / theirs.abs().max()) < 1e-5


def test_noised_is_diffusers_scale_noise_and_the_prediction_round_trips():
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(10)
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    denoiser = FlowDenoiser(ToyVelocity(), shift=3.0)
    t = scheduler.timesteps[3:4]
    expected = scheduler.scale_noise(x0, t, noise)
    assert torch.allclose(denoiser.noised(x0, scheduler.sigmas[3], noise), expected, atol=1e-6)
    x = denoiser.noised(x0, 0.4, noise)
    s = torch.full((1, 1, 1, 1), 0.4)
    v = noise - x0  # the velocity of the straight path
    assert torch.allclose(denoiser.from_prediction(x, s, None, v), x0, atol=1e-6)
    assert torch.allclose(denoiser.to_prediction(x, s, None, x0), v, atol=1e-5)
    assert denoiser.train_sigmas[-1] == 1.0 and abs(denoiser.sigma_min - 3 / 1000 / (1 + 2 / 1000)) < 1e-12


def test_heun_over_a_flow_denoiser_is_diffusers_flow_heun():
    """Heun's second-order steps (the last one Euler, as k-diffusion's) are diffusers' FlowMatchHeun on the same sigmas."""
    from noisecraft.samplers import sample_heun

    net = ToyVelocity()
    start = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    scheduler = diffusers.FlowMatchHeunDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(8)
    theirs = diffusers_walk(scheduler, net, start)
    sigmas = flow_sigmas(8, shift=3.0)
    with torch.no_grad():
        ours = sample_heun(FlowDenoiser(net, shift=3.0), start.clone() * float(sigmas[0]), sigmas.float())
    assert float((ours - theirs).abs().max() / theirs.abs().max()) < 1e-5
