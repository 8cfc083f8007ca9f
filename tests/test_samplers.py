"""Samplers against diffusers' schedulers, driven literally, on a fixed float64 toy network.

Both sides run Stable Diffusion's schedule (scaled_linear 0.00085..0.012, 1000 steps,
steps_offset=1, set_alpha_to_one=False, clip_sample=False; each scheduler's own default
timestep_spacing, as when loaded from SD 1.5's scheduler_config.json). diffusers: z *
init_noise_sigma, scale_model_input, net(x, t), scheduler.step. Ours: Denoiser + the registry's
spec (its sigmas, init_scale, options) + to_vp. Metric: |ours - diffusers|.max() / |diffusers|.max()
of the final sample. Tolerance 1e-5: diffusers keeps its schedule in float32 (and Euler/DPM
upcast the sample to float32), which alone accounts for the ~1e-7..3e-6 measured; with a float64
schedule DDIM/DDPM agree to 1e-15 (test_ddim_ddpm_exact_with_float64_schedule).

Measured (diffusers 0.42.1, torch 2.13 CPU; `python tests/test_samplers.py` reprints it):
    sampler                             10 steps  20 steps
    euler                                4.6e-07   8.0e-07
    euler_karras                         3.5e-07   4.8e-07
    euler_exponential                    5.4e-07   5.8e-07
    heun                                 3.9e-07   8.2e-07
    heun_karras                          3.9e-07   3.9e-07
    ddim (eta=0)                         2.7e-07   3.6e-07
    dpmpp_2m                             4.1e-07   4.8e-07
    dpmpp_2m_karras (quantize)           7.1e-07   6.2e-07
    unipc (order 2)                      4.9e-07   4.0e-07
    unipc (order 3)                      4.8e-07   4.0e-07
    unipc_karras (quantize)              5.2e-07   5.2e-07
    euler_a (same noise)                 5.0e-07   2.5e-06
    ddpm (same noise)                    4.2e-07   5.3e-07
    ddim eta=0.5 (same noise)            3.0e-07   3.5e-07
    ddim eta=1 (same noise)              3.0e-07   3.4e-07
    dpmpp_2m_sde (same noise)            4.5e-07   8.4e-07
    dpmpp_2m_sde_karras (same noise)     1.0e-06   1.2e-06
Without quantize, dpmpp_2m_karras differs by ~3e-4 (diffusers rounds t, we feed the exact t).
"""

import math

import pytest
import torch
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,
                       EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
                       HeunDiscreteScheduler, UniPCMultistepScheduler)
from torch import nn

from noisecraft import samplers
from noisecraft import schedules as S
from noisecraft.denoiser import Denoiser

F64 = torch.float64
SD = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
          steps_offset=1, clip_sample=False, set_alpha_to_one=False)
AC = S.alphas_cumprod(S.betas("scaled_linear"))
TRAIN = S.sigmas_from_alphas_cumprod(AC)


class ToyNet(nn.Module):
    """A fixed random 'UNet': tanh of a channel mix of x_t plus a smooth embedding of t."""

    def __init__(self, C=4):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.A = torch.randn(C, C, generator=g, dtype=F64) / C**0.5
        self.u = torch.randn(C, generator=g, dtype=F64).view(1, -1, 1, 1)
        self.v = torch.randn(C, generator=g, dtype=F64).view(1, -1, 1, 1)

    def forward(self, x, t, **cond):
        t = t.to(F64).reshape(-1, 1, 1, 1)
        return torch.tanh(torch.einsum("oc,bchw->bohw", self.A, x) + self.u * torch.sin(t / 150)
                          + self.v * torch.cos(t / 400))


NET = ToyNet()
Z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
PRED = {"eps": "epsilon", "v": "v_prediction"}


def run_diffusers(cls, cfg, steps, seed=None, ac=None, **step_kw):
    sched = cls.from_config({**SD, **cfg})
    if ac is not None:  # a float64 schedule instead of diffusers' float32 one
        sched.alphas_cumprod = ac.clone()
        sched.final_alpha_cumprod = ac[0].clone()
    sched.set_timesteps(steps)
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    x = Z * sched.init_noise_sigma
    for t in sched.timesteps:
        out = NET(sched.scale_model_input(x, t), torch.full((len(Z),), float(t), dtype=F64))
        x = sched.step(out, t, x, **({"generator": gen} if gen else {}), **step_kw).prev_sample
    return x


def run_ours(name, steps, seed=None, noise_dtype=F64, prediction="eps", quantize=False, **opts):
    spec = samplers.resolve_sampler(name)
    denoiser = Denoiser(NET, AC, prediction, quantize=quantize)
    sigmas = spec.sigmas(denoiser.sigmas, steps)
    noise_sampler = None
    if seed is not None:  # diffusers' draws: one CPU generator, one randn per step, same dtype
        gen = torch.Generator().manual_seed(seed)
        noise_sampler = lambda x: torch.randn(x.shape, generator=gen, dtype=noise_dtype).to(x.dtype)
    x = spec.fn(lambda x, s: denoiser(x, s, {}), Z * spec.init_scale(sigmas), sigmas,
                noise_sampler=noise_sampler, **{**spec.options, **opts})
    return samplers.to_vp(x, sigmas[-1])


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# (label, our name, our options, diffusers class, its config, its step kwargs)
DETERMINISTIC = [
    ("euler", "euler", {}, EulerDiscreteScheduler, {}, {}),
    ("euler_karras", "euler_karras", {}, EulerDiscreteScheduler, {"use_karras_sigmas": True}, {}),
    ("euler_exponential", "euler_exponential", {}, EulerDiscreteScheduler, {"use_exponential_sigmas": True}, {}),
    ("heun", "heun", {}, HeunDiscreteScheduler, {}, {}),
    ("heun_karras", "heun_karras", {}, HeunDiscreteScheduler, {"use_karras_sigmas": True}, {}),
    ("ddim (eta=0)", "ddim", {}, DDIMScheduler, {}, {}),
    ("dpmpp_2m", "dpmpp_2m", {}, DPMSolverMultistepScheduler, {}, {}),
    # diffusers rounds the network's timestep under Karras sigmas: Denoiser(quantize=True)
    ("dpmpp_2m_karras (quantize)", "dpmpp_2m_karras", {"quantize": True}, DPMSolverMultistepScheduler,
     {"use_karras_sigmas": True}, {}),
    ("unipc (order 2)", "unipc", {}, UniPCMultistepScheduler, {}, {}),
    ("unipc (order 3)", "unipc", {"order": 3}, UniPCMultistepScheduler, {"solver_order": 3}, {}),
    ("unipc_karras (quantize)", "unipc_karras", {"quantize": True}, UniPCMultistepScheduler,
     {"use_karras_sigmas": True}, {}),
]
STOCHASTIC = [  # same noise: ours draws through noise_sampler exactly what diffusers draws
    ("euler_a (same noise)", "euler_a", {"seed": 7}, EulerAncestralDiscreteScheduler, {}, {}),
    ("ddpm (same noise)", "ddpm", {"seed": 7}, DDPMScheduler, {}, {}),
    ("ddim eta=0.5 (same noise)", "ddim", {"seed": 7, "eta": 0.5}, DDIMScheduler, {}, {"eta": 0.5}),
    ("ddim eta=1 (same noise)", "ddim", {"seed": 7, "eta": 1.0}, DDIMScheduler, {}, {"eta": 1.0}),
    ("dpmpp_2m_sde (same noise)", "dpmpp_2m_sde", {"seed": 7, "noise_dtype": torch.float32},
     DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"}, {}),
    ("dpmpp_2m_sde_karras (same noise)", "dpmpp_2m_sde_karras",
     {"seed": 7, "noise_dtype": torch.float32, "quantize": True},
     DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}, {}),
]


def parity(case, steps):
    label, name, ours_kw, cls, cfg, step_kw = case
    return rel(run_ours(name, steps, **ours_kw), run_diffusers(cls, cfg, steps, seed=ours_kw.get("seed"), **step_kw))


@pytest.mark.parametrize("steps", [10, 20])
@pytest.mark.parametrize("case", DETERMINISTIC + STOCHASTIC, ids=lambda c: c[0])
def test_matches_diffusers(case, steps):
    assert parity(case, steps) <= 1e-5


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("name,cls", [("euler", EulerDiscreteScheduler), ("ddim", DDIMScheduler),
                                      ("dpmpp_2m", DPMSolverMultistepScheduler),
                                      ("unipc", UniPCMultistepScheduler)])
def test_v_prediction_matches_diffusers(name, cls, prediction):
    ours = run_ours(name, 12, prediction=prediction)
    assert rel(ours, run_diffusers(cls, {"prediction_type": PRED[prediction]}, 12)) <= 1e-5


@pytest.mark.parametrize("name,cls,kw", [("ddim", DDIMScheduler, {}), ("ddim", DDIMScheduler, {"eta": 0.7}),
                                         ("ddpm", DDPMScheduler, {})])
def test_ddim_ddpm_exact_with_float64_schedule(name, cls, kw):
    # diffusers' DDIM/DDPM maths is float64 here; only its float32 alphas_cumprod differed.
    # DDPM: diffusers clamps the last step's zero variance to 1e-20, adding 1e-10 * z (~7e-12 rel).
    seed = 3 if kw or name == "ddpm" else None
    ours = run_ours(name, 15, seed=seed, **kw)
    tol = 1e-10 if name == "ddpm" else 1e-12
    assert rel(ours, run_diffusers(cls, {}, 15, seed=seed, ac=AC, **kw)) <= tol


def test_ddim_identities():
    """In VE space DDIM(eta=0) is Euler, and DDIM(eta=1) = Euler ancestral = DDPM posterior."""
    sig = S.sampling_sigmas(TRAIN, 15, "leading", final_sigma="min")
    d = Denoiser(NET, AC)
    den = lambda x, s: d(x, s)
    x = Z * sig[0].item()
    assert rel(samplers.sample_ddim(den, x, sig), samplers.sample_euler(den, x, sig)) < 1e-12

    def noise():
        g = torch.Generator().manual_seed(11)
        return lambda x: torch.randn(x.shape, generator=g, dtype=x.dtype)
    sig0 = S.sampling_sigmas(TRAIN, 15, "leading")
    a = samplers.sample_ddim(den, x, sig0, eta=1.0, noise_sampler=noise())
    b = samplers.sample_euler_ancestral(den, x, sig0, noise_sampler=noise())
    c = samplers.sample_ddpm(den, x, sig0, noise_sampler=noise())
    assert rel(a, b) < 1e-12 and rel(c, b) < 1e-12


@pytest.mark.parametrize("name", list(samplers.SAMPLERS))
def test_gaussian_data_is_recovered(name):
    """With the exact denoiser of N(mu, s^2) data, E[x0 | x] = mu + s^2/(s^2 + sigma^2)(x - mu),
    each sampler at 100 steps, started from the exact marginal, must end near the data's law.

    Tolerances: mean within 0.05 (4.5 standard errors for 8192 draws); std within 2% for the
    deterministic samplers (measured <= 1.6%) and 6% for the noise-injecting ones, whose
    first-order ancestral steps converge slowly (measured 4.6-5.1% low at 100 steps).
    """
    mu, s = 0.5, 1.0
    spec = samplers.SAMPLERS[name]
    sig = spec.sigmas(TRAIN, 100)
    g = torch.Generator().manual_seed(0)
    x = mu + math.sqrt(s**2 + sig[0].item() ** 2) * torch.randn(8192, 1, generator=g, dtype=F64)
    exact = lambda x, sigma: mu + s**2 / (s**2 + sigma.reshape(-1, 1) ** 2) * (x - mu)
    out = spec.fn(exact, x, sig, noise_sampler=lambda x: torch.randn(x.shape, generator=g, dtype=x.dtype),
                  **spec.options)
    target_std = math.sqrt(s**2 + sig[-1].item() ** 2)  # DDIM stops at sigma_min, not 0
    stochastic = spec.fn in (samplers.sample_euler_ancestral, samplers.sample_ddpm, samplers.sample_dpmpp_2m_sde)
    assert abs(out.mean().item() - mu) < 0.05
    assert abs(out.std().item() / target_std - 1) < (0.06 if stochastic else 0.02)


@pytest.mark.parametrize("name", list(samplers.SAMPLERS))
def test_every_sampler_runs_and_calls_back_once_per_step(name):
    spec = samplers.resolve_sampler(name)
    d = Denoiser(NET, AC)
    sig = spec.sigmas(TRAIN, 6)
    seen, calls = [], []

    def den(x, sigma):
        calls.append(sigma)
        assert sigma.shape == (3,) and sigma.dtype == torch.float32
        return d(x.double(), sigma.double()).float()

    x = torch.randn(3, 4, 4, 4) * spec.init_scale(sig)
    out = spec.fn(den, x, sig, callback=lambda i, s, x, x0: seen.append((i, float(s))), **spec.options)
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert seen == [(i, float(sig[i])) for i in range(6)]
    assert len(calls) == (11 if spec.fn is samplers.sample_heun else 6)  # Heun: 2n - 1 evaluations


def test_callback_may_interrupt():
    class Stop(Exception):
        pass

    calls = []

    def cb(i, s, x, x0):
        if i == 2:
            raise Stop

    with pytest.raises(Stop):
        samplers.sample_dpmpp_2m(lambda x, s: calls.append(1) or x * 0, torch.ones(1, 2),
                                 S.sampling_sigmas(TRAIN, 10, "karras"), callback=cb)
    assert len(calls) == 3


def test_registry_names_and_aliases():
    names = list(samplers.SAMPLERS)
    for required in ["euler", "euler_a", "heun", "ddim", "ddpm", "dpmpp_2m", "dpmpp_2m_sde", "unipc",
                     "dpmpp_2m_karras", "dpmpp_2m_sde_karras", "euler_karras", "heun_karras", "euler_a_karras"]:
        assert required in names
    assert samplers.resolve_sampler("Euler a") is samplers.SAMPLERS["euler_a"]
    assert samplers.resolve_sampler("dpm++ 2m karras").name == "dpmpp_2m_karras"
    assert samplers.resolve_sampler("  DPM++ 2M SDE Karras ").name == "dpmpp_2m_sde_karras"
    assert samplers.resolve_sampler("EULER_A").name == "euler_a"
    spec = samplers.resolve_sampler("DDIM")
    assert (spec.spacing, spec.final_sigma, spec.init, dict(spec.options)) == ("leading", "min", "vp", {"eta": 0.0})
    with pytest.raises(AttributeError):
        spec.spacing = "karras"  # frozen
    with pytest.raises(TypeError):
        spec.options["eta"] = 1.0  # read-only


def test_unknown_sampler_lists_the_names():
    with pytest.raises(ValueError) as err:
        samplers.resolve_sampler("foo")
    msg = str(err.value)
    assert msg.startswith("unknown sampler 'foo'; choose one of: euler, ")
    assert all(n in msg for n in list(samplers.SAMPLERS))


def test_to_vp():
    x = torch.ones(2)
    assert torch.equal(samplers.to_vp(x, torch.tensor(0.0)), x)
    assert samplers.to_vp(x, 3.0)[0].item() == pytest.approx(1 / math.sqrt(10))


if __name__ == "__main__":  # print the parity table quoted in the module docstring
    print(f"{'sampler':34s} {'10 steps':>9s} {'20 steps':>9s}")
    for case in DETERMINISTIC + STOCHASTIC:
        print(f"{case[0]:34s} {parity(case, 10):9.1e} {parity(case, 20):9.1e}")
