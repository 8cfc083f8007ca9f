"""Where the networks run: picking a device, naming a precision, offloading weights, freeing memory."""

from __future__ import annotations

import gc

import torch

from .errors import UserError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device} is not a device PyTorch knows; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps was asked for but this machine has no Apple GPU; use --device cpu or auto")
    return device


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CUDA GPUs, float32 elsewhere."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def sequential_offload(modules: list[torch.nn.Module], device: torch.device, roots: tuple = ()) -> None:
    """Keep each module's weights in CPU memory and move it to `device` only while it runs; what else of the
    models in `roots` is not among `modules` (embeddings, norms: small) goes to `device` for good."""
    inside = {id(t) for m in modules for t in (*m.parameters(), *m.buffers())}
    for root in roots:
        for t in (*root.parameters(), *root.buffers()):
            if id(t) not in inside:
                t.data = t.data.to(device)

    def visit(module):
        module.register_forward_pre_hook(lambda m, args: m.to(device))
        module.register_forward_hook(lambda m, args, out: m.to("cpu"))
        module.to("cpu")

    for module in modules:
        visit(module)
    if device.type == "cuda":
        torch.cuda.empty_cache()


def free_bytes(device: torch.device) -> int | None:
    """Memory free for weights on `device` (CUDA: the card's free memory; CPU: the system's available memory)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            fields = dict(line.split(":", 1) for line in handle)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def free_memory(device: str | torch.device) -> None:
    """Give freed tensors' memory back (after an out-of-memory error, before a model switch)."""
    gc.collect()
    name = str(device)
    if torch.cuda.is_available() and name.startswith(("cuda", "auto")):
        torch.cuda.empty_cache()
    elif name.startswith("mps") and hasattr(torch, "mps"):
        torch.mps.empty_cache()
