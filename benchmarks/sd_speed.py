"""noisecraft vs diffusers, side by side in one run, on the same random weights and inputs.

    python benchmarks/sd_speed.py --device cpu                 # UNet forward + 20-step txt2img, small SD-structured model
    python benchmarks/sd_speed.py --device cuda --size sd15    # SD1.5-size UNet, 64x64 latents, batch 2, bf16
    python benchmarks/sd_speed.py --device cuda --size sdxl    # SDXL-size UNet, 128x128 latents, batch 2, bf16
    python benchmarks/sd_speed.py --device cuda --size sd35m   # SD3.5 Medium MMDiT-X (2.2B), 1024 px (4096 tokens), batch 2
    python benchmarks/sd_speed.py --device cuda --size flux    # FLUX.1 dev (11.9B), 1024 px, batch 1 (no CFG)
    python benchmarks/sd_speed.py --device cpu --size flux-tiny --no-txt2img   # the same code path, reduced, on a CPU

Rows: diffusers eager, noisecraft eager, and on CUDA also both with ``torch.compile`` and
noisecraft's CUDA-graph sampling loop. For the transformers (SD3.5, FLUX) a row also gives 28 steps' worth of
forwards (28 x the median; FLUX.1 dev's default, the issue's anchor: 6.57 s eager, 4.21 s compiled for the whole
1024 px pipeline on an H100 with diffusers). Times are medians over repeated calls after warm-up;
the ratio column is noisecraft / diffusers for the same setting (below 1.0: noisecraft is faster).
Writes the table to stdout and JSON to --json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

SIZES = {
    # SD 1.x structure (4 levels, 2 res blocks, conv projections, 8 heads, 768-d context) at 1/5 width
    "small": dict(unet=dict(block_out_channels=(64, 128, 256, 256), layers_per_block=2, cross_attention_dim=768,
                            attention_head_dim=8), latent=32, batch=2),
    "sd15": dict(unet=dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
                           attention_head_dim=8), latent=64, batch=2),
    "sdxl": dict(unet=dict(block_out_channels=(320, 640, 1280), layers_per_block=2, cross_attention_dim=2048,
                           down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                           up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                           transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
                           use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                           projection_class_embeddings_input_dim=2816), latent=128, batch=2),
}


# The flow transformers, in diffusers' config names: (class, config, latent side, batch).
TRANSFORMERS = {
    "sd35m": ("SD3Transformer2DModel", dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                                            num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                                            pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384,
                                            qk_norm="rms_norm", dual_attention_layers=tuple(range(13))), 128, 2),
    "flux": ("FluxTransformer2DModel", dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                                            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                                            guidance_embeds=True, axes_dims_rope=(16, 56, 56)), 128, 1),
    "flux-tiny": ("FluxTransformer2DModel", dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=32,
                                                 num_attention_heads=2, joint_attention_dim=64, pooled_projection_dim=32,
                                                 guidance_embeds=True, axes_dims_rope=(4, 14, 14)), 16, 1),
}


def transformer_rows(size: str, device, dtype, compile_: bool) -> list[dict]:
    """One transformer forward at 1024 px (128x128 latents), diffusers vs noisecraft on the same random weights."""
    import diffusers

    from noisecraft.checkpoints import build_module, transformer_keys
    from noisecraft.checkpoints.transformer_config import flux_config_of, mmdit_config_of
    from noisecraft.models.flux import Flux, pack
    from noisecraft.models.mmdit import MMDiT

    name, config, side, b = TRANSFORMERS[size]
    flux = name.startswith("Flux")
    torch.manual_seed(0)
    with torch.device(device):
        ref = getattr(diffusers, name)(**config).to(dtype).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(b, 16, side, side, generator=g).to(device, dtype)
    context = torch.randn(b, 512 if flux else 333, config["joint_attention_dim"], generator=g).to(device, dtype)
    pooled = torch.randn(b, config["pooled_projection_dim"], generator=g).to(device, dtype)
    t = torch.full((b,), 500.0, device=device)
    if flux:
        state = transformer_keys.flux_from_diffusers(ref.state_dict())
        ours = build_module(Flux, flux_config_of(state), state, device, dtype)
        img, ids = pack(latents)
        guidance = torch.full((b,), 3.5, device=device)
        theirs_kwargs = dict(hidden_states=img, encoder_hidden_states=context, pooled_projections=pooled, timestep=t / 1000,
                             img_ids=ids, txt_ids=torch.zeros(context.shape[1], 3, device=device), guidance=guidance)
        ours_args = (latents, t, context, pooled, guidance)
    else:
        state = transformer_keys.mmdit_from_diffusers(ref.state_dict(), config["num_layers"])
        ours = build_module(MMDiT, mmdit_config_of(state), state, device, dtype)
        theirs_kwargs = dict(hidden_states=latents, encoder_hidden_states=context, pooled_projections=pooled, timestep=t)
        ours_args = (latents, t, context, pooled)
    del state
    rows = []
    variants = [("eager", ref, ours)] + ([("compiled", torch.compile(ref), torch.compile(ours))] if compile_ else [])
    with torch.no_grad():
        for label, theirs_net, ours_net in variants:
            a, o = paired_times(lambda: theirs_net(**theirs_kwargs), lambda: ours_net(*ours_args), device,
                                warmup=2 if label == "eager" else 4, repeat=5 if device.type == "cpu" else 10)
            rows.append(dict(what=f"{size} transformer {label} (x28 steps: {28 * a:.2f} s vs {28 * o:.2f} s)",
                             diffusers_ms=a * 1e3, noisecraft_ms=o * 1e3, ratio=o / a))
    return rows


def paired_times(theirs, ours, device: torch.device, warmup: int = 2, repeat: int = 10) -> tuple[float, float]:
    """Median seconds of each, timed in alternation so that load on a shared machine hits both alike."""
    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for _ in range(warmup):
        theirs(), ours()
    a, b = [], []
    for _ in range(repeat):
        a.append(timed(theirs))
        b.append(timed(ours))
    return statistics.median(a), statistics.median(b)


def twin_unets(size: str, device, dtype):
    """diffusers' UNet with random weights, and noisecraft's UNet holding the very same weights."""
    import diffusers

    from noisecraft.checkpoints import build_module, keymaps
    from noisecraft.models.unet import UNet
    from noisecraft.checkpoints.sd_config import unet_config_from_diffusers

    torch.manual_seed(0)
    ref = diffusers.UNet2DConditionModel(**SIZES[size]["unet"]).eval()
    config = unet_config_from_diffusers(dict(ref.config))
    with torch.device("meta"):
        keys = UNet(config).state_dict().keys()
    ours = build_module(UNet, config, keymaps.unet_from_diffusers(ref.state_dict(), keys), device, dtype)
    return ref.to(device, dtype).requires_grad_(False), ours


def unet_rows(size: str, device, dtype, compile_: bool) -> list[dict]:
    from noisecraft.models.unet import timestep_embedding

    ref, ours = twin_unets(size, device, dtype)
    spec = SIZES[size]
    b, n = spec["batch"], spec["latent"]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, 4, n, n, generator=g).to(device, dtype)
    t = torch.full((b,), 500.0, device=device)
    context = torch.randn(b, 77, ref.config.cross_attention_dim, generator=g).to(device, dtype)
    extra, y = {}, None
    if ref.config.addition_embed_type == "text_time":
        pooled = torch.randn(b, 1280, generator=g).to(device, dtype)
        ids = torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]] * b, device=device)
        extra = {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": ids}}
        y = torch.cat([pooled.float(), timestep_embedding(ids.flatten(), 256).reshape(b, -1)], 1).to(dtype)
    rows = []
    layouts = [("eager", False)] + ([("channels_last", True)] if device.type == "cuda" else [])
    with torch.no_grad():
        for label, channels_last in layouts:
            if channels_last:
                ref.to(memory_format=torch.channels_last)
                ours.to(memory_format=torch.channels_last)
            a, o = paired_times(lambda: ref(x, t, encoder_hidden_states=context, **extra), lambda: ours(x, t, context, y=y), device,
                                repeat=10 if device.type == "cpu" else 20)
            rows.append(dict(what=f"UNet {size} {label}", diffusers_ms=a * 1e3, noisecraft_ms=o * 1e3, ratio=o / a))
        if compile_:
            ref_c = torch.compile(ref, mode="max-autotune-no-cudagraphs")
            ours_c = torch.compile(ours, mode="max-autotune-no-cudagraphs")
            a, o = paired_times(lambda: ref_c(x, t, encoder_hidden_states=context, **extra), lambda: ours_c(x, t, context, y=y),
                                device, warmup=5)
            rows.append(dict(what=f"UNet {size} compiled", diffusers_ms=a * 1e3, noisecraft_ms=o * 1e3, ratio=o / a))
    return rows


def txt2img_rows(tmp: Path, device, dtype, steps: int = 20) -> list[dict]:
    """A whole 20-step txt2img (text encoding, Euler sampling with guidance, VAE decode) on the same files."""
    from test_sd_pipeline import build_sd_model  # noqa: PLC0415 (the parity harness's model writer)
    import diffusers

    from noisecraft.pipeline import Pipeline

    from clip_helpers import CLIP_L

    torch.manual_seed(0)  # SD 1.x structure at 1/5 width, f8 autoencoder at 1/2 width: 256 px pictures, 32x32 latents (CPU: 128 px)
    unet = diffusers.UNet2DConditionModel(**SIZES["small"]["unet"] | {"cross_attention_dim": CLIP_L["hidden_size"]}).eval()
    vae = diffusers.AutoencoderKL(block_out_channels=(64, 128, 256, 256), layers_per_block=2, latent_channels=4,
                                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4).eval()
    single, folder = build_sd_model(tmp, "sd1", unet=unet, vae=vae)
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False,
                                                                torch_dtype=dtype).to(device)
    theirs.scheduler = diffusers.EulerDiscreteScheduler.from_config(theirs.scheduler.config)
    theirs.set_progress_bar_config(disable=True)
    ours = Pipeline.from_pretrained(single, device=device, dtype=dtype)
    size = 256 if device.type == "cuda" else 128
    prompt = "a product shot of a red teapot on a wooden table, soft light"

    def run_theirs():
        theirs(prompt, num_inference_steps=steps, guidance_scale=7.0, height=size, width=size,
               generator=torch.Generator().manual_seed(0), output_type="pil")

    def run_ours():
        ours(prompt, steps=steps, guidance_scale=7.0, sampler="euler", seed=0, width=size, height=size)

    a, o = paired_times(run_theirs, run_ours, device, warmup=1, repeat=3 if device.type == "cpu" else 5)
    return [dict(what=f"txt2img {steps} steps {size}px", diffusers_ms=a * 1e3, noisecraft_ms=o * 1e3, ratio=o / a)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default=None, choices=sorted(SIZES) + sorted(TRANSFORMERS))
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-txt2img", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    size = args.size or ("sd15" if device.type == "cuda" else "small")
    compile_ = device.type == "cuda" and not args.no_compile
    rows = transformer_rows(size, device, dtype, compile_) if size in TRANSFORMERS else unet_rows(size, device, dtype, compile_)
    if not args.no_txt2img and size not in TRANSFORMERS:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            rows += txt2img_rows(Path(tmp), device, dtype)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# {name}, {str(dtype).removeprefix('torch.')}, torch {torch.__version__}")
    print("| what | diffusers (ms) | noisecraft (ms) | noisecraft / diffusers |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['what']} | {r['diffusers_ms']:.1f} | {r['noisecraft_ms']:.1f} | {r['ratio']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(device=name, rows=rows), indent=1))


if __name__ == "__main__":
    main()
