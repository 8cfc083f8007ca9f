"""Wrap a discrete-time VP network as `denoise(x, sigma, cond) -> x0_hat`, plus guidance.

The network is any `net(x_t, t, **cond)` trained DDPM-style (Ho et al. 2020) on
x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, predicting eps, v (Salimans & Ho 2022) or x0.
Samplers work in the VE convention x = x0 + sigma * noise with sigma = sqrt((1-abar)/abar)
(k-diffusion's `DiscreteEpsDDPMDenoiser` / `DiscreteVDDPMDenoiser`), so the wrapper scales
the input by c_in = 1/sqrt(sigma^2 + 1) (that product *is* the VP x_t) and converts the
output to x0. Samplers never look inside a model.
"""

from __future__ import annotations

import torch
from torch import nn

from . import schedules
from .errors import UserError

PREDICTIONS = ("eps", "v", "x0")


def _bcast(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample scalars [B] as [B, 1, 1, ...] in x's dtype and device."""
    return s.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def ve_noised(x0: torch.Tensor, sigma, noise: torch.Tensor) -> torch.Tensor:
    """x0 + sigma * noise: a clean sample at noise level sigma in the variance-exploding form."""
    return x0 + float(sigma) * noise


class SigmaTable:
    """The training sigmas of a denoiser (`_sigmas64`: ascending, float64 on the CPU) and their ends."""

    _sigmas64: torch.Tensor

    @property
    def train_sigmas(self) -> torch.Tensor:
        """The training sigmas, ascending, float64 on the CPU (what `schedules.sampling_sigmas` walks between)."""
        return self._sigmas64

    @property
    def num_train_timesteps(self) -> int:
        return len(self._sigmas64)

    @property
    def sigma_min(self) -> float:
        return self._sigmas64[0].item()

    @property
    def sigma_max(self) -> float:
        return self._sigmas64[-1].item()


class Denoiser(SigmaTable, nn.Module):
    """x0_hat = D(x, sigma) for a discrete VP network `net(x_t, t, **cond)`.

    eps:  x0 = x - sigma * eps
    v:    x0 = c_in^2 x - sigma c_in v      (v = alpha eps - sigma_vp x0, Salimans & Ho 2022)
    x0:   x0 = net output
    with c_in = 1/sqrt(sigma^2 + 1) = alpha, sigma_vp = sigma * alpha.

    The network gets t = `sigma_to_t(sigma)` (fractional where sigma is off the training grid),
    or the nearest integer timestep with `quantize=True` (what diffusers' DPMSolverMultistep and
    UniPC schedulers feed the network under Karras sigmas; k-diffusion's `quantize`).
    Maths runs in x's dtype; the schedule stays a float64 buffer on the module's device, even
    after `.half()` or `.to(dtype)`.
    """

    def __init__(self, net: nn.Module, alphas_cumprod: torch.Tensor, prediction: str = "eps",
                 *, quantize: bool = False):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise UserError(f"unknown prediction type {prediction!r}; choose one of: {', '.join(PREDICTIONS)}.")
        self.net = net
        self.prediction = prediction
        self.quantize = quantize
        self._sigmas64 = schedules.sigmas_from_alphas_cumprod(alphas_cumprod).detach().cpu()
        self.register_buffer("sigmas", self._sigmas64.clone(), persistent=False)

    def _apply(self, fn, recurse=True):
        # Module.to(dtype)/.half() would cast the schedule like any floating buffer: keep it float64
        # on the new device (float32 on Apple's MPS, which has no float64).
        self._buffers.pop("sigmas")
        super()._apply(fn, recurse)
        device = fn(torch.zeros(1)).device
        dtype = torch.float32 if device.type == "mps" else torch.float64
        self.register_buffer("sigmas", self._sigmas64.to(device, dtype), persistent=False)
        return self

    def sigma_to_t(self, sigma) -> torch.Tensor:
        """Training timestep (float64, fractional unless `quantize`) for sigma."""
        t = schedules.sigma_to_t(torch.as_tensor(sigma, dtype=torch.float64, device=self.sigmas.device),
                                self.sigmas)
        return t.round() if self.quantize else t

    def t_to_sigma(self, t) -> torch.Tensor:
        return schedules.t_to_sigma(torch.as_tensor(t, dtype=torch.float64, device=self.sigmas.device), self.sigmas)

    def noised(self, x0: torch.Tensor, sigma, noise: torch.Tensor) -> torch.Tensor:
        """x at sigma in the samplers' VE form: x0 + sigma * noise (`FlowDenoiser.noised` is the flow's)."""
        return ve_noised(x0, sigma, noise)

    def network_output(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict | None):
        """The network's native output for x at sigma, with the scalings (sigma and c_in, broadcast like x)."""
        sigma = torch.as_tensor(sigma, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        s = _bcast(sigma, x)
        c_in = (s**2 + 1) ** -0.5
        t_dtype = torch.promote_types(x.dtype, torch.float32)
        t = self.sigma_to_t(sigma.to(self.sigmas.device, torch.float64)).to(x.device, t_dtype)
        out = self.net(x * c_in, t, **(cond or {}))
        return out.to(x.dtype), s, c_in

    def from_prediction(self, x, s, c_in, out):
        """x0 from the network's native output (s, c_in broadcast like x)."""
        if self.prediction == "eps":
            return x - s * out
        if self.prediction == "v":
            return c_in**2 * x - s * c_in * out
        return out

    def to_prediction(self, x, s, c_in, x0):
        """The network's native output that yields x0 (inverse of `from_prediction`)."""
        if self.prediction == "eps":
            return (x - x0) / s
        if self.prediction == "v":
            return (c_in**2 * x - x0) / (s * c_in)
        return x0

    def forward(self, x: torch.Tensor, sigma, cond: dict | None = None) -> torch.Tensor:
        """x0_hat for x = x0 + sigma * noise; sigma a scalar or [B] tensor; cond -> net(**cond)."""
        out, s, c_in = self.network_output(x, sigma, cond)
        return self.from_prediction(x, s, c_in, out)


class FlowDenoiser(SigmaTable, nn.Module):
    """x0_hat = D(x, sigma) for a flow-matching network `net(x, t, **cond)` that predicts the velocity
    v = noise - x0 along x = (1 - sigma) x0 + sigma noise (rectified flow; Esser et al. 2024, SD3; FLUX).

    x0 = x - sigma v, so the samplers' Euler step x + (sigma' - sigma)(x - x0)/sigma is the flow's own Euler
    step x + (sigma' - sigma) v (diffusers' FlowMatchEulerDiscreteScheduler). The network sees x itself
    (c_in = 1) and t = sigma * num_train_timesteps. Sampling sigmas come from `schedules.flow_sigmas`.
    """

    prediction = "flow"

    def __init__(self, net: nn.Module, num_train_timesteps: int = 1000, shift: float = 1.0):
        super().__init__()
        self.net, self.timesteps, self.shift = net, num_train_timesteps, shift
        grid = torch.arange(1, num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
        self._sigmas64 = schedules.flow_shift(grid, shift)  # ascending, like Denoiser's
        self.register_buffer("sigmas", self._sigmas64.clone().float(), persistent=False)

    def sigma_to_t(self, sigma) -> torch.Tensor:
        return torch.as_tensor(sigma, dtype=torch.float64) * self.timesteps

    def noised(self, x0: torch.Tensor, sigma, noise: torch.Tensor) -> torch.Tensor:
        """x at sigma on the straight path from x0 to noise (img2img's start, inpainting's kept region)."""
        s = float(sigma)
        return (1 - s) * x0 + s * noise

    def network_output(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict | None):
        sigma = torch.as_tensor(sigma, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        s = _bcast(sigma, x)
        t = (sigma.to(torch.float64) * self.timesteps).to(x.device, torch.promote_types(x.dtype, torch.float32))
        out = self.net(x, t, **(cond or {}))
        return out.to(x.dtype), s, torch.ones_like(s)

    def from_prediction(self, x, s, c_in, out):
        return x - s * out

    def to_prediction(self, x, s, c_in, x0):
        return (x - x0) / s

    def forward(self, x: torch.Tensor, sigma, cond: dict | None = None) -> torch.Tensor:
        out, s, c_in = self.network_output(x, sigma, cond)
        return self.from_prediction(x, s, c_in, out)


class CFGDenoiser:
    """Classifier-free guidance (Ho & Salimans 2022) over a `Denoiser`, as `denoise(x, sigma)`.

    x0 = u + scale * (c - u), with cond and uncond in one batched forward ([uncond, cond], each
    cond entry concatenated along the batch). `rescale` is guidance_rescale (Lin et al. 2023,
    "Common Diffusion Noise Schedules and Sample Steps are Flawed", Sec. 3.4, eq. 15-16):
    out = rescale * cfg * std(pos)/std(cfg) + (1 - rescale) * cfg, per sample, computed in the
    network's native prediction space (eps or v), where diffusers applies it.
    With `uncond=None` or `scale == 1` it is the plain conditional denoiser (one pass).
    """

    def __init__(self, denoiser: Denoiser, cond: dict | None, uncond: dict | None = None,
                 scale: float = 1.0, rescale: float = 0.0):
        self.denoiser, self.cond, self.uncond = denoiser, cond or {}, uncond
        self.scale, self.rescale = float(scale), float(rescale)
        if uncond is not None and set(uncond) != set(self.cond):
            raise ValueError(f"cond and uncond need the same keys, got {sorted(self.cond)} and {sorted(uncond)}")

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        if self.uncond is None or self.scale == 1.0:
            return self.denoiser(x, sigma, self.cond)
        sigma = torch.as_tensor(sigma, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        both = {k: torch.cat([self.uncond[k], v]) if torch.is_tensor(v) else v for k, v in self.cond.items()}
        x_in = torch.cat([x, x])
        out, s, c_in = self.denoiser.network_output(x_in, torch.cat([sigma, sigma]), both)
        u, c = out.chunk(2)
        s, c_in = s[: len(x)], c_in[: len(x)]
        guided = u + self.scale * (c - u)  # in native space; affine, so the same as in x0 space
        if self.rescale > 0:
            dims = list(range(1, x.ndim))
            ratio = c.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
            guided = self.rescale * guided * ratio + (1 - self.rescale) * guided
        return self.denoiser.from_prediction(x, s, c_in, guided)


class MaskedDenoiser:
    """Inpainting with an ordinary model: the kept region follows the start image's noisy path.

    Before every network call except the first, x is replaced in the kept region (``keep`` = 1) by
    the start latents noised to the current sigma (`noised`: ``init + sigma * noise``, or the flow's path),
    with the same noise the sampler started from; the pipeline pastes ``init`` into the kept region after the last step.
    Every sampler updates x elementwise from x and x0_hat, so the repainted region evolves exactly as
    in diffusers' inpainting pipeline, which blends after each scheduler step instead.
    """

    def __init__(self, denoise, init: torch.Tensor, noise: torch.Tensor, keep: torch.Tensor, sigma_start: float,
                 noised=None):
        self.denoise, self.init, self.noise, self.keep, self.sigma_start = denoise, init, noise, keep, sigma_start
        self.noised = noised or ve_noised

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        s = float(torch.as_tensor(sigma).reshape(-1)[0])
        if s < self.sigma_start * (1 - 1e-5):  # samplers may pass sigma in float32: not the start sigma
            x = self.keep * self.noised(self.init, s, self.noise) + (1 - self.keep) * x
        return self.denoise(x, sigma)
