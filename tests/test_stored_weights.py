"""Transformers stored small (issue 20): fp8 (e4m3) safetensors and GGUF files (Q8_0, Q4_K), written here with
the `gguf` package from random FLUX weights. Weights stay stored and are dequantised per layer as the layer runs;
the dequantisation is the `gguf` package's own, and the pictures differ from the 32-bit model's by the
quantisation error alone (printed, and bounded below)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
gguf = pytest.importorskip("gguf")

from flow_helpers import build_flux  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from noisecraft import Pipeline  # noqa: E402
from noisecraft.checkpoints.stored import FP8, dequantize  # noqa: E402

PROMPT = "a red teapot on a table"
Q = gguf.GGMLQuantizationType


def random_q4_k(rows: int, cols: int, seed: int) -> np.ndarray:
    """Q4_K blocks of random bits with finite, modest fp16 scales (gguf can read Q4_K but not write it)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(rows * cols // 256, 144), dtype=np.uint8)
    blocks[:, 0:2] = np.frombuffer(rng.uniform(0.0005, 0.002, len(blocks)).astype(np.float16).tobytes(), np.uint8).reshape(-1, 2)
    blocks[:, 2:4] = np.frombuffer(rng.uniform(0.0005, 0.002, len(blocks)).astype(np.float16).tobytes(), np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, cols // 256 * 144)


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_K"])
def test_dequantisation_is_the_gguf_packages(kind):
    if kind == "Q8_0":
        raw = gguf.quants.quantize(np.random.default_rng(0).standard_normal((6, 64)).astype(np.float32), Q.Q8_0)
    else:
        raw = random_q4_k(6, 512, 1)
    expected = gguf.quants.dequantize(raw, Q[kind])
    ours = dequantize(torch.from_numpy(raw), kind, expected.shape, torch.float32)
    assert torch.equal(ours, torch.from_numpy(expected.astype(np.float32)))


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    return build_flux(tmp_path_factory.mktemp("flux"), dev=True)


def parts(files):
    return dict(vae=files["ae"], text_encoders=[files["clip_l"], files["t5xxl"]])


def picture(path, files, **kwargs) -> np.ndarray:
    pipe = Pipeline.from_pretrained(path, device="cpu", **parts(files))
    image = pipe(PROMPT, width=48, height=64, steps=4, guidance_scale=3.5, seed=9, output_type="pt", **kwargs)[0]
    return image.permute(1, 2, 0).numpy(), pipe


def write_gguf(path, state: dict, kinds: dict) -> dict:
    """A GGUF file of `state` (2-D weights in `kinds`' quantisation, the rest F32); returns the dequantised floats."""
    writer = gguf.GGUFWriter(str(path), "flux")
    floats = {}
    for name, tensor in state.items():
        array = tensor.float().numpy()
        kind = kinds.get(name)
        if kind is None:
            writer.add_tensor(name, array)
            floats[name] = tensor.float()
            continue
        raw = gguf.quants.quantize(array, Q.Q8_0) if kind == "Q8_0" else random_q4_k(*array.shape, len(floats))
        writer.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=Q[kind])
        floats[name] = torch.from_numpy(gguf.quants.dequantize(raw, Q[kind]).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return floats


def test_a_gguf_flux_matches_its_dequantised_float_model_and_the_original_within_the_quantisation_error(flux, tmp_path):
    _, _, files = flux
    state = load_file(files["transformer"])
    kinds = {k: "Q8_0" for k, v in state.items() if v.ndim == 2 and v.shape[1] % 32 == 0}
    kinds |= {k: "Q4_K" for k, v in state.items() if k.endswith("img_mlp.2.weight")}  # 256 wide: one Q4_K block per row
    assert set(kinds.values()) == {"Q8_0", "Q4_K"}
    floats = write_gguf(tmp_path / "flux1-dev-Q8_0.gguf", state, kinds)
    save_file(floats, tmp_path / "dequantised.safetensors")
    q8_only = write_gguf(tmp_path / "flux1-dev-q8.gguf", state, {k: v for k, v in kinds.items() if v == "Q8_0"})
    assert q8_only.keys() == state.keys()

    from_gguf, pipe = picture(tmp_path / "flux1-dev-Q8_0.gguf", files)
    weight = pipe.transformer.double_blocks[0].img_attn.qkv
    assert weight.parametrizations.weight.original.dtype == torch.uint8  # stored as blocks, dequantised on use
    dequantised, _ = picture(tmp_path / "dequantised.safetensors", files)
    assert np.abs(from_gguf - dequantised).max() <= 1e-5  # the same model: only the storage differs
    original, _ = picture(files["transformer"], files)
    q8, _ = picture(tmp_path / "flux1-dev-q8.gguf", files)
    error = float(np.abs(q8 - original).max())
    print(f"Q8_0 GGUF vs float32: largest pixel difference {error:.2e} (of 1)")
    assert 0 < error <= 2e-2


def test_an_fp8_file_keeps_its_weights_in_fp8_and_computes_in_the_pipeline_dtype(flux, tmp_path):
    _, _, files = flux
    state = load_file(files["transformer"])
    stored = {k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v for k, v in state.items()}
    save_file(stored, tmp_path / "flux1-dev-fp8.safetensors")
    save_file({k: v.float() for k, v in stored.items()}, tmp_path / "upcast.safetensors")
    from_fp8, pipe = picture(tmp_path / "flux1-dev-fp8.safetensors", files)
    assert pipe.transformer.img_in.parametrizations.weight.original.dtype in FP8
    assert pipe.transformer.img_in.weight.dtype == torch.float32
    upcast, _ = picture(tmp_path / "upcast.safetensors", files)
    assert np.abs(from_fp8 - upcast).max() <= 1e-5
    original, _ = picture(files["transformer"], files)
    error = float(np.abs(from_fp8 - original).max())
    print(f"fp8 e4m3 vs float32: largest pixel difference {error:.2e} (of 1)")
    assert 0 < error <= 0.1
