"""Schedules against diffusers' schedulers (the reference) and pinned golden numbers.

diffusers builds betas and alphas_cumprod in float32, ours are float64. Where a test is about
*spacing logic* we give the diffusers scheduler our float64 alphas_cumprod first, so the only
difference left is diffusers' final cast of its sigmas to float32 (rtol 1e-6); otherwise the
tolerance is float32's, as stated per test.
"""

import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

from noisecraft import schedules as S

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)
AC = S.alphas_cumprod(S.betas("scaled_linear"))
TRAIN = S.sigmas_from_alphas_cumprod(AC)
STEPS = [2, 3, 7, 10, 20, 25, 30, 48, 50, 61, 100, 150]
# steps=1 is left out of the Euler comparisons: diffusers' linspace(0, T-1, 1) is t = 0, a
# one-step "sampler" that starts at sigma_min; we start at sigma_max (test_one_step_starts_at_max)


def _diffusers_sigmas(cls, steps, **cfg):
    sched = cls(**{**SD, **cfg})
    sched.alphas_cumprod = AC.clone()  # float64: isolate the spacing logic from float32 rounding
    sched.set_timesteps(steps)
    return sched.sigmas.double(), sched.timesteps.double()


@pytest.mark.parametrize("kind,dkind,kw", [
    ("linear", "linear", dict(beta_start=1e-4, beta_end=0.02)),
    ("scaled_linear", "scaled_linear", {}),
    ("cosine", "squaredcos_cap_v2", {}),
])
def test_betas_match_diffusers(kind, dkind, kw):
    ours = S.betas(kind, **kw)
    assert ours.dtype == torch.float64 and ours.shape == (1000,)
    ref = DDPMScheduler(beta_schedule=dkind, **{"beta_start": 0.00085, "beta_end": 0.012, **kw}).betas
    # diffusers' linspace runs in float32: equal up to float32 rounding (rtol 3e-7)
    torch.testing.assert_close(ours.float(), ref, rtol=3e-7, atol=0)


def test_cosine_alias_and_cap():
    b = S.betas("squaredcos_cap_v2")
    assert torch.equal(b, S.betas("cosine")) and b.max().item() == 0.999


def test_published_numbers_never_change():
    # Stable Diffusion's schedule (scaled_linear 0.00085..0.012, 1000 steps), float64 golden values
    assert TRAIN[0].item() == pytest.approx(0.029167158152, abs=1e-12)
    assert TRAIN[-1].item() == pytest.approx(14.614641229334, abs=1e-12)
    assert AC[499].item() == pytest.approx(0.277669650456, abs=1e-12)
    ref = EulerDiscreteScheduler(**SD).sigmas.flip(0)[1:].double()  # diffusers' float32 schedule
    torch.testing.assert_close(TRAIN, ref, rtol=3e-5, atol=0)  # float32 cumprod: 1.3e-5 at t=0


def test_sigma_alpha_round_trip():
    torch.testing.assert_close(S.alphas_cumprod_from_sigmas(TRAIN), AC, rtol=1e-14, atol=0)


def test_t_sigma_round_trip():
    t = torch.arange(1000, dtype=torch.float64)
    assert torch.equal(S.sigma_to_t(TRAIN, TRAIN), t)  # integer timesteps come back exactly
    assert torch.equal(S.t_to_sigma(t, TRAIN), TRAIN)
    frac = torch.tensor([0.25, 17.5, 500.125, 998.9])
    torch.testing.assert_close(S.sigma_to_t(S.t_to_sigma(frac, TRAIN), TRAIN), frac.double(), rtol=0, atol=1e-9)
    # log-sigma interpolation: halfway in t is the geometric mean of the neighbours
    assert S.t_to_sigma(17.5, TRAIN).item() == pytest.approx(math.sqrt(TRAIN[17] * TRAIN[18]), rel=1e-14)
    assert S.sigma_to_t(0.0, TRAIN).item() == 0 and S.sigma_to_t(100.0, TRAIN).item() == 999


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("spacing,cfg", [
    ("leading", dict(timestep_spacing="leading", steps_offset=1)),
    ("trailing", dict(timestep_spacing="trailing")),
    ("karras", dict(use_karras_sigmas=True)),
    ("exponential", dict(use_exponential_sigmas=True)),
])
def test_spacing_matches_diffusers_euler(spacing, cfg, steps):
    ref, ref_t = _diffusers_sigmas(EulerDiscreteScheduler, steps, **cfg)
    if spacing == "trailing" and len(ref) != steps + 1:
        # diffusers' float np.arange yields one extra timestep for some counts (e.g. 61); we don't
        assert len(ref) == steps + 2 and steps == 61
        ref, ref_t = torch.cat([ref[:steps], ref[-1:]]), ref_t[:steps]
    ours = S.sampling_sigmas(TRAIN, steps, spacing)
    assert ours.dtype == torch.float64 and ours.shape == (steps + 1,) and ours[-1] == 0
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(S.sigma_to_t(ours[:-1], TRAIN), ref_t, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("steps", STEPS)
def test_linspace_matches_diffusers_euler(steps):
    ref, ref_t = _diffusers_sigmas(EulerDiscreteScheduler, steps)
    ours = S.sampling_sigmas(TRAIN, steps, "linspace")
    assert torch.equal(ours, S.sampling_sigmas(TRAIN, steps, "uniform"))
    # Same timesteps. At fractional t diffusers interpolates sigma linearly, we (like k-diffusion)
    # log-linearly, so the network sees exactly diffusers' t while sigma differs: < 1e-4 relative
    # above t = 50, up to 5e-4 at 150 steps near t = 7 where sigma changes fastest.
    torch.testing.assert_close(S.sigma_to_t(ours[:-1], TRAIN), ref_t, rtol=0, atol=1e-4)
    integer_t = 999 % (steps - 1) == 0
    torch.testing.assert_close(ours, ref, rtol=1e-6 if integer_t else 1e-3, atol=0)
    high = S.sigma_to_t(ours[:-1], TRAIN) > 50
    torch.testing.assert_close(ours[:-1][high], ref[:-1][high], rtol=1e-4, atol=0)


@pytest.mark.parametrize("spacing", ["linspace", "trailing", "karras", "exponential", "dpmsolver"])
def test_one_step_starts_at_max(spacing):
    # ("leading" keeps its definition, t = 1 for one step, as diffusers and SD's DDIM do)
    s = S.sampling_sigmas(TRAIN, 1, spacing)
    assert s[-1] == 0 and s[0] > 9  # a single step must start from noise, not from sigma_min


@pytest.mark.parametrize("steps", [1] + STEPS)
def test_dpmsolver_spacing_matches_diffusers_dpmsolver(steps):
    ref, ref_t = _diffusers_sigmas(DPMSolverMultistepScheduler, steps)
    ours = S.sampling_sigmas(TRAIN, steps, "dpmsolver")
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=0)
    assert torch.equal(S.sigma_to_t(ours[:-1], TRAIN), ref_t)


@pytest.mark.parametrize("steps", [1, 10, 20, 50])
def test_leading_with_final_min_is_sd_ddim(steps):
    sched = DDIMScheduler(**SD, steps_offset=1, set_alpha_to_one=False, clip_sample=False)
    sched.set_timesteps(steps)
    t = sched.timesteps
    ours = S.sampling_sigmas(TRAIN, steps, "leading", final_sigma="min")
    expected = torch.cat([TRAIN[t], TRAIN[:1]])  # DDIM's last step goes to alphas_cumprod[0]
    assert torch.equal(ours, expected)
    assert torch.equal(S.sigma_to_t(ours[:-1], TRAIN), t.double())


def test_karras_endpoints_and_rho():
    s = S.sampling_sigmas(TRAIN, 5, "karras")
    assert s[0].item() == pytest.approx(TRAIN[-1].item(), rel=1e-14)
    assert s[-2].item() == pytest.approx(TRAIN[0].item(), rel=1e-14)
    inv = s[:-1] ** (1 / 7)  # eq. 5: evenly spaced in sigma^(1/rho)
    torch.testing.assert_close(inv.diff(), inv.diff()[:1].expand(4), rtol=1e-12, atol=0)


@pytest.mark.parametrize("spacing", S.SPACINGS)
def test_every_spacing_descends(spacing):
    s = S.sampling_sigmas(TRAIN, 12, spacing)
    assert (s.diff() < 0).all() and s[-1] == 0


def test_errors_are_clear_sentences():
    with pytest.raises(ValueError, match="unknown step spacing 'nope'; choose one of: linspace, uniform, leading"):
        S.sampling_sigmas(TRAIN, 10, "nope")
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="steps must be a positive whole number"):
            S.sampling_sigmas(TRAIN, bad, "karras")
    with pytest.raises(ValueError, match="leading spacing needs steps <= 1000"):
        S.sampling_sigmas(TRAIN, 1001, "leading")
    with pytest.raises(ValueError, match="unknown beta schedule 'quadratic'; choose one of: linear, scaled_linear, cosine"):
        S.betas("quadratic")
    with pytest.raises(ValueError, match="final_sigma"):
        S.sampling_sigmas(TRAIN, 10, "karras", final_sigma="one")


def test_accepts_numpy():
    assert torch.equal(S.sigmas_from_alphas_cumprod(AC.numpy()), TRAIN)
    assert torch.equal(S.sampling_sigmas(TRAIN.numpy(), 10, "karras"), S.sampling_sigmas(TRAIN, 10, "karras"))
