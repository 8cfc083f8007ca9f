"""Issue 20's parity table in one run: SD3.5, FLUX.1 (dev, schnell) and Z-Image against diffusers on the same random
weights.

    python benchmarks/flow_parity.py            # about a minute on 2 CPU cores

Uses the test suite's reduced models (tests/flow_helpers.py). Rows: the transformer alone; the whole pipeline
(same seed, same prompt) from a diffusers folder, an all-in-one single file and the parts apart (bare
transformer + ae + text encoder files); a LoRA file in diffusers' names. "rel" is max |ours - theirs| / max |theirs|
over the picture's float pixels (or the transformer's output). Writes nothing but its table (stdout, Markdown).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

PROMPT, NEGATIVE = "a product shot of a red teapot, soft light", "blurry, low quality"
SIZE = dict(height=64, width=48)


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def transformer_rel(pipe, family: str) -> float:
    from noisecraft import Pipeline  # noqa: F401  (imports the package once, before the models)
    from noisecraft.checkpoints import build_module, transformer_keys
    from noisecraft.checkpoints.transformer_config import flux_config_of, mmdit_config_of
    from noisecraft.models.flux import Flux, pack
    from noisecraft.models.mmdit import MMDiT

    ref = pipe.transformer
    g = torch.Generator().manual_seed(4)
    latents = torch.randn(2, 16, 16, 12, generator=g)
    context = torch.randn(2, 9, ref.config.joint_attention_dim, generator=g)
    pooled = torch.randn(2, ref.config.pooled_projection_dim, generator=g)
    with torch.no_grad():
        if family == "sd3":
            state = transformer_keys.mmdit_from_diffusers(ref.state_dict(), ref.config.num_layers)
            ours = build_module(MMDiT, mmdit_config_of(state), state, "cpu", torch.float32)
            t = torch.tensor([800.0, 100.0])
            return rel(ours(latents, t, context, pooled), ref(latents, encoder_hidden_states=context, pooled_projections=pooled, timestep=t).sample)
        state = transformer_keys.flux_from_diffusers(ref.state_dict())
        ours = build_module(Flux, flux_config_of(state), state, "cpu", torch.float32)
        img, ids = pack(latents)
        guidance = torch.tensor([3.5, 3.5]) if ref.config.guidance_embeds else None
        theirs = ref(img, encoder_hidden_states=context, pooled_projections=pooled, timestep=torch.tensor([0.8, 0.1]), img_ids=ids,
                     txt_ids=torch.zeros(9, 3), guidance=guidance).sample
        return rel(ours(img, torch.tensor([800.0, 100.0]), context, pooled, guidance, ids), theirs)


def zimage_rows(root: Path) -> list[tuple[str, float]]:
    """Z-Image: the pipeline with CFG (diffusers' guidance g is CFG scale g + 1) from a folder and from the files apart."""
    from flow_helpers import build_zimage

    from noisecraft import Pipeline

    from noisecraft.checkpoints import build_module, transformer_keys
    from noisecraft.checkpoints.transformer_config import zimage_config_of
    from noisecraft.models.zimage import ZImage

    pipe, folder, files = build_zimage(root / "zimage")
    state = transformer_keys.zimage_from_diffusers(pipe.transformer.state_dict())
    net = build_module(ZImage, zimage_config_of(state), state, "cpu", torch.float32)
    g = torch.Generator().manual_seed(4)
    x, context = torch.randn(2, 16, 16, 12, generator=g), torch.randn(2, 40, 48, generator=g)
    mask = torch.arange(40)[None] < torch.tensor([[37], [5]])  # prompts of 37 and 5 tokens in one batch
    sigma = torch.tensor([0.8, 0.1])
    with torch.no_grad():
        theirs = pipe.transformer([x[i].unsqueeze(1) for i in range(2)], 1 - sigma, [context[i][mask[i]] for i in range(2)], return_dict=False)[0]
        rows = [("transformer alone", rel(net(x, 1000 * sigma, context, mask), -torch.stack(theirs).squeeze(2)))]
    with torch.no_grad():
        expected = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=4, guidance_scale=2.0, generator=torch.Generator().manual_seed(7),
                        output_type="np", **SIZE).images[0]
    for what, path, load in (("pipeline, diffusers folder", folder, {}),
                             ("pipeline, parts apart (--vae, --text-encoders)", files["transformer"], dict(vae=files["ae"], text_encoders=[files["qwen"]]))):
        ours = Pipeline.from_pretrained(path, device="cpu", **load)
        image = ours(PROMPT, negative_prompt=NEGATIVE, steps=4, guidance_scale=3.0, seed=7, output_type="pt", **SIZE)[0]
        rows.append((what, rel(image.permute(1, 2, 0).numpy(), expected)))
    return rows


def pictures(pipe, folder, files, family: str, root: Path) -> list[tuple[str, float]]:
    from safetensors.torch import save_file
    from test_flow_lora import diffusers_lora

    from noisecraft import Pipeline

    if family == "sd3":
        theirs_call = dict(negative_prompt=NEGATIVE, num_inference_steps=4, guidance_scale=5.0, **SIZE)
        ours_call = dict(negative_prompt=NEGATIVE, steps=4, guidance_scale=5.0, sampler="euler", **SIZE)
        texts = [files["clip_l"], files["clip_g"], files["t5xxl"]]
        needles = ("attn.to_q", "attn.to_v", "attn.add_k_proj", "ff.net.2")
    else:
        dev = pipe.transformer.config.guidance_embeds
        theirs_call = dict(num_inference_steps=4 if dev else 2, guidance_scale=3.5 if dev else 0.0, **SIZE)
        ours_call = dict(steps=theirs_call["num_inference_steps"], guidance_scale=theirs_call["guidance_scale"], **SIZE)
        texts = [files["clip_l"], files["t5xxl"]]
        needles = ("attn.to_q", "proj_mlp", "ff.net.0.proj")

    def theirs():
        with torch.no_grad():
            return pipe(PROMPT, generator=torch.Generator().manual_seed(7), output_type="np", **theirs_call).images[0]

    def ours(path, lora=None, **load):
        model = Pipeline.from_pretrained(path, device="cpu", **load)
        if lora:
            model.load_lora(lora)
        return model(PROMPT, seed=7, output_type="pt", **ours_call)[0].permute(1, 2, 0).numpy()

    expected = theirs()
    rows = [("pipeline, diffusers folder", rel(ours(folder), expected)),
            ("pipeline, all-in-one single file", rel(ours(files["all-in-one"]), expected)),
            ("pipeline, parts apart (--vae, --text-encoders)", rel(ours(files["transformer"], vae=files["ae"], text_encoders=texts), expected))]
    lora = root / f"{family}-lora.safetensors"
    save_file(diffusers_lora(pipe.transformer, needles), lora)
    pipe.load_lora_weights(str(lora))
    expected = theirs()
    pipe.unload_lora_weights()
    rows.append(("pipeline + LoRA (diffusers names)", rel(ours(folder, lora), expected)))
    return rows


def main() -> None:
    from flow_helpers import build_flux, build_sd3

    table = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for label, build, family in (("SD3.5 (Medium's MMDiT-X shape)", lambda: build_sd3(root / "sd3"), "sd3"),
                                     ("FLUX.1 dev", lambda: build_flux(root / "dev", dev=True), "flux"),
                                     ("FLUX.1 schnell", lambda: build_flux(root / "schnell", dev=False), "flux")):
            pipe, folder, files = build()
            table.append((label, "transformer alone", transformer_rel(pipe, family)))
            table += [(label, what, value) for what, value in pictures(pipe, folder, files, family, root)]
        table += [("Z-Image (Turbo's structure)", what, value) for what, value in zimage_rows(root)]
    print("| model | what | rel |")
    print("|---|---|---:|")
    for label, what, value in table:
        print(f"| {label} | {what} | {value:.1e} |")


if __name__ == "__main__":
    main()
