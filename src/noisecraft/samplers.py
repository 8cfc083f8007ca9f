"""Samplers: short pure functions with one signature (k-diffusion's `sampling.py` style).

    sample_xxx(denoise, x, sigmas, *, noise_sampler=None, callback=None, **options) -> x

- `denoise(x, sigma) -> x0_hat`, sigma a [B] tensor (float32 or wider).
- x in the VE convention x = x0 + sigma * noise; `sigmas` the descending float64 list from
  `schedules.sampling_sigmas` (or `SamplerSpec.sigmas`), x is at sigmas[0] on entry and at
  sigmas[-1] on return.
- `noise_sampler(x) -> fresh standard normal noise shaped like x` (default torch.randn_like).
- `callback(i, sigma, x, x0)` once per step, before x moves on; it may raise to interrupt.

The whole loop, as a pipeline runs it (`spec = resolve_sampler(name)`):

    sigmas = spec.sigmas(denoiser.sigmas, steps)             # per-sampler spacing / final sigma
    x = noise * spec.init_scale(sigmas)                      # sigmas[0] or sqrt(sigmas[0]^2 + 1)
    x = spec.fn(cfg_denoiser, x, sigmas, noise_sampler=ns, callback=cb, **spec.options)
    latents = to_vp(x, sigmas[-1])                           # x itself when the last sigma is 0

That reproduces diffusers' Stable Diffusion-configured scheduler of the same name to <= 3e-6
relative in float64 (tests/test_samplers.py pins it and prints the table when run as a script).
Exception: under Karras sigmas diffusers' DPMSolverMultistep/UniPC round the timestep fed to the
network; `Denoiser(..., quantize=True)` reproduces that, the default (like k-diffusion/A1111)
feeds the exact fractional t.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

import torch

from . import schedules
from .errors import UserError, shown


def _sigma_in(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sigma as a [B] tensor on x's device, at least float32 (so the timestep stays exact)."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    return torch.full((x.shape[0],), float(sigma), dtype=dtype, device=x.device)


def _noise(noise_sampler, x):
    return torch.randn_like(x) if noise_sampler is None else noise_sampler(x)


def to_vp(x: torch.Tensor, sigma) -> torch.Tensor:
    """x / sqrt(sigma^2 + 1): the VP sample sqrt(abar) x0 + sqrt(1 - abar) noise at sigma.

    diffusers and CompVis return this; it equals x when sigma is 0.
    """
    return x / math.sqrt(float(sigma) ** 2 + 1)


def sample_euler(denoise, x, sigmas, *, noise_sampler=None, callback=None):
    """Euler's method on the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma.

    Karras et al. 2022, Algorithm 2 without churn and without the 2nd-order correction.
    """
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = denoise(x, _sigma_in(sigmas[i], x))
        if callback is not None:
            callback(i, sigmas[i], x, x0)
        x = x + (x - x0) / s * (s_next - s)
    return x


def sample_heun(denoise, x, sigmas, *, noise_sampler=None, callback=None):
    """Heun's 2nd-order method, Karras et al. 2022, Algorithm 2 (S_churn = 0).

    Euler step, then average the slopes at both ends; the last step (to sigma 0) stays Euler.
    """
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = denoise(x, _sigma_in(sigmas[i], x))
        if callback is not None:
            callback(i, sigmas[i], x, x0)
        d = (x - x0) / s
        x_next = x + d * (s_next - s)
        if s_next != 0:
            d_next = (x_next - denoise(x_next, _sigma_in(sigmas[i + 1], x))) / s_next
            x_next = x + (d + d_next) / 2 * (s_next - s)
        x = x_next
    return x


def sample_euler_ancestral(denoise, x, sigmas, *, noise_sampler=None, callback=None, eta=1.0):
    """Euler ancestral (k-diffusion; diffusers' EulerAncestralDiscreteScheduler at eta = 1).

    Split the move to sigma_next into a deterministic Euler step down to sigma_down and fresh
    noise of std sigma_up, with sigma_up^2 = eta^2 sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2
    and sigma_down^2 + sigma_up^2 = sigma_next^2.
    """
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = denoise(x, _sigma_in(sigmas[i], x))
        if callback is not None:
            callback(i, sigmas[i], x, x0)
        s_up = min(s_next, eta * s_next * math.sqrt(max(s**2 - s_next**2, 0.0)) / s)
        s_down = math.sqrt(s_next**2 - s_up**2)
        x = x + (x - x0) / s * (s_down - s)
        if s_next > 0:
            x = x + _noise(noise_sampler, x) * s_up
    return x


def sample_ddim(denoise, x, sigmas, *, noise_sampler=None, callback=None, eta=0.0):
    """DDIM, Song et al. 2021, eq. 12 with the eq. 16 noise level, in sigma form.

    Dividing eq. 12 by sqrt(abar_prev): x_prev = x0 + sqrt(sigma_prev^2 - s_eta^2) eps + s_eta z,
    with eps = (x - x0) / sigma and s_eta = eta * sigma_prev * sqrt(1 - sigma_prev^2 / sigma^2).
    eta = 0 is exactly Euler in this space; eta = 1 is the DDPM posterior.
    """
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = denoise(x, _sigma_in(sigmas[i], x))
        if callback is not None:
            callback(i, sigmas[i], x, x0)
        eps = (x - x0) / s
        s_eta = eta * s_next * math.sqrt(max(1 - s_next**2 / s**2, 0.0))
        x = x0 + math.sqrt(max(s_next**2 - s_eta**2, 0.0)) * eps
        if s_eta > 0:
            x = x + s_eta * _noise(noise_sampler, x)
    return x


def sample_ddpm(denoise, x, sigmas, *, noise_sampler=None, callback=None):
    """DDPM ancestral sampling, Ho et al. 2020: draw from the posterior q(x_prev | x, x0_hat).

    Eq. 6-7 with "fixed_small" variance, divided by sqrt(abar_prev) into sigma form:
    mean = (sigma_prev^2 / sigma^2) x + (1 - sigma_prev^2 / sigma^2) x0,
    var  = sigma_prev^2 (sigma^2 - sigma_prev^2) / sigma^2.
    """
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = denoise(x, _sigma_in(sigmas[i], x))
        if callback is not None:
            callback(i, sigmas[i], x, x0)
        ratio = s_next**2 / s**2
        x = ratio * x + (1 - ratio) * x0
        if s_next > 0:
            x = x + s_next * math.sqrt(1 - ratio) * _noise(noise_sampler, x)
    return x


def sample_dpmpp_2m(denoise, x, sigmas, *, noise_sampler=None, callback=None):
    """DPM-Solver++(2M), Lu et al. 2022, Algorithm 2 (multistep, data prediction).

    With lambda = -log sigma and h = lambda_next - lambda:
    x_next = (sigma_next / sigma) x + (1 - e^-h) D, D = (1 + 1/(2r)) x0 - 1/(2r) x0_prev,
    r = h_prev / h. First step and the step to sigma 0 are first order (D = x0).
    """
    x0_prev, h_prev = None, None
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = denoise(x, _sigma_in(sigmas[i], x))
        if callback is not None:
            callback(i, sigmas[i], x, x0)
        if s_next == 0:
            x = x0
            continue
        h = math.log(s / s_next)
        if x0_prev is None:
            D = x0
        else:
            r = h_prev / h
            D = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_prev
        x = (s_next / s) * x - math.expm1(-h) * D
        x0_prev, h_prev = x0, h
    return x


def sample_dpmpp_2m_sde(denoise, x, sigmas, *, noise_sampler=None, callback=None):
    """SDE-DPM-Solver++(2M), Lu et al. 2022 (DPM-Solver++ paper, SDE variant), midpoint form.

    As diffusers' DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++"): with
    h = lambda_next - lambda, x_next = (sigma_next/sigma) e^-h x + (1 - e^-2h)(x0 + D1/2)
    + sigma_next sqrt(1 - e^-2h) z, D1 = (x0 - x0_prev) / r (0 on the first step),
    r = h_prev / h; the step to sigma 0 returns x0.
    """
    x0_prev, h_prev = None, None
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = denoise(x, _sigma_in(sigmas[i], x))
        if callback is not None:
            callback(i, sigmas[i], x, x0)
        if s_next == 0:
            x = x0
            continue
        h = math.log(s / s_next)
        one_minus = -math.expm1(-2 * h)  # 1 - e^-2h
        D = x0 if x0_prev is None else x0 + 0.5 * (x0 - x0_prev) * (h / h_prev)
        x = (s_next / s) * math.exp(-h) * x + one_minus * D
        x = x + s_next * math.sqrt(one_minus) * _noise(noise_sampler, x)
        x0_prev, h_prev = x0, h
    return x


def _unipc_rhos(h: float, rks: list[float], corrector: bool) -> list[float]:
    """UniPC coefficients (Zhao et al. 2023, Theorem 3.1 / Algorithms 2-3, B(h) = e^h - 1 "bh2").

    Solve R a = g / B(h) with R[i][k] = rks[k]^i and g_i = i! h phi_{i+1}(h) evaluated at
    hh = -h (data prediction); the predictor drops the last point (r = 1).
    """
    hh = -h
    B = math.expm1(hh)
    p = len(rks)
    if p == 1 and corrector:  # the 1st-order corrector uses the trapezoid weight, as the paper's code
        return [0.5]
    if p == 2 and not corrector:  # and the 2nd-order predictor its simplified form
        return [0.5]
    h_phi = math.expm1(hh) / hh - 1  # hh * phi_2(hh)
    g, fact = [], 1
    for i in range(1, p + 1):
        g.append(h_phi * fact / B)
        fact *= i + 1
        h_phi = h_phi / hh - 1 / fact  # hh * phi_{i+2}(hh)
    R = torch.tensor([[r**i for r in rks] for i in range(p)], dtype=torch.float64)
    b = torch.tensor(g, dtype=torch.float64)
    if not corrector:
        R, b = R[:-1, :-1], b[:-1]
    return torch.linalg.solve(R, b).tolist()


def sample_unipc(denoise, x, sigmas, *, noise_sampler=None, callback=None, order=2):
    """UniPC, Zhao et al. 2023: UniP-p predictor + UniC corrector, B(h) = e^h - 1 ("bh2").

    Data prediction in lambda = -log sigma. Each new x0 first corrects the point it was
    evaluated at (UniC, using the previous step's order, no extra network call), then drives
    the next predictor step (UniP of order min(order, steps left, steps taken + 1)); diffusers'
    UniPCMultistepScheduler defaults (solver_order=2, lower_order_final, corrector on every
    step after the first).
    """
    n = len(sigmas) - 1
    lams = [-math.log(float(s)) if float(s) > 0 else math.inf for s in sigmas]
    hist: list[torch.Tensor] = []  # x0 at sigmas[i], sigmas[i-1], ... (newest first)
    x_last, p_last = None, 0
    for i in range(n):
        x0 = denoise(x, _sigma_in(sigmas[i], x))
        if x_last is not None:  # UniC: correct x at sigmas[i] from x_last at sigmas[i-1]
            h = lams[i] - lams[i - 1]
            rks = [(lams[i - 1 - k] - lams[i - 1]) / h for k in range(1, p_last)] + [1.0]
            rhos = _unipc_rhos(h, rks, corrector=True)
            m0 = hist[0]
            res = sum(rho * (hist[k] - m0) / r for k, (rho, r) in enumerate(zip(rhos[:-1], rks), 1))
            res = res + rhos[-1] * (x0 - m0)
            x = math.exp(-h) * x_last - math.expm1(-h) * (m0 + res)
        if callback is not None:
            callback(i, sigmas[i], x, x0)
        hist = [x0] + hist[: order - 1]
        p = min(order, n - i, i + 1)
        x_last, p_last = x, p
        if float(sigmas[i + 1]) == 0:  # first-order step to sigma 0 lands on x0
            x = x0
            continue
        h = lams[i + 1] - lams[i]  # UniP-p: predict x at sigmas[i+1]
        rks = [(lams[i - k] - lams[i]) / h for k in range(1, p)] + [1.0]
        res = 0
        if p > 1:
            rhos = _unipc_rhos(h, rks, corrector=False)
            res = sum(rho * (hist[k] - x0) / r for k, (rho, r) in enumerate(zip(rhos, rks), 1))
        x = math.exp(-h) * x - math.expm1(-h) * (x0 + res)
    return x


# ----------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class SamplerSpec:
    """A named sampler: its function, step spacing, options and how to start and finish.

    final_sigma: "zero", or "min" where diffusers stops at the smallest training sigma
    (DDIM with set_alpha_to_one=False). init: "sigma" starts from noise * sigmas[0]
    (k-diffusion; diffusers' Euler/Heun family with linspace/karras/exponential spacing);
    "vp" from noise * sqrt(sigmas[0]^2 + 1), i.e. a unit-variance VP sample (diffusers'
    DDIM, DDPM, DPM-Solver, UniPC, and the Euler family with leading spacing).
    """

    name: str
    fn: Callable
    spacing: str
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    a1111_name: str = ""
    final_sigma: str = "zero"
    init: str = "sigma"

    def sigmas(self, train_sigmas: torch.Tensor, steps: int) -> torch.Tensor:
        """The float64 sigma list this sampler walks for `steps` network steps."""
        return schedules.sampling_sigmas(train_sigmas, steps, self.spacing, final_sigma=self.final_sigma)

    def init_scale(self, sigmas: torch.Tensor) -> float:
        """What to multiply standard normal noise by to get the starting x."""
        s0 = float(sigmas[0])
        return math.sqrt(s0**2 + 1) if self.init == "vp" else s0


def _spec(name, fn, spacing, a1111, options=None, **kw):
    return SamplerSpec(name, fn, spacing, MappingProxyType(dict(options or {})), a1111, **kw)


_SPECS = [
    _spec("euler", sample_euler, "linspace", "Euler"),
    _spec("euler_karras", sample_euler, "karras", "Euler Karras"),
    _spec("euler_exponential", sample_euler, "exponential", "Euler Exponential"),
    _spec("euler_a", sample_euler_ancestral, "linspace", "Euler a"),
    _spec("euler_a_karras", sample_euler_ancestral, "karras", "Euler a Karras"),
    _spec("heun", sample_heun, "linspace", "Heun"),
    _spec("heun_karras", sample_heun, "karras", "Heun Karras"),
    _spec("ddim", sample_ddim, "leading", "DDIM", {"eta": 0.0}, final_sigma="min", init="vp"),
    _spec("ddpm", sample_ddpm, "leading", "DDPM", init="vp"),
    _spec("dpmpp_2m", sample_dpmpp_2m, "dpmsolver", "DPM++ 2M", init="vp"),
    _spec("dpmpp_2m_karras", sample_dpmpp_2m, "karras", "DPM++ 2M Karras", init="vp"),
    _spec("dpmpp_2m_exponential", sample_dpmpp_2m, "exponential", "DPM++ 2M Exponential", init="vp"),
    _spec("dpmpp_2m_sde", sample_dpmpp_2m_sde, "dpmsolver", "DPM++ 2M SDE", init="vp"),
    _spec("dpmpp_2m_sde_karras", sample_dpmpp_2m_sde, "karras", "DPM++ 2M SDE Karras", init="vp"),
    _spec("dpmpp_2m_sde_exponential", sample_dpmpp_2m_sde, "exponential", "DPM++ 2M SDE Exponential",
          init="vp"),
    _spec("unipc", sample_unipc, "dpmsolver", "UniPC", {"order": 2}, init="vp"),
    _spec("unipc_karras", sample_unipc, "karras", "UniPC Karras", {"order": 2}, init="vp"),
]

SAMPLERS: Mapping[str, SamplerSpec] = MappingProxyType({s.name: s for s in _SPECS})
_ALIASES = {**{s.name: s for s in _SPECS}, **{s.a1111_name.lower(): s for s in _SPECS}}
SCHEDULERS = {"automatic": "", "karras": "_karras", "exponential": "_exponential"}
"""A1111's separate scheduler choice (since v1.9): the step spacing, as a suffix of the sampler name."""


def resolve_sampler(name: str, scheduler: str | None = None) -> SamplerSpec:
    """The spec for a canonical name ("dpmpp_2m_karras") or an A1111 name ("DPM++ 2M Karras"),
    case-insensitively; `scheduler` (automatic, karras, exponential) picks that step spacing of the
    same sampler ("DPM++ 2M" + "karras" is dpmpp_2m_karras). Errors name the field at fault."""
    spec = _ALIASES.get(str(name).strip().lower())
    if spec is None:
        raise UserError(f"unknown sampler {shown(name)}; choose one of: {', '.join(SAMPLERS)}", field="sampler")
    key = str(scheduler).strip().lower() if scheduler else "automatic"
    if key not in SCHEDULERS:
        raise UserError(f"unknown scheduler {shown(scheduler)}; choose one of: {', '.join(SCHEDULERS)}", field="scheduler")
    if SCHEDULERS[key] and not spec.name.endswith(("_karras", "_exponential")):
        variant = SAMPLERS.get(spec.name + SCHEDULERS[key])
        if variant is None:
            raise UserError(f"the {spec.a1111_name} sampler has no {key.capitalize()} schedule here; "
                            "use scheduler 'automatic' or another sampler", field="scheduler")
        spec = variant
    return spec
