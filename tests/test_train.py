import os
import subprocess
import sys

import pytest
import torch

from noisecraft.train.trainer import Trainer

from helpers import color_dataset, tiny_config


@pytest.fixture
def data(tmp_path):
    color_dataset(tmp_path / "data")
    return tmp_path


def _state(trainer):
    state = {f"model.{k}": v.clone() for k, v in trainer.model.state_dict().items()}
    state |= {f"ema.{k}": v.clone() for k, v in trainer.ema.state_dict().items()}
    for i, s in trainer.optimizer.state_dict()["state"].items():
        state |= {f"optim.{i}.{k}": torch.as_tensor(v).clone() for k, v in s.items()}
    return state


def test_resume_is_bit_exact(data):
    """Stop at step 3, resume in a new Trainer, finish: identical to an uninterrupted run."""
    straight = Trainer(tiny_config(data, text=False, out=str(data / "a")), progress=False, log=lambda *a: None)
    straight.train()
    first = Trainer(tiny_config(data, text=False, out=str(data / "b")), progress=False, log=lambda *a: None)
    assert first.train(until=3).status == "paused"
    resumed = Trainer(tiny_config(data, text=False, out=str(data / "b")), progress=False, log=lambda *a: None)
    assert resumed.step == 3
    assert resumed.train().status == "done"
    a, b = _state(straight), _state(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_non_finite_losses_are_skipped_then_stop_the_run(data, monkeypatch):
    trainer = Trainer(tiny_config(data, text=False, steps=20, max_bad_steps=3), progress=False, log=lambda *a: None)
    trainer.train(until=3)
    saved = (trainer.out / "checkpoint.safetensors").read_bytes()
    good = _state(trainer)
    real_loss = trainer.loss
    monkeypatch.setattr(trainer, "loss", lambda step: real_loss(step) * float("nan"))
    result = trainer.train()
    assert result.status == "diverged" and result.bad_steps == 3 and result.step == 6
    assert all(torch.equal(v, _state(trainer)[k]) for k, v in good.items())  # no update was applied
    resumed = Trainer(tiny_config(data, text=False, steps=20, max_bad_steps=3), progress=False, log=lambda *a: None)
    assert resumed.step in (3, 6)  # the last checkpoint holds only good weights
    assert all(torch.equal(v, _state(resumed)[k]) for k, v in good.items() if k.startswith("model."))
    assert saved[:8]  # the file was never left half-written


def test_vae_then_latent_unet_train_and_sample(data):
    """The full latent-diffusion recipe at toy size: VAE run, then a UNet run on its latents."""
    from noisecraft.pipeline import Pipeline

    vae_run = Trainer(tiny_config(data, kind="vae", steps=4, out=str(data / "vae")), progress=False, log=lambda *a: None)
    vae_run.train()
    config = tiny_config(data, kind="latent", steps=4, out=str(data / "unet"), sample_every=4)
    config.model.vae_path = str(data / "vae" / "model.safetensors")
    run = Trainer(config, progress=False, log=lambda *a: None)
    assert run.latents[0].shape == (8, 4, 8, 8)
    run.train()
    assert (data / "unet" / "samples" / "step_0000004.png").exists()
    assert (data / "unet" / "cache" / "latents.safetensors").exists()
    pipe = Pipeline.from_pretrained(data / "unet" / "model.safetensors", device="cpu")
    images = pipe("a blue square", steps=3, seed=1, num_images=2)
    assert images[0].size == (16, 16)


def test_overfit_colours_then_prompts_pick_the_colour(data):
    """A pixel model trained on 4 captioned colours makes pictures closer to the asked colour than to the others."""
    from noisecraft.pipeline import Pipeline
    from helpers import COLORS

    config = tiny_config(data, steps=300, lr=2e-3, warmup_steps=20, checkpoint_every=300, ema_decay=0.95, batch_size=8)
    config.data.caption_dropout = 0.1
    Trainer(config, progress=False, log=lambda *a: None).train()
    pipe = Pipeline.from_pretrained(data / "run" / "model.safetensors", device="cpu")
    import numpy as np

    hits, closer = 0, 0
    noise = torch.rand(16, 16, 3, generator=torch.Generator().manual_seed(0)) * 255
    for name, rgb in COLORS.items():
        image = pipe(f"a {name} square", steps=20, guidance_scale=3.0, seed=0)[0]
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32))
        target = torch.from_numpy(np.asarray(_target(name, rgb), dtype=np.float32))
        closer += float((pixels - target).abs().mean()) < 0.75 * float((noise - target).abs().mean())
        border = pixels[0:3].reshape(-1, 3).mean(0)
        distances = {other: float((border - torch.tensor(c, dtype=torch.float32)).norm()) for other, c in COLORS.items()}
        hits += min(distances, key=distances.get) == name
    assert closer == 4  # every sample is measurably closer to its training image than noise is
    assert hits >= 3, hits  # and the prompt picks the colour


def _target(name, rgb, size=16):
    from PIL import Image

    image = Image.new("RGB", (size, size), rgb)
    image.paste((255, 255, 255), (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    return image


def test_ddp_two_cpu_processes_match_one_process(data):
    """torchrun with 2 gloo processes trains the same weights as 1 process on the same global batches."""
    config = data / "ddp.toml"
    config.write_text(
        f"""
[model]
kind = "pixel"
image_size = 16
text_encoder = "minilm"
unet = {{ model_channels = 32, channel_mult = [1, 2], num_res_blocks = 1, attention_resolutions = [2], num_head_channels = 16 }}
[data]
path = "{data / 'data'}"
caption_dropout = 0.0
[train]
steps = 3
batch_size = 4
warmup_steps = 1
sample_every = 0
checkpoint_every = 3
"""
    )
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    common = [str(config), "--no-progress", "--device", "cpu"]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
                          "-m", "noisecraft.cli", "train", *common, "--out", str(data / "two")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "noisecraft.cli", "train", *common, "--out", str(data / "one")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    from safetensors.torch import load_file

    a, b = load_file(data / "two" / "checkpoint.safetensors"), load_file(data / "one" / "checkpoint.safetensors")
    for key in a:
        if key.startswith("model."):
            assert torch.allclose(a[key], b[key], atol=1e-5, rtol=1e-4), key


def test_vae_with_patch_gan_trains_and_resumes_bit_exactly(data):
    """The optional discriminator: its weights and optimizer are checkpointed, so resume stays exact."""
    def config(out):
        return tiny_config(data, kind="vae", steps=4, out=str(data / out), gan_weight=0.5, gan_start=1)

    straight = Trainer(config("a"), progress=False, log=lambda *a: None)
    before = [p.clone() for p in straight.disc.parameters()]
    assert straight.train().status == "done"
    assert any(not torch.equal(b, p) for b, p in zip(before, straight.disc.parameters()))  # the discriminator learned
    first = Trainer(config("b"), progress=False, log=lambda *a: None)
    first.train(until=2)
    resumed = Trainer(config("b"), progress=False, log=lambda *a: None)
    resumed.train()
    for (k, a), b in zip(straight.disc.state_dict().items(), resumed.disc.state_dict().values()):
        assert torch.equal(a, b), k
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_init_from_starts_a_fine_tune_from_a_model_file_and_refuses_another_network(data):
    """train.init_from: step 0, fresh optimizer, weights (and EMA) equal to the file's; a different UNet is refused."""
    from noisecraft.checkpoints import load_model_file
    from noisecraft.errors import UserError

    base = Trainer(tiny_config(data, text=False, steps=3, out=str(data / "base")), progress=False, log=lambda *a: None)
    base.train()
    _, parts, _ = load_model_file(data / "base" / "model.safetensors")
    tune = Trainer(tiny_config(data, text=False, steps=3, out=str(data / "tune"), init_from=str(data / "base" / "model.safetensors")),
                   progress=False, log=lambda *a: None)
    assert tune.step == 0 and not tune.optimizer.state_dict()["state"]
    for key, value in parts["unet"].items():
        assert torch.equal(tune.model.state_dict()[key], value.float()), key
        assert torch.equal(tune.ema.state_dict()[key], value.float()), key
    assert tune.train().status == "done"
    other = tiny_config(data, text=False, steps=3, out=str(data / "other"), init_from=str(data / "base" / "model.safetensors"))
    other.model.unet["model_channels"] = 2 * other.model.unet.get("model_channels", 8)
    with pytest.raises(UserError, match="different unet"):
        Trainer(other, progress=False, log=lambda *a: None)


def test_min_snr_weights_match_the_paper_in_each_target():
    """Min-SNR-gamma: x0 loss weight min(SNR, gamma); the eps and v forms give the same x0-space weight."""
    from noisecraft.train.losses import min_snr_weights

    sigma = torch.tensor([0.05, 0.3, 1.0, 4.0, 14.6])
    snr = 1 / sigma.double() ** 2
    expected = snr.clamp(max=5.0)
    assert torch.allclose(min_snr_weights(sigma, 5.0, "x0").double(), expected, rtol=1e-6)
    # ||eps - eps_hat||^2 = SNR ||x0 - x0_hat||^2 and ||v - v_hat||^2 = (SNR + 1) ||x0 - x0_hat||^2 (VP form)
    assert torch.allclose(min_snr_weights(sigma, 5.0, "eps").double() * snr, expected, rtol=1e-6)
    assert torch.allclose(min_snr_weights(sigma, 5.0, "v").double() * (snr + 1), expected, rtol=1e-6)
    assert torch.allclose(min_snr_weights(sigma, 5.0, "eps")[2:], torch.ones(3))  # noisy samples (SNR <= 5) keep weight 1 in eps


def test_min_snr_training_weights_the_per_sample_loss(data):
    trainer = Trainer(tiny_config(data, text=False, steps=2, min_snr_gamma=5.0), progress=False, log=lambda *a: None)
    plain = Trainer(tiny_config(data, text=False, steps=2, out=str(data / "plain")), progress=False, log=lambda *a: None)
    assert trainer.loss(0).item() <= plain.loss(0).item() + 1e-6  # weights are <= 1 for eps


def test_decoder_only_fine_tune_keeps_the_encoder_and_its_latent_space(data):
    """train.freeze = ["encoder.", "quant_conv."]: the encoder (and so the latent scale) stays bit-exact, the decoder learns."""
    from noisecraft.checkpoints import load_model_file

    Trainer(tiny_config(data, kind="vae", steps=3, out=str(data / "vae")), progress=False, log=lambda *a: None).train()
    base_config, base, _ = load_model_file(data / "vae" / "model.safetensors")
    tune = Trainer(tiny_config(data, kind="vae", steps=3, out=str(data / "dec"), init_from=str(data / "vae" / "model.safetensors"),
                               freeze=["encoder.", "quant_conv."]), progress=False, log=lambda *a: None)
    assert tune.train().status == "done"
    config, tuned, _ = load_model_file(data / "dec" / "model.safetensors")
    frozen = [k for k in base["vae"] if k.startswith(("encoder.", "quant_conv."))]
    assert frozen and all(torch.equal(base["vae"][k], tuned["vae"][k]) for k in frozen)
    assert any(not torch.equal(base["vae"][k], tuned["vae"][k]) for k in base["vae"] if k.startswith("decoder."))
    assert config.vae.scaling_factor == base_config.vae.scaling_factor


def test_token_dropout_keeps_the_pooled_vector_of_the_caption(data):
    """data.token_dropout: some captions lose their token states (the empty prompt's instead) but keep their pooled vector."""
    from noisecraft.train.cache import TextCache

    config = tiny_config(data, steps=2)
    config.data.caption_dropout, config.data.token_dropout = 0.0, 0.5
    trainer = Trainer(config, progress=False, log=lambda *a: None)
    empty = trainer.text.conditioning([TextCache.EMPTY])
    dropped = kept = 0
    for step in range(4):
        _, cond, _, _, _ = trainer.batch(step)
        for b in range(len(cond["y"])):
            n = int(cond["context_mask"][b].sum())
            tokens_empty = n == empty["context"].shape[1] and torch.equal(cond["context"][b, :n], empty["context"][0])
            assert not torch.allclose(cond["y"][b], empty["y"][0])  # every caption keeps its own pooled vector
            dropped += tokens_empty
            kept += not tokens_empty
    assert dropped >= 3 and kept >= 3, (dropped, kept)


def test_dropout_settings_are_checked(tmp_path):
    from noisecraft.errors import UserError
    from noisecraft.train.config import load_train_config

    config = tmp_path / "c.toml"
    config.write_text('[model]\nkind = "pixel"\n[data]\ntoken_dropout = 1.0\n')
    with pytest.raises(UserError, match="data.token_dropout must be at least 0 and below 1"):
        load_train_config(config)
    config.write_text('[model]\nkind = "pixel"\npooled = false\n[data]\ntoken_dropout = 0.3\n')
    with pytest.raises(UserError, match="needs model.pooled = true"):
        load_train_config(config)
    config.write_text('[model]\nkind = "pixel"\n[data]\ntoken_dropout = 0.3\n')
    assert load_train_config(config).data.token_dropout == 0.3


def test_bf16_autocast_trains(data):
    """The GPU recipe's precision (bf16 autocast, configs/emoji-*-gpu.toml), here on the CPU."""
    result = Trainer(tiny_config(data, steps=3, precision="bf16"), progress=False, log=lambda *a: None).train()
    assert result.status == "done" and result.bad_steps == 0


def test_checked_in_configs_load_and_chain():
    """Every config under configs/ is valid, and each init_from / vae_path is another config's output."""
    from pathlib import Path

    from noisecraft.train.config import load_train_config

    root = Path(__file__).resolve().parents[1] / "configs"
    configs = {path.name: load_train_config(path) for path in sorted(root.glob("*.toml"))}
    assert len(configs) >= 10
    made = {c.resolve(c.train.out).resolve() / "model.safetensors" for c in configs.values()}
    for name, c in configs.items():
        for needed in (c.train.init_from, c.model.vae_path):
            if needed:
                assert c.resolve(needed).resolve() in made, f"{name}: {needed} is no config's output"


def test_masked_denoising_loss_ignores_what_the_mask_leaves_out(data):
    """A loss mask (a photo's transparency) at the latents' size: zero where the background is, so a change of
    the picture and noise there (the targets there) changes nothing; all ones is the plain loss. (The fresh
    UNet's zero output layer makes its output 0 everywhere, so only the per-position weighting is under test.)"""
    from noisecraft.train.losses import denoising_loss

    trainer = Trainer(tiny_config(data, text=False, steps=1), progress=False, log=lambda *a: None)
    x0 = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.5, 2.0], dtype=torch.float64)
    plain = denoising_loss(trainer.denoiser, x0, sigma, None, noise)
    ones = denoising_loss(trainer.denoiser, x0, sigma, None, noise, torch.ones(2, 1, 16, 16))
    assert torch.allclose(plain, ones)
    mask = torch.zeros(2, 1, 16, 16)
    mask[..., 4:12, 4:12] = 4.0  # a quarter of the picture, averaging 1
    masked = denoising_loss(trainer.denoiser, x0, sigma, None, noise, mask)
    changed = x0.clone()
    changed[..., :2, :] += 5.0  # the background, which the mask leaves out
    noise_changed = noise.clone()
    noise_changed[..., :2, :] -= 1.0
    assert torch.allclose(masked, denoising_loss(trainer.denoiser, changed, sigma, None, noise_changed, mask), atol=1e-6)
    assert not torch.allclose(plain, denoising_loss(trainer.denoiser, changed, sigma, None, noise_changed))
