"""Denoiser parameterisations against the VP formulas by hand, CFG, guidance rescale, loss."""

import pytest
import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
from torch import nn

from noisecraft import schedules as S
from noisecraft.denoiser import CFGDenoiser, Denoiser
from noisecraft.train.losses import denoising_loss, training_sigmas

AC = S.alphas_cumprod(S.betas("scaled_linear"))
F64 = torch.float64


class Oracle(nn.Module):
    """Returns the exact native target for a known (x0, eps) pair and records its inputs."""

    def __init__(self, prediction, x0, eps):
        super().__init__()
        self.prediction, self.x0, self.eps, self.calls = prediction, x0, eps, []

    def forward(self, x_t, t):
        self.calls.append((x_t, t))
        ab = AC[t.round().long()].reshape(-1, 1, 1, 1)
        return {"eps": self.eps, "x0": self.x0,
                "v": ab.sqrt() * self.eps - (1 - ab).sqrt() * self.x0}[self.prediction]


class Toy(nn.Module):
    """A fixed random eps/v/x0 'network' that uses t and a `context` entry."""

    def __init__(self, C=4, D=3):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.register_buffer("A", torch.randn(C, C, generator=g, dtype=F64) / C**0.5)
        self.register_buffer("W", torch.randn(D, C, generator=g, dtype=F64))
        self.batches = []

    def forward(self, x, t, context=None, scale=1.0):
        self.batches.append(x.shape[0])
        h = torch.einsum("oc,bchw->bohw", self.A, x) + torch.sin(t / 100).reshape(-1, 1, 1, 1)
        if context is not None:
            h = h + (context @ self.W).mean(1).reshape(x.shape[0], -1, 1, 1)
        return torch.tanh(h) * scale


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_conversions_match_the_vp_formula(prediction):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 5, 5, generator=g, dtype=F64)
    eps = torch.randn(3, 4, 5, 5, generator=g, dtype=F64)
    t = torch.tensor([10, 400, 999])
    ab = AC[t].reshape(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps  # Ho et al. 2020 eq. 4
    net = Oracle(prediction, x0, eps)
    d = Denoiser(net, AC, prediction)
    sigma = S.sigmas_from_alphas_cumprod(AC[t])
    x = x_t / ab.sqrt()  # the same point in the VE convention
    torch.testing.assert_close(x, x0 + sigma.reshape(-1, 1, 1, 1) * eps, rtol=1e-12, atol=1e-12)
    out = d(x, sigma, {})
    torch.testing.assert_close(out, x0, rtol=1e-10, atol=1e-10)
    x_in, t_in = net.calls[-1]
    torch.testing.assert_close(x_in, x_t, rtol=1e-12, atol=1e-12)  # c_in * x is the VP sample
    assert torch.equal(t_in, t.to(F64))
    s, c_in = sigma.reshape(-1, 1, 1, 1), ab.sqrt()
    native = d.to_prediction(x, s, c_in, out)
    torch.testing.assert_close(native, net(x_t, t.to(F64)), rtol=1e-10, atol=1e-10)
    assert torch.equal(d(x, sigma), out)  # cond may be omitted


def test_scalar_sigma_fractional_t_and_quantize():
    net = Toy()
    d, dq = Denoiser(net, AC), Denoiser(net, AC, quantize=True)
    x = torch.randn(2, 4, 3, 3, dtype=F64)
    sigma = S.t_to_sigma(torch.tensor(321.4, dtype=F64), d.sigmas)
    torch.testing.assert_close(d(x, sigma), d(x, sigma.expand(2)), rtol=0, atol=0)
    assert d.sigma_to_t(sigma).item() == pytest.approx(321.4, abs=1e-9)
    assert dq.sigma_to_t(sigma).item() == 321
    assert d.t_to_sigma(321.4).item() == sigma.item()
    d32 = Denoiser(Toy(), AC).to(torch.float32)  # network cast, schedule still float64
    out32 = d32(x.float(), sigma.float())
    assert out32.dtype == torch.float32 and d32.sigmas.dtype == F64
    torch.testing.assert_close(out32.double(), d(x, sigma), rtol=1e-5, atol=1e-5)


def test_schedule_stays_float64_and_out_of_the_state_dict():
    d = Denoiser(Toy(), AC)
    assert d.sigmas.dtype == F64 and d.sigma_min == pytest.approx(0.0291671581517, rel=1e-9)
    assert d.sigma_max == pytest.approx(14.6146412293, rel=1e-9) and d.num_train_timesteps == 1000
    d.half()
    assert d.sigmas.dtype == F64 and torch.equal(d.sigmas, S.sigmas_from_alphas_cumprod(AC))
    d.to(torch.float32)
    assert d.sigmas.dtype == F64
    assert "sigmas" not in d.state_dict()  # checkpoints hold the network's weights only


def test_unknown_prediction():
    with pytest.raises(ValueError, match="unknown prediction type 'epsilon'; choose one of: eps, v, x0"):
        Denoiser(Toy(), AC, "epsilon")


def _conds(B=2, L=5, D=3):
    g = torch.Generator().manual_seed(1)
    return {"context": torch.randn(B, L, D, generator=g, dtype=F64)}, \
           {"context": torch.randn(B, L, D, generator=g, dtype=F64)}


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_cfg_equals_separate_calls_in_one_batched_forward(prediction):
    net = Toy()
    d = Denoiser(net, AC, prediction)
    cond, uncond = _conds()
    cond["scale"] = 0.7  # non-tensor entries pass through unchanged
    uncond["scale"] = 0.7
    x = torch.randn(2, 4, 3, 3, dtype=F64)
    sigma = torch.tensor([3.0, 0.5], dtype=F64)
    c, u = d(x, sigma, cond), d(x, sigma, uncond)
    net.batches.clear()
    out = CFGDenoiser(d, cond, uncond, scale=7.5)(x, sigma)
    assert net.batches == [4]
    torch.testing.assert_close(out, u + 7.5 * (c - u), rtol=1e-12, atol=1e-12)
    net.batches.clear()
    torch.testing.assert_close(CFGDenoiser(d, cond, uncond, scale=1.0)(x, sigma), c, rtol=0, atol=0)
    torch.testing.assert_close(CFGDenoiser(d, cond, None, scale=5.0)(x, torch.tensor(3.0)),
                               d(x, torch.tensor([3.0, 3.0]), cond), rtol=0, atol=0)
    assert net.batches == [2, 2, 2]  # scale 1 and uncond=None each run a single pass


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_guidance_rescale_matches_diffusers(prediction):
    net = Toy()
    d = Denoiser(net, AC, prediction)
    cond, uncond = _conds()
    x = torch.randn(2, 4, 3, 3, dtype=F64) * 5
    sigma = torch.tensor([4.0, 1.5], dtype=F64)
    # diffusers' way: the network's native outputs, guided, rescaled, then to x0 by hand
    t = S.sigma_to_t(sigma, d.sigmas)
    s = sigma.reshape(-1, 1, 1, 1)
    c_in = (s**2 + 1) ** -0.5
    n_c, n_u = net(x * c_in, t, **cond), net(x * c_in, t, **uncond)
    guided = rescale_noise_cfg(n_u + 6.0 * (n_c - n_u), n_c, guidance_rescale=0.7)
    expected = x - s * guided if prediction == "eps" else c_in**2 * x - s * c_in * guided
    out = CFGDenoiser(d, cond, uncond, scale=6.0, rescale=0.7)(x, sigma)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    plain = CFGDenoiser(d, cond, uncond, scale=6.0)(x, sigma)
    assert (out - plain).abs().max() > 1e-3  # the rescale does something


def test_cfg_key_mismatch():
    with pytest.raises(ValueError, match="same keys"):
        CFGDenoiser(Denoiser(Toy(), AC), {"context": torch.zeros(1)}, {"y": torch.zeros(1)}, 5.0)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_loss_in_native_target(prediction):
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(3, 4, 3, 3, generator=g, dtype=F64)
    noise = torch.randn(3, 4, 3, 3, generator=g, dtype=F64)
    t = torch.tensor([0, 500, 999])
    sigma = S.sigmas_from_alphas_cumprod(AC[t])
    net = Toy()
    loss = denoising_loss(Denoiser(net, AC, prediction), x0, sigma, {}, noise)
    ab = AC[t].reshape(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    target = {"eps": noise, "x0": x0, "v": ab.sqrt() * noise - (1 - ab).sqrt() * x0}[prediction]
    expected = (net(x_t, t.to(F64)) - target).pow(2).mean(dim=(1, 2, 3))
    assert loss.shape == (3,)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    oracle = Denoiser(Oracle(prediction, x0, noise), AC, prediction)
    assert denoising_loss(oracle, x0, sigma, {}, noise).abs().max() < 1e-20


def test_training_sigmas_are_uniform_integer_timesteps():
    d = Denoiser(Toy(), AC)
    s1 = training_sigmas(d, 4096, torch.Generator().manual_seed(5))
    s2 = training_sigmas(d, 4096, torch.Generator().manual_seed(5))
    assert torch.equal(s1, s2) and s1.dtype == F64 and s1.shape == (4096,)
    t = d.sigma_to_t(s1)
    assert torch.equal(t, t.round()) and t.min() >= 0 and t.max() <= 999
    assert abs(t.mean().item() - 499.5) < 15  # U{0..999}: mean 499.5, std of the mean ~4.5
