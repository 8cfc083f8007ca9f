"""Issue 19's numbers, side by side in one run: LoRA interchange with diffusers/PEFT (both ways), ControlNet
parity with diffusers, and fine-tuning step times on this CPU.

    python benchmarks/finetune_parity.py            # about 2 minutes on 2 CPU cores

Uses the test suite's reduced random-weight SD 1.x / SDXL models (tests/test_sd_pipeline.py) and writes
nothing but its table (stdout, Markdown). "rel" is max |ours - theirs| / max |theirs|.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import torch  # noqa: E402


def rel(a, b) -> float:
    a, b = torch.as_tensor(a).float(), torch.as_tensor(b).float()
    return float((a - b).abs().max() / b.abs().max())


def interchange(family: str, root: Path) -> list[tuple[str, float]]:
    import diffusers
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors.torch import load_file
    from test_finetune_sd import DRAW, PROMPT, THEIRS, photos_folder, theirs
    from test_sd_pipeline import SIZE, build_sd_model, ours_float, theirs_float

    from noisecraft.pipeline import Pipeline
    from noisecraft.train.finetune import FinetuneSettings, finetune
    from noisecraft.train.photos import load_photos

    single, folder = build_sd_model(root, family)
    pipe = Pipeline.from_pretrained(single, device="cpu")
    photos = load_photos(photos_folder(root), "acme box", "box", pixels=SIZE * SIZE, factor=pipe.size_factor)
    result = finetune(pipe, photos, root / "run", FinetuneSettings(steps=12, rank=4, alpha=8, lr=2e-2, checkpoint_every=6,
                                                                   text_encoder=True, conv=True, peft_copy=True, samples=False))
    pipe.load_lora(result.best_file)
    mine = ours_float(pipe, prompt=PROMPT, **DRAW)
    rows = []
    files = [("kohya file", result.best_file)] if family == "sd1" else []
    for label, file in files + [("diffusers/PEFT copy", result.peft_file)]:
        other = theirs(family, folder)
        other.load_lora_weights(str(file.parent), weight_name=file.name)
        image = theirs_float(other, prompt=PROMPT, generator=torch.Generator().manual_seed(3), **THEIRS)
        rows.append((f"noisecraft -> diffusers `load_lora_weights` ({label}), picture", rel(mine, image)))
    tensors, other = load_file(result.peft_file), theirs(family, folder)
    for part in ["unet", "text_encoder"] + (["text_encoder_2"] if family == "sdxl" else []):
        module = getattr(other, part)
        state = {k[len(part) + 1:]: v for k, v in tensors.items() if k.split(".")[0] == part}
        if part != "unet" and not hasattr(module, "text_model"):
            state = {k.removeprefix("text_model."): v for k, v in state.items()}
        inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=sorted({k.rsplit(".", 2)[0] for k in state})), module)
        set_peft_model_state_dict(module, state)
    image = theirs_float(other, prompt=PROMPT, generator=torch.Generator().manual_seed(3), **THEIRS)
    rows.append(("noisecraft -> PEFT `inject_adapter_in_model` + `set_peft_model_state_dict`, picture", rel(mine, image)))
    if family == "sd1":
        from peft.utils import get_peft_model_state_dict

        made = diffusers.StableDiffusionPipeline.from_pretrained(folder)
        torch.manual_seed(0)
        made.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
        inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["q_proj", "v_proj"]), made.text_encoder)
        diffusers.StableDiffusionPipeline.save_lora_weights(root / "theirs", unet_lora_layers=get_peft_model_state_dict(made.unet),
                                                            text_encoder_lora_layers=get_peft_model_state_dict(made.text_encoder))
        expected = theirs_float(made, prompt=PROMPT, generator=torch.Generator().manual_seed(3), **THEIRS)
        ours = Pipeline.from_pretrained(single, device="cpu")
        ours.load_lora(root / "theirs" / "pytorch_lora_weights.safetensors")
        rows.append(("diffusers/PEFT `save_lora_weights` -> noisecraft, picture", rel(ours_float(ours, prompt=PROMPT, **DRAW), expected)))
    return rows


def controlnet(family: str, root: Path) -> list[tuple[str, float]]:
    import diffusers
    from test_controlnet import DRAW, THEIRS, shape_picture, write_controlnet
    from test_sd_pipeline import PROMPT, SIZE, build_sd_model, ours_float, theirs_float

    from noisecraft.control import Control
    from noisecraft.pipeline import Pipeline

    single, folder = build_sd_model(root, family)
    cls = diffusers.StableDiffusionXLPipeline if family == "sdxl" else diffusers.StableDiffusionPipeline
    base = cls.from_pretrained(folder)
    net = write_controlnet(base.unet, root / "net", root / "control.safetensors")
    pipe_cls = diffusers.StableDiffusionXLControlNetPipeline if family == "sdxl" else diffusers.StableDiffusionControlNetPipeline
    extra = {} if family == "sdxl" else {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    components = {k: v for k, v in base.components.items() if k not in ("safety_checker", "feature_extractor", "image_encoder")}
    picture = shape_picture()
    expected = theirs_float(pipe_cls(**components, controlnet=net, **extra), prompt=PROMPT, image=picture,
                            controlnet_conditioning_scale=0.8, control_guidance_start=0.125, control_guidance_end=0.75,
                            generator=torch.Generator().manual_seed(3), **THEIRS)
    pipe = Pipeline.from_pretrained(single, device="cpu")
    rows = []
    for label, where in (("original single file", "control.safetensors"), ("diffusers folder", "net")):
        control = Control(pipe.load_controlnet(root / where), picture, "none", 0.8, 0.125, 0.75)
        rows.append((f"ControlNet pipeline picture ({label})", rel(ours_float(pipe, prompt=PROMPT, controls=[control], **DRAW), expected)))
    ours = pipe.load_controlnet(root / "control.safetensors").module
    g = torch.Generator().manual_seed(0)
    x, hint = torch.randn(2, 4, SIZE // 2, SIZE // 2, generator=g), torch.rand(2, 3, SIZE, SIZE, generator=g)
    context, t = torch.randn(2, 77, ours.config.context_dim, generator=g), torch.tensor([500.0, 20.0])
    if family == "sd1":
        with torch.no_grad():
            down, mid = net(x, t, encoder_hidden_states=context, controlnet_cond=hint, return_dict=False)
            ours_down, ours_mid = ours(x, hint, t, context)
        rows.append(("ControlNetModel residuals (worst of 12)", max(rel(a, b) for a, b in zip([*ours_down, ours_mid], [*down, mid]))))
    return rows


def step_times() -> list[tuple[str, float]]:
    from finetune_new_subject import draw_photo
    from noisecraft.pipeline import Pipeline
    from noisecraft.train.finetune import FinetuneSettings, finetune
    from noisecraft.train.photos import load_photos

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for k in range(8):
            draw_photo(k).save(folder / f"{k}.png")
        pipe = Pipeline.from_pretrained(None, device="cpu")
        photos = load_photos(folder, "zorbi mascot", "mascot", pixels=64 * 64, factor=pipe.size_factor)
        for label, extra in (("UNet attention + feed-forward (default)", {}), ("+ text encoder", {"text_encoder": True}),
                             ("+ convolutions", {"conv": True}), ("+ prior preservation (8 class pictures)", {"prior_images": 8})):
            settings = FinetuneSettings(steps=40, checkpoint_every=1000, samples=False, **extra)
            finetune(pipe, photos, Path(tmp) / f"warm-{len(rows)}", FinetuneSettings(steps=2, checkpoint_every=1000, samples=False, **extra))
            started = time.perf_counter()
            finetune(pipe, photos, Path(tmp) / f"run-{len(rows)}", settings)
            rows.append((f"built-in model, 64 px, {label}: seconds per step", (time.perf_counter() - started) / 40))
    rows.append(("SD 1.5-size UNet (random weights), 512 px (64x64 latents), rank-16 LoRA step: seconds", sd15_step()))
    return rows


def sd15_step(steps: int = 3) -> float:
    """One LoRA training step of a full-size SD 1.5 UNet on this CPU: forward, backward, AdamW (the text
    conditioning and latents given, as the loop caches them)."""
    from noisecraft.denoiser import Denoiser
    from noisecraft.models.unet import UNet, UNetConfig
    from noisecraft.schedules import alphas_cumprod, betas
    from noisecraft.train.finetune import _loss
    from noisecraft.train.lora import adapter_parameters, add_adapters

    torch.manual_seed(0)
    unet = UNet(UNetConfig(in_channels=4, out_channels=4, model_channels=320, channel_mult=(1, 2, 4, 4), num_res_blocks=2,
                           attention_resolutions=(4, 2, 1), transformer_depth=1, context_dim=768, num_heads=8)).requires_grad_(False)
    adapters = add_adapters(unet, 16, 16)
    optimizer = torch.optim.AdamW(adapter_parameters(adapters), lr=1e-4)
    alphas = alphas_cumprod(betas("scaled_linear", 1000, 0.00085, 0.012))

    class Pipe:  # what `_loss` reads of a pipeline
        denoiser = Denoiser(unet, alphas)

    item = {"x0": torch.randn(1, 4, 64, 64), "weights": None, "cond": {"context": torch.randn(1, 77, 768)}}
    times = []
    for k in range(steps + 1):
        started = time.perf_counter()
        optimizer.zero_grad()
        loss = _loss(Pipe, item, Pipe.denoiser.sigmas[500].reshape(1), torch.randn(1, 4, 64, 64), 5.0)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return sum(times[1:]) / steps  # the first step warms up


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    print("| measure | value |\n|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for family in ("sd1", "sdxl"):
            for label, value in interchange(family, Path(tmp) / f"lora-{family}"):
                print(f"| {family.upper()}: {label} | {value:.2e} |", flush=True)
            for label, value in controlnet(family, Path(tmp) / f"control-{family}"):
                print(f"| {family.upper()}: {label} | {value:.2e} |", flush=True)
    for label, value in step_times():
        print(f"| {label} | {value:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
