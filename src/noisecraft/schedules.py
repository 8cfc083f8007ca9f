"""Noise schedules: betas, alphas_cumprod, sigmas and sampling step spacings.

Pure functions, float64 throughout. A published schedule's numbers never change.

Convention (k-diffusion's VE form of a discrete DDPM): x = x0 + sigma * noise, where the
sigma of training timestep t is sqrt((1 - abar_t) / abar_t). The VP sample the network sees
is x_t = x / sqrt(sigma^2 + 1). `train_sigmas` below is the ascending tensor of the T
training sigmas (index = timestep).

Timesteps <-> sigmas use log-sigma linear interpolation (k-diffusion's DiscreteSchedule), so
`sigma_to_t(t_to_sigma(t)) == t` exactly: the network always sees the timestep its sigma
came from.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from .errors import UserError

BETA_KINDS = ("linear", "scaled_linear", "cosine")
_BETA_ALIASES = {"squaredcos_cap_v2": "cosine"}  # diffusers' name for the same schedule

SPACINGS = ("linspace", "uniform", "leading", "trailing", "karras", "exponential", "dpmsolver")
"""Step spacings accepted by `sampling_sigmas`.

- linspace (alias uniform): t = linspace(T-1, 0, steps), sigma by log-sigma interpolation
  (k-diffusion get_sigmas; diffusers Euler/Heun timestep_spacing="linspace").
- leading: t = arange(steps) * (T // steps) + 1, reversed (diffusers "leading" with
  steps_offset=1, Stable Diffusion's scheduler config; DDIM/DDPM default).
- trailing: t = round(T - i * T / steps) - 1 (Lin et al. 2023, Table 2).
- karras: Karras et al. 2022 eq. 5, rho = 7, between the schedule's sigma_min and sigma_max.
- exponential: sigmas evenly spaced in log sigma between sigma_max and sigma_min.
- dpmsolver: t = round(linspace(0, T-1, steps+1))[::-1][:-1], the integer grid diffusers'
  DPMSolverMultistep and UniPCMultistep schedulers call "linspace" (it stops at t ~ T/steps,
  not at t = 0).
"""

FINAL_SIGMAS = ("zero", "min")


def betas(kind: str, num_train_timesteps: int = 1000, beta_start: float = 0.00085,
          beta_end: float = 0.012) -> torch.Tensor:
    """The per-step betas of a discrete DDPM schedule, float64.

    linear: Ho et al. 2020. scaled_linear: Stable Diffusion's (linspace of sqrt(beta), squared).
    cosine: Nichol & Dhariwal 2021 eq. 17, abar(t) = cos^2((t/T + s)/(1 + s) * pi/2), s = 0.008,
    betas capped at 0.999 (diffusers' squaredcos_cap_v2; beta_start/beta_end are unused).
    """
    name = _BETA_ALIASES.get(kind, kind)
    T = int(num_train_timesteps)
    if T <= 0:
        raise UserError(f"num_train_timesteps must be positive, got {num_train_timesteps}.")
    if name == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    if name == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
    if name == "cosine":
        def abar(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
        return torch.tensor([min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)],
                            dtype=torch.float64)
    raise UserError(f"unknown beta schedule {kind!r}; choose one of: {', '.join(BETA_KINDS)}.")


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """abar_t = prod_{s<=t} (1 - beta_s), float64."""
    return torch.cumprod(1 - torch.as_tensor(betas, dtype=torch.float64), dim=0)


def sigmas_from_alphas_cumprod(ac: torch.Tensor) -> torch.Tensor:
    """sigma_t = sqrt((1 - abar_t) / abar_t), float64."""
    ac = torch.as_tensor(ac, dtype=torch.float64)
    return ((1 - ac) / ac).sqrt()


def alphas_cumprod_from_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """abar = 1 / (1 + sigma^2), float64 (inverse of `sigmas_from_alphas_cumprod`)."""
    s = torch.as_tensor(sigmas, dtype=torch.float64)
    return 1 / (1 + s**2)


def t_to_sigma(t, train_sigmas: torch.Tensor) -> torch.Tensor:
    """Sigma at (possibly fractional) timestep t: linear interpolation of log sigma, float64.

    t is clamped to [0, T-1].
    """
    train = torch.as_tensor(train_sigmas, dtype=torch.float64)
    t = torch.as_tensor(t, dtype=torch.float64, device=train.device).clamp(0, len(train) - 1)
    low = t.floor().long()
    high = t.ceil().long()
    w = t - low
    sigma = ((1 - w) * train[low].log() + w * train[high].log()).exp()
    return torch.where(w == 0, train[low], sigma)  # on the grid: the training sigma itself


def sigma_to_t(sigma, train_sigmas: torch.Tensor) -> torch.Tensor:
    """Fractional timestep of sigma: inverse of `t_to_sigma`, float64, clamped to [0, T-1]."""
    log_sigmas = torch.as_tensor(train_sigmas, dtype=torch.float64).log()
    sigma = torch.as_tensor(sigma, dtype=torch.float64, device=log_sigmas.device)
    log_sigma = sigma.clamp(min=1e-10).log()
    low = (torch.searchsorted(log_sigmas, log_sigma.reshape(-1), right=True) - 1)
    low = low.clamp(0, len(log_sigmas) - 2).reshape(sigma.shape)
    lo, hi = log_sigmas[low], log_sigmas[low + 1]
    w = ((log_sigma - lo) / (hi - lo)).clamp(0, 1)
    return low.to(torch.float64) + w


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022 eq. 5: (max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho, descending."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def sampling_sigmas(train_sigmas: torch.Tensor, steps: int, spacing: str = "linspace", *,
                    final_sigma: str = "zero") -> torch.Tensor:
    """The `steps + 1` descending sigmas a sampler walks, float64.

    The last element is 0 (final_sigma="zero"), or the schedule's smallest training sigma
    (final_sigma="min": diffusers' DDIMScheduler with set_alpha_to_one=False, as Stable
    Diffusion configures it, ends at abar_0 instead of at the clean image).
    See `SPACINGS` for what each spacing means.
    """
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps <= 0:
        raise UserError(f"steps must be a positive whole number, got {steps!r}.")
    if spacing not in SPACINGS:
        raise UserError(f"unknown step spacing {spacing!r}; choose one of: {', '.join(SPACINGS)}.")
    if final_sigma not in FINAL_SIGMAS:
        raise UserError(f"unknown final_sigma {final_sigma!r}; choose one of: {', '.join(FINAL_SIGMAS)}.")
    train = torch.as_tensor(train_sigmas, dtype=torch.float64).cpu()
    T, steps = len(train), int(steps)
    if spacing in ("leading", "trailing", "dpmsolver") and steps > T:
        raise UserError(f"{spacing} spacing needs steps <= {T} (the training timesteps), got {steps}.")

    if spacing in ("linspace", "uniform"):
        sig = t_to_sigma(torch.linspace(T - 1, 0, steps, dtype=torch.float64), train)
    elif spacing == "leading":
        t = torch.arange(steps - 1, -1, -1, dtype=torch.float64) * (T // steps) + 1
        sig = t_to_sigma(t, train)  # t = T (steps == T) clamps to T-1, as diffusers' np.interp does
    elif spacing == "trailing":
        # numpy's float arange decides the exact .5 ties as diffusers does; it can also yield
        # one extra near-zero entry for some step counts (a diffusers bug), which we drop.
        t = np.round(np.arange(T, 0, -T / steps))[:steps].astype(np.int64) - 1
        sig = train[torch.from_numpy(t)]
    elif spacing == "dpmsolver":
        t = np.round(np.linspace(0, T - 1, steps + 1))[::-1][:-1].astype(np.int64)  # numpy's .5 ties
        sig = train[torch.from_numpy(t.copy())]
    elif spacing == "karras":
        sig = karras_sigmas(train[0].item(), train[-1].item(), steps)
    else:  # exponential
        sig = torch.linspace(math.log(train[-1].item()), math.log(train[0].item()), steps,
                             dtype=torch.float64).exp()
    last = train[:1] if final_sigma == "min" else torch.zeros(1, dtype=torch.float64)
    return torch.cat([sig, last])


# -- flow matching (rectified flow: x = (1 - sigma) x0 + sigma noise, sigma in [0, 1]) --------------------------
def flow_shift(sigmas, shift: float) -> torch.Tensor:
    """Stable Diffusion 3's static shift (Esser et al. 2024, Sec. 5.3.2): ``s sigma / (1 + (s - 1) sigma)``;
    s = 3.0 for SD3/3.5, larger s spends more steps at high noise."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_time_shift(sigmas, mu: float) -> torch.Tensor:
    """FLUX's resolution-dependent shift: ``e^mu / (e^mu + 1/sigma - 1)`` (the static shift with s = e^mu)."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))


def flow_mu(image_tokens: int, base_tokens: int = 256, max_tokens: int = 4096, base_shift: float = 0.5,
            max_shift: float = 1.15) -> float:
    """FLUX's mu, linear in the image's token count: base_shift at base_tokens, max_shift at max_tokens."""
    slope = (max_shift - base_shift) / (max_tokens - base_tokens)
    return image_tokens * slope + base_shift - slope * base_tokens


def flow_sigmas(steps: int, *, shift: float | None = None, mu: float | None = None,
                num_train_timesteps: int = 1000) -> torch.Tensor:
    """The `steps + 1` descending sigmas (last 0) a flow-matching model is sampled at, float64: diffusers'
    ``FlowMatchEulerDiscreteScheduler.set_timesteps`` with a static `shift` (SD3) or a resolution `mu` (FLUX).

    The grid is linear from sigma_max to sigma_min of the training schedule, then shifted: with a static
    shift the training schedule is itself shifted (so its sigma_min is shift(1/T)), with mu it is not."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps <= 0:
        raise UserError(f"steps must be a positive whole number, got {steps!r}.")
    if (shift is None) == (mu is None):
        raise UserError("flow sigmas take a static shift or a resolution mu, one of the two")
    T = num_train_timesteps
    sigma_min = 1 / T if mu is not None else float(flow_shift(1 / T, shift))
    grid = torch.from_numpy(np.linspace(T, sigma_min * T, int(steps))) / T
    sig = flow_time_shift(grid, mu) if mu is not None else flow_shift(grid, shift)
    return torch.cat([sig, torch.zeros(1, dtype=torch.float64)])


def flux_sigmas(steps: int, mu: float | None = None, shift: float = 1.0) -> torch.Tensor:
    """The `steps + 1` descending sigmas (last 0) FLUX.1 and Z-Image are sampled at, float64: diffusers' FluxPipeline
    and ZImagePipeline space them ``linspace(1, 1/steps, steps)``, then shift them with the resolution's `mu` (FLUX.1
    dev) or a static `shift` (Z-Image: 3.0); FLUX.1 schnell, trained without a shift, takes them as they are."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps <= 0:
        raise UserError(f"steps must be a positive whole number, got {steps!r}.")
    grid = torch.from_numpy(np.linspace(1.0, 1 / int(steps), int(steps)))
    sig = flow_time_shift(grid, mu) if mu is not None else flow_shift(grid, shift)
    return torch.cat([sig, torch.zeros(1, dtype=torch.float64)])
