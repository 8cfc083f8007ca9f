"""Fine-tuning on one's own photos (issue 19, the loop): LoRA adapters learn (the photos' loss falls), a
kill mid-run resumes bit-exactly, the held-out photo's loss is measured at every checkpoint and the file
kept is the one where it was lowest, in kohya's format that noisecraft's own loader merges."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from noisecraft.errors import UserError
from noisecraft.pipeline import Pipeline
from noisecraft.train.finetune import FinetuneSettings, finetune, held_out_loss
from noisecraft.train.photos import load_photos

from helpers import tiny_model_file

COLOURS = [(220, 30, 30), (30, 200, 40), (30, 60, 220), (230, 210, 20), (200, 40, 200)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    model = tiny_model_file(root / "tiny.safetensors", kind="latent", text=True)
    photos = root / "photos"
    photos.mkdir()
    for k, colour in enumerate(COLOURS):
        picture = Image.new("RGB", (40, 32), (250, 250, 250))
        picture.paste(colour, (8, 8, 32, 24))
        picture.save(photos / f"p{k}.png")
    return model, photos


def load(setup):
    model, folder = setup
    pipe = Pipeline.from_pretrained(model, device="cpu")
    with torch.no_grad():  # a fresh UNet's output layer is zero, so nothing inside it could be learned
        pipe.unet.out[-1].weight.copy_(torch.randn(pipe.unet.out[-1].weight.shape,
                                                   generator=torch.Generator().manual_seed(5)) * 0.05)
    return pipe, load_photos(folder, "acme box", "box", pixels=16 * 16, factor=pipe.size_factor)


def test_adapters_learn_and_the_best_held_out_checkpoint_is_kept(setup, tmp_path):
    pipe, photos = load(setup)
    settings = FinetuneSettings(steps=60, rank=4, alpha=4, lr=1e-2, checkpoint_every=20, name="acme")
    result = finetune(pipe, photos, tmp_path / "run", settings)
    assert result.step == 60 and [s for s, _ in result.held_out] == [20, 40, 60]
    best = min(result.held_out, key=lambda x: x[1])
    assert result.best_step == best[0] and result.best_file.is_file()
    with safe_open(result.best_file, "pt") as handle:
        meta = handle.metadata()
    assert meta["ss_steps"] == str(best[0]) and meta["ss_output_name"] == "acme"
    assert meta["noisecraft_held_out_loss"] == f"{best[1]:.6f}"
    assert not any(n.startswith("base") for n, _ in pipe.unet.named_modules() if ".base" in n)  # adapters removed
    # the photos' own loss at fixed noise falls once the last adapters are merged
    from noisecraft.train.finetune import prepare  # the same preparation the loop used

    items = prepare(pipe, photos)
    before = sum(held_out_loss(pipe, item, 0, 5.0) for item in items[:4])
    pipe.load_lora(str(tmp_path / "run" / "acme-last.safetensors"), 1.0)
    after = sum(held_out_loss(pipe, item, 0, 5.0) for item in items[:4])
    assert after < 0.95 * before, (before, after)


def test_a_killed_finetune_resumes_bit_exactly(setup, tmp_path):
    settings = FinetuneSettings(steps=8, rank=4, alpha=4, lr=3e-3, checkpoint_every=4, name="acme")
    pipe, photos = load(setup)
    finetune(pipe, photos, tmp_path / "whole", settings)

    class Killed(Exception):
        pass

    def kill_at_6(step, total, loss):
        if step == 6:
            raise Killed

    pipe, photos = load(setup)
    with pytest.raises(Killed):
        finetune(pipe, photos, tmp_path / "cut", settings, progress=kill_at_6)
    pipe, photos = load(setup)
    result = finetune(pipe, photos, tmp_path / "cut", settings)
    assert result.step == 8
    whole, cut = load_file(tmp_path / "whole" / "acme-last.safetensors"), load_file(tmp_path / "cut" / "acme-last.safetensors")
    assert whole.keys() == cut.keys() and all(torch.equal(whole[k], cut[k]) for k in whole)
    with pytest.raises(UserError, match="made with other photos or settings"):
        finetune(pipe, photos, tmp_path / "cut", FinetuneSettings(steps=9, rank=4, alpha=4, checkpoint_every=4, name="acme"))


def test_finetune_command_writes_a_lora_that_generate_loads(setup, tmp_path):
    import subprocess
    import sys

    model, photos = setup
    out = tmp_path / "acme.safetensors"
    run = [sys.executable, "-m", "noisecraft.cli"]
    made = subprocess.run([*run, "finetune", photos, "--name", "acme box", "--class-word", "box", "--model", model,
                           "--out", out, "--steps", "6", "--rank", "4", "--device", "cpu"], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert "5 photo(s) (0 with their own caption), 6 steps" in made.stderr
    assert made.stdout.startswith(f"{out} (step ") and "held-out loss by step: 6:" in made.stdout
    with safe_open(out, "pt") as handle:
        assert handle.metadata()["ss_output_name"] == "acme" and all(k.startswith("lora_unet_") for k in handle.keys())
    drawn = subprocess.run([*run, "generate", "acme box", "--model", model, "--lora", out, "--steps", "2", "--out",
                            tmp_path / "p.png", "--device", "cpu"], capture_output=True, text=True)
    assert drawn.returncode == 0, drawn.stderr
    refused = subprocess.run([*run, "finetune", tmp_path / "none", "--name", "x", "--out", out], capture_output=True, text=True)
    assert refused.returncode == 2 and "no such folder of photos" in refused.stderr
