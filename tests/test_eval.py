"""`noisecraft eval`: the Frechet distance, top-k, the judge's file and training, and the whole run."""

import json
import math

import pytest
import torch
from PIL import Image, ImageDraw

from noisecraft.cli import main
from noisecraft.errors import UserError
from noisecraft.eval.judge import Judge, JudgeConfig, class_name, load_judge, save_judge
from noisecraft.eval.metrics import frechet_distance, frechet_distance_stats, gaussian_stats, topk_hits
from noisecraft.eval.run import run_eval
from noisecraft.eval.train_judge import accuracy, augment, load_real_set, train_judge

from helpers import tiny_model_file

TINY = dict(widths=[8, 16], convs_per_stage=[1, 1], image_size=32, dropout=0.0)
SHAPES = {"red apple": ("ellipse", (220, 30, 30)), "rocket": ("polygon", (40, 60, 220)),
          "palm tree": ("rectangle", (30, 180, 60)), "sun": ("ellipse", (250, 200, 0))}


def random_spd(d, generator):
    a = torch.randn(d, d, generator=generator, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_frechet_distance_matches_closed_forms():
    g = torch.Generator().manual_seed(0)
    mu1, mu2 = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    # commuting covariances (same eigenvectors): FD = |mu1-mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    a, b = torch.rand(6, generator=g, dtype=torch.float64) + 0.1, torch.rand(6, generator=g, dtype=torch.float64) + 0.1
    expected = (mu1 - mu2).square().sum() + (a.sqrt() - b.sqrt()).square().sum()
    got = frechet_distance_stats(mu1, q @ torch.diag(a) @ q.T, mu2, q @ torch.diag(b) @ q.T)
    assert got == pytest.approx(expected.item(), rel=1e-9)
    # general covariances: tr((S1 S2)^1/2) from an explicit square root S1^1/2 S2 S1^1/2 = R R^T
    s1, s2 = random_spd(6, g), random_spd(6, g)
    r1 = torch.linalg.cholesky(s1)
    vals = torch.linalg.eigvalsh(r1.T @ s2 @ r1)  # same eigenvalues as S1 S2
    expected = (mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * vals.sqrt().sum()
    assert frechet_distance_stats(mu1, s1, mu2, s2) == pytest.approx(expected.item(), rel=1e-9)
    assert frechet_distance_stats(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance_stats(torch.tensor([1.0]), torch.tensor([[4.0]]), torch.tensor([-2.0]), torch.tensor([[9.0]])) == pytest.approx(9 + 1)


def test_frechet_distance_of_samples_approaches_the_gaussians():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20000, 3, generator=g, dtype=torch.float64)
    y = torch.randn(20000, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 2.0, 3.0]) + 1
    mu, cov = gaussian_stats(y)
    assert torch.allclose(cov.diag(), torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64), rtol=0.05)
    assert frechet_distance(x, y) == pytest.approx(3 + 0 + 1 + 4, rel=0.05)


def test_topk_hits():
    logits = torch.tensor([[0.1, 0.9, 0.5, 0.0], [3.0, 2.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    labels = torch.tensor([1, 2, 3])
    assert topk_hits(logits, labels, 1).tolist() == [True, False, True]  # a tie is not beaten by anything
    assert topk_hits(logits, labels, 2).tolist() == [True, False, True]
    assert topk_hits(logits, labels, 3).tolist() == [True, True, True]
    assert topk_hits(logits, labels, 10).tolist() == [True, True, True]


def test_class_names_merge_skin_tones():
    assert class_name("waving hand: medium-dark skin tone") == "waving hand"
    assert class_name("woman running: dark skin tone, facing right") == "woman running: facing right"
    assert class_name("light skin tone") == "skin tone"
    assert class_name("kiss: person, person, light skin tone, dark skin tone", {"kiss"}) == "kiss"
    assert class_name("keycap: #") == "keycap: #"


def test_judge_file_round_trip(tmp_path):
    judge = Judge(JudgeConfig(**TINY, num_classes=3), ["a", "b", "c"]).eval()
    x = torch.rand(2, 3, 64, 64)
    path = save_judge(judge, tmp_path / "judge.safetensors", dtype=torch.float32)
    loaded = load_judge(path)
    assert loaded.classes == ["a", "b", "c"] and loaded.config == judge.config
    assert torch.equal(loaded(x), judge(x)) and loaded.features(x).shape == (2, 16)
    assert torch.allclose(load_judge(save_judge(judge, tmp_path / "half.safetensors")).features(x), judge.features(x), atol=2e-2)
    (tmp_path / "pickle.safetensors").write_bytes(b"\x80\x04junk")
    with pytest.raises(Exception, match="pickle|safetensors"):
        load_judge(tmp_path / "pickle.safetensors")


def emoji_dataset(root, size=64):
    """Four 'emoji' (coloured shapes), two styles each (style 'b' smaller and darker), plus a skin-tone variant."""
    (root / "images").mkdir(parents=True)
    rows = []
    for style, (scale, shade) in {"a": (0.8, 1.0), "b": (0.6, 0.8)}.items():
        for name, (shape, rgb) in SHAPES.items():
            image = Image.new("RGB", (size, size), "white")
            m, c = size * (1 - scale) / 2, tuple(int(v * shade) for v in rgb)
            box = (m, m, size - m, size - m)
            draw = ImageDraw.Draw(image)
            draw.polygon([(size / 2, m), (size - m, size - m), (m, size - m)], fill=c) if shape == "polygon" else getattr(draw, shape)(box, fill=c)
            variants = [name] + ([f"{name}: dark skin tone"] if name == "sun" else [])
            for k, variant in enumerate(variants):
                file = f"images/{style}/{name.replace(' ', '-')}-{k}.png"
                (root / "images" / style).mkdir(exist_ok=True)
                image.save(root / file)
                rows.append({"file_name": file, "text": variant, "name": variant, "style": style})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return emoji_dataset(tmp_path_factory.mktemp("emoji"))


@pytest.fixture(scope="module")
def judge_file(data, tmp_path_factory):
    real = load_real_set(data, size=32)  # the judge's own size: cheaper augmentation
    out = tmp_path_factory.mktemp("judge") / "judge.safetensors"
    judge = train_judge(real, out, steps=60, batch_size=32, lr=1e-2, config=JudgeConfig(**TINY), augment_strength=0.5,
                        checkpoint_every=0, log=lambda m: None)
    assert out.exists() and not out.with_name("judge.checkpoint.safetensors").exists()
    return out, judge, real


def test_real_set_merges_tones_into_classes(data):
    real = load_real_set(data)
    assert real.classes == sorted(SHAPES) and len(real) == 10 and real.images.shape == (10, 3, 64, 64)
    assert sorted(set(real.styles)) == ["a", "b"]


def test_augment_keeps_shape_and_range():
    x = torch.rand(5, 3, 64, 64)
    y = augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1 and (x - y).abs().mean() > 0.05
    assert torch.equal(y, augment(x, torch.Generator().manual_seed(0)))
    assert (augment(x, torch.Generator().manual_seed(0), 0.0) - x).abs().max() < 1e-4  # strength 0: identity


def test_a_briefly_trained_judge_names_its_classes(judge_file, data):
    path, judge, real = judge_file
    assert accuracy(judge, real.images, real.labels)["top1"] == 1.0
    loaded = load_judge(path)  # fp16 on disk; 64 px pictures are resized to its 32
    assert accuracy(loaded, load_real_set(data, size=64).images, real.labels)["top1"] == 1.0


def test_resume_from_checkpoint_is_exact(data, tmp_path, monkeypatch):
    import noisecraft.eval.train_judge as tj

    real = load_real_set(data)
    kw = dict(batch_size=8, config=JudgeConfig(**(TINY | {"dropout": 0.5})), checkpoint_every=2, log=lambda m: None)
    straight = train_judge(real, tmp_path / "a.safetensors", steps=4, **kw)
    save = tj.save_checkpoint

    def save_then_stop(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(tj, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_judge(real, tmp_path / "b.safetensors", steps=4, **kw)
    monkeypatch.undo()
    assert (tmp_path / "b.checkpoint.safetensors").exists() and not (tmp_path / "b.safetensors").exists()
    with pytest.raises(UserError, match="other settings"):
        train_judge(real, tmp_path / "b.safetensors", steps=5, **kw)
    resumed = train_judge(real, tmp_path / "b.safetensors", steps=4, **kw)
    assert not (tmp_path / "b.checkpoint.safetensors").exists()
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_eval_end_to_end_on_a_tiny_model(data, judge_file, tmp_path):
    path, _, _ = judge_file
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"names": ["red apple", "sun"], "paraphrases": {"a spaceship": "rocket"}}))
    model = tiny_model_file(tmp_path / "tiny.safetensors", kind="latent")
    out = tmp_path / "out"
    result = run_eval(model=str(model), data=data, judge=path, out=out, prompts_file=prompts, images_per_prompt=2,
                      samplers=["euler", "ddim"], steps=[2, 3], device="cpu", log=lambda m: None)
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert [(c["sampler"], c["steps"]) for c in saved["configs"]] == [("euler", 2), ("euler", 3), ("ddim", 2), ("ddim", 3)]
    for row in saved["configs"]:
        assert row["names"]["images"] == 4 and row["paraphrases"]["images"] == 2
        assert 0 <= row["names"]["top1"] <= row["names"]["top5"] <= 1 and math.isfinite(row["fd"]) and row["fd"] >= 0
        assert row["generated"] == 6
    assert set(saved["floors"]) == {"fd_floor", "fd_floor_styles", "fd_all_floor"}
    assert set(saved["floors"]["fd_floor_styles"]) == {"a", "b"} and saved["floors"]["fd_floor"] > 0
    assert all(math.isfinite(row["fd_all"]) for row in saved["configs"])
    ceiling = saved["autoencoder_ceiling"]  # a latent model: its autoencoder's reconstructions are judged too
    assert ceiling["images"] == 6 and ceiling["real"]["top1"] == 1.0 and 0 <= ceiling["reconstructed"]["top1"] <= 1
    assert 0 < ceiling["psnr_db"] < 100 and "reconstruction PSNR" in (out / "results.md").read_text()
    assert [p["seeds"] for p in saved["per_prompt"]] == [[0, 1], [2, 3], [4, 5]]
    spaceship = saved["per_prompt"][2]
    assert (spaceship["prompt"], spaceship["group"], spaceship["target"]) == ("a spaceship", "paraphrases", "rocket")
    assert spaceship["top5_hits"] == 2 and len(spaceship["judge_says"]) == 2  # 4 classes: top-5 always hits
    assert len(list((out / "images" / "euler-2").glob("*.png"))) == 6
    table = (out / "results.md").read_text()
    assert "| ddim | 3 |" in table and "a spaceship" in table and "perfect copier" in table and "FD all" in table
    assert Image.open(out / "grid.png").size[1] == 16 + 3 * 64
    again = run_eval(model=str(model), data=data, judge=path, out=out, prompts_file=prompts, images_per_prompt=2,
                     samplers=["euler"], steps=[2], device="cpu", log=lambda m: None)  # pictures come from the cache
    assert again["configs"][0]["generated"] == 0 and again["configs"][0]["fd"] == saved["configs"][0]["fd"]
    assert again["configs"][0]["seconds_per_image"] == saved["configs"][0]["seconds_per_image"] > 0  # timed when made


def test_cli_missing_data_folder_is_one_sentence(tmp_path, capsys):
    code = main(["eval", "--data", str(tmp_path / "nowhere"), "--judge", str(tmp_path / "j.safetensors"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "data folder" in err and "does not exist" in err and "noisecraft data emoji" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_cli_missing_judge_says_how_to_train_one(data, tmp_path, capsys):
    code = main(["eval", "--data", str(data), "--judge", str(tmp_path / "j.safetensors"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no judge at" in err and "--train-judge" in err and len(err.splitlines()) == 1


def test_cli_trains_a_judge_and_reports_held_out_style(data, tmp_path, capsys):
    judge = tmp_path / "judge.safetensors"
    assert main(["eval", "--train-judge", "--data", str(data), "--judge", str(judge), "--judge-steps", "1", "--holdout-style", "b"]) == 0
    report = json.loads(judge.with_suffix(".json").read_text())
    assert report["train_styles"] == ["a"] and report["held_out_style"] == "b" and report["held_out_images"] == 5
    assert set(report["held_out"]) == {"clean", "augmented"} and 0 <= report["held_out"]["clean"]["top1"] <= 1
    assert load_judge(judge).config.trained["held_out"] == report["held_out"]
    assert main(["eval", "--train-judge", "--data", str(data), "--judge", str(judge), "--holdout-style", "c"]) == 2
    assert "no style 'c'" in capsys.readouterr().err
