"""Fine-tuning on one's own photos (issue 19, the loop): LoRA adapters learn (the photos' loss falls), a
kill mid-run resumes bit-exactly, the held-out photo's loss is measured at every checkpoint and the file
kept is the one where it was lowest, in kohya's format that noisecraft's own loader merges."""

from __future__ import annotations

import numpy as np
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


def whole_and_killed(setup, tmp_path, settings: FinetuneSettings, kill_at: int):
    """(the run uninterrupted, the run killed at step `kill_at` and started again), each run on a fresh model,
    and their last kohya files' tensors."""

    class Killed(Exception):
        pass

    def kill(step, total, loss):
        if step == kill_at:
            raise Killed

    whole = finetune(*load(setup), tmp_path / "whole", settings)
    with pytest.raises(Killed):
        finetune(*load(setup), tmp_path / "cut", settings, progress=kill)
    cut = finetune(*load(setup), tmp_path / "cut", settings)
    return whole, cut, load_file(tmp_path / "whole" / "acme-last.safetensors"), load_file(tmp_path / "cut" / "acme-last.safetensors")


def test_a_killed_finetune_resumes_bit_exactly(setup, tmp_path):
    settings = FinetuneSettings(steps=8, rank=4, alpha=4, lr=3e-3, checkpoint_every=4, name="acme")
    _, result, whole, cut = whole_and_killed(setup, tmp_path, settings, kill_at=6)
    assert result.step == 8
    assert whole.keys() == cut.keys() and all(torch.equal(whole[k], cut[k]) for k in whole)
    pipe, photos = load(setup)
    with pytest.raises(UserError, match="made with other photos or settings"):
        finetune(pipe, photos, tmp_path / "cut", FinetuneSettings(steps=9, rank=4, alpha=4, checkpoint_every=4, name="acme"))


def test_finetune_command_writes_a_lora_that_generate_loads(setup, tmp_path):
    import subprocess
    import sys

    model, photos = setup
    out = tmp_path / "acme.safetensors"
    run = [sys.executable, "-m", "noisecraft.cli"]
    made = subprocess.run([*run, "finetune", photos, "--name", "acme box", "--class-word", "box", "--model", model,
                           "--out", out, "--steps", "6", "--every", "3", "--rank", "4", "--peft", "--device", "cpu"],
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert "5 photo(s) (0 with their own caption), 6 steps" in made.stderr
    assert made.stdout.startswith(f"{out} (step ") and "held-out loss by step: 3: " in made.stdout
    assert f"before/after: {tmp_path / 'acme-run' / 'before-after.png'}" in made.stdout
    assert (tmp_path / "acme-diffusers" / "pytorch_lora_weights.safetensors").is_file()
    with safe_open(out, "pt") as handle:
        assert handle.metadata()["ss_output_name"] == "acme" and all(k.startswith("lora_unet_") for k in handle.keys())
    drawn = subprocess.run([*run, "generate", "acme box", "--model", model, "--lora", out, "--steps", "2", "--out",
                            tmp_path / "p.png", "--device", "cpu"], capture_output=True, text=True)
    assert drawn.returncode == 0, drawn.stderr
    refused = subprocess.run([*run, "finetune", tmp_path / "none", "--name", "x", "--out", out], capture_output=True, text=True)
    assert refused.returncode == 2 and "no such folder of photos" in refused.stderr
    refused = subprocess.run([*run, "finetune", photos, "--name", "x", "--out", out, "--prior", "3"], capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.strip() == "noisecraft: error: --prior needs --class-word (the kind of thing it is: storefront, mug, van)"


def sheet_rows(path, cell: int, count: int) -> list[list]:
    """The pictures of a labelled sheet (title 28 px, labels 150 px), row by row."""
    from PIL import Image

    with Image.open(path) as sheet:
        sheet = sheet.convert("RGB")
        rows = (sheet.height - 28) // cell
        return [[np.asarray(sheet.crop((150 + k * cell, 28 + r * cell, 150 + (k + 1) * cell, 28 + (r + 1) * cell)))
                 for k in range(count)] for r in range(rows)]


def test_samples_at_each_checkpoint_and_a_before_after_sheet_of_the_same_seeds(setup, tmp_path):
    from PIL import Image

    from noisecraft.settings import Request

    pipe, photos = load(setup)
    settings = FinetuneSettings(steps=8, rank=4, alpha=4, lr=1e-2, checkpoint_every=4, name="acme", sample_count=3, sample_steps=4)
    result = finetune(pipe, photos, tmp_path / "run", settings)
    assert sorted(p.name for p in (tmp_path / "run" / "samples").iterdir()) == ["step-000004.png", "step-000008.png"]
    assert len(sheet_rows(result.samples, 128, 3)) == 2  # a row per checkpoint
    before, after = sheet_rows(result.before_after, 128, 3)
    base = pipe(Request(photos.prompt, seed=1, num_images=3, steps=4, subject="off"))  # the adapters are gone again
    assert all(np.array_equal(np.asarray(p.resize((128, 128), Image.Resampling.LANCZOS)), b) for p, b in zip(base, before))
    pipe.load_lora(result.best_file)
    merged = pipe(Request(photos.prompt, seed=1, num_images=3, steps=4, subject="off"))
    diffs = [np.abs(np.asarray(p.resize((128, 128), Image.Resampling.LANCZOS)).astype(int) - a).mean() for p, a in zip(merged, after)]
    assert max(diffs) < 1.0, diffs  # adapters in place vs merged: float rounding only
    assert min(np.abs(a.astype(int) - b).mean() for a, b in zip(after, before)) > 1.0  # and the LoRA changed them


def test_prior_preservation_draws_the_class_once_and_changes_what_is_learned(setup, tmp_path):
    from noisecraft.pngmeta import read_parameters

    base = dict(steps=4, rank=4, alpha=4, lr=1e-2, checkpoint_every=4, name="acme", samples=False)
    pipe, photos = load(setup)
    plain = finetune(pipe, photos, tmp_path / "plain", FinetuneSettings(**base))
    result = finetune(pipe, photos, tmp_path / "prior", FinetuneSettings(**base, prior_images=3))
    files = sorted((tmp_path / "prior" / "class-pictures").glob("*/*.png"))
    assert len(files) == 3 and all(read_parameters(f).startswith("a photo of box\n") for f in files)
    stamps = [f.stat().st_mtime_ns for f in files]
    (tmp_path / "prior" / "finetune-state.safetensors").unlink()  # train again from the start: the pictures are reused
    again = finetune(pipe, photos, tmp_path / "prior", FinetuneSettings(**base, prior_images=3))
    assert [f.stat().st_mtime_ns for f in files] == stamps
    with_prior, without = load_file(result.best_file), load_file(plain.best_file)
    assert any(not torch.equal(with_prior[k], without[k]) for k in with_prior)
    assert all(torch.equal(with_prior[k], v) for k, v in load_file(again.best_file).items())  # and it is reproducible
    photos.class_word = ""
    with pytest.raises(UserError, match="needs the photos' class word"):
        finetune(pipe, photos, tmp_path / "none", FinetuneSettings(**base, prior_images=2))


def test_text_encoder_and_conv_adapters_are_saved_and_merge_back(setup, tmp_path):
    from safetensors import safe_open

    pipe, photos = load(setup)
    settings = FinetuneSettings(steps=6, rank=4, alpha=4, lr=1e-2, checkpoint_every=6, name="acme", text_encoder=True,
                                conv=True, samples=False)
    result = finetune(pipe, photos, tmp_path / "run", settings)
    with safe_open(result.best_file, "pt") as handle:
        stems = {k.rsplit(".", 2)[0] for k in handle.keys() if k.endswith(".weight")}
    assert "lora_te_encoder_layer_0_attention_self_query" in stems and "lora_te_encoder_layer_5_output_dense" in stems
    assert "lora_unet_input_blocks_1_0_in_layers_2" in stems and "lora_unet_output_blocks_1_2_conv" in stems
    before = pipe.conditioner.encode([photos.prompt])["context"]
    assert pipe.load_lora(result.best_file) == len(stems)
    assert not torch.allclose(before, pipe.conditioner.encode([photos.prompt])["context"])  # the text encoder learned too


def test_gradient_checkpointing_and_bf16_autocast_run_on_the_cpu(setup, tmp_path):
    base = dict(steps=4, rank=4, alpha=4, lr=1e-2, checkpoint_every=4, name="acme", samples=False)
    pipe, photos = load(setup)
    plain = load_file(finetune(pipe, photos, tmp_path / "plain", FinetuneSettings(**base)).best_file)
    checkpointed = load_file(finetune(pipe, photos, tmp_path / "ckpt", FinetuneSettings(**base, gradient_checkpointing=True)).best_file)
    assert max((plain[k] - checkpointed[k]).abs().max().item() for k in plain) < 1e-6  # recomputed, not changed
    assert not pipe.unet.training and not pipe.unet.config.use_checkpoint  # put back as it was
    bf16 = load_file(finetune(pipe, photos, tmp_path / "bf16", FinetuneSettings(**base, precision="bf16")).best_file)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in bf16.values())  # float32 adapters
    assert any(not torch.equal(bf16[k], plain[k]) for k in plain)
    with pytest.raises(UserError, match="precision must be one of"):
        finetune(pipe, photos, tmp_path / "x", FinetuneSettings(**base, precision="fp8"))


def test_a_prompt_naming_a_fine_tuned_subject_is_read_as_written(setup, tmp_path):
    from noisecraft.settings import Request

    pipe, photos = load(setup)
    result = finetune(pipe, photos, tmp_path / "run", FinetuneSettings(steps=2, rank=4, alpha=4, checkpoint_every=2,
                                                                       name="acme", samples=False))

    class Index:  # a stand-in subject index that swaps every prompt for "apple"
        def subject_of(self, encoder, prompt):
            return "apple"

    pipe.conditioner.subjects = Index()
    assert pipe.resolve(Request("acme box on a table")).subject == "apple"
    pipe.load_lora(result.best_file)
    assert pipe.resolve(Request("Acme Box on a table")).subject is None  # the LoRA's subject, as the photos' captions
    assert pipe.resolve(Request("a pear")).subject == "apple"
    pipe.unload_loras()
    assert pipe.resolve(Request("acme box on a table")).subject == "apple"


def test_8bit_adamw_trains_and_a_killed_run_resumes_exactly(setup, tmp_path):
    """bitsandbytes' AdamW8bit (the CUDA default) here on the CPU: rank 64 makes the feed-forward adapters
    large enough (>= 4096 values) for its 8-bit state; its state is checkpointed and resumed bit-exactly."""
    pytest.importorskip("bitsandbytes")
    settings = FinetuneSettings(steps=6, rank=64, alpha=64, lr=1e-3, checkpoint_every=3, name="acme", optimizer="adamw8bit",
                                samples=False)
    whole, _, a, b = whole_and_killed(setup, tmp_path, settings, kill_at=5)
    assert all(loss == loss for _, loss in whole.held_out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    plain = load_file(finetune(*load(setup), tmp_path / "plain", FinetuneSettings(**{**settings.__dict__, "optimizer": "adamw"})).best_file)
    assert any(not torch.equal(plain[k], a[k]) for k in a)  # a different optimizer: different weights


def test_flip_learns_from_mirror_images_too(setup, tmp_path):
    from PIL import ImageOps

    from noisecraft.images import to_tensor
    from noisecraft.train.finetune import prepare

    pipe, photos = load(setup)
    items = prepare(pipe, photos, flip=True)
    with torch.no_grad():
        mirrored = pipe.codec.encode(to_tensor(ImageOps.mirror(photos.photos[0].image), *photos.photos[0].bucket))
    assert torch.equal(items[0]["mirror"][0], mirrored) and "mirror" not in prepare(pipe, photos)[0]
    base = dict(steps=6, rank=4, alpha=4, lr=1e-2, checkpoint_every=6, name="acme", samples=False)
    plain = load_file(finetune(pipe, photos, tmp_path / "plain", FinetuneSettings(**base)).best_file)
    flipped = load_file(finetune(pipe, photos, tmp_path / "flip", FinetuneSettings(**base, flip=True)).best_file)
    assert any(not torch.equal(plain[k], flipped[k]) for k in plain)
