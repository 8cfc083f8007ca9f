"""Campaigns from a CSV plan: predictable files, manifest, contact sheet (PNG and PDF) and ZIP; one bad row is
reported and the rest go on; a rerun skips what is done; a kill -9 mid-way loses nothing and the finished
campaign is byte for byte the one an uninterrupted run makes. Also `noisecraft layout` and its refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import pytest
from PIL import Image

from noisecraft.brand import init_kit
from noisecraft.campaign import read_plan
from noisecraft.errors import UserError

from helpers import tiny_model_file

PLAN = """id,prompt,preset,layout,sizes,headline,cta,name,price,description
monday,a bowl of spaghetti,,social-post;story,,Pasta Monday,Book a table,,,
special,pizza,Menu item,menu-card,,,,Margherita,$12.50,"Tomato, mozzarella, basil"
banner,a lemon tart,,,96x64;64x96,,,,,
broken,a neon sign,,social-post,,Open late,Visit us,,,
"""


def cli(*args, **popen):
    return subprocess.run([sys.executable, "-m", "noisecraft.cli", *map(str, args)], capture_output=True, text=True, **popen)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("campaign")
    model = tiny_model_file(root / "tiny.safetensors", kind="latent", text=False)
    init_kit(root / "kit", "Trattoria Sole")
    (root / "plan.csv").write_text(PLAN, encoding="utf-8")
    return root, model


def campaign(setup, out, *extra, **popen):
    root, model = setup
    return cli("campaign", root / "plan.csv", "--brand", root / "kit", "--model", model, "--out", out, "--device", "cpu",
               "--no-progress", *extra, **popen)


def test_plan_rows_are_items_and_bad_plans_are_one_sentence(tmp_path):
    (tmp_path / "plan.csv").write_text(PLAN)
    items = read_plan(tmp_path / "plan.csv")
    assert [i.name for i in items] == ["monday", "special", "banner", "broken"]
    assert items[0].layouts == ("social-post", "story") and items[0].texts == {"headline": "Pasta Monday", "cta": "Book a table"}
    assert items[1].texts == {"name": "Margherita", "price": "$12.50", "description": "Tomato, mozzarella, basil"}
    assert items[2].sizes == ("96x64", "64x96") and items[2].texts == {}
    (tmp_path / "bad.csv").write_text("headline,cta\nx,y\n")
    with pytest.raises(UserError, match="the header needs a prompt"):
        read_plan(tmp_path / "bad.csv")
    with pytest.raises(UserError, match="no such plan file"):
        read_plan(tmp_path / "nope.csv")


def test_campaign_writes_files_sheet_manifest_zip_and_reports_the_bad_row(setup, tmp_path):
    out = tmp_path / "out"
    first = campaign(setup, out, "--no-sign")
    assert first.returncode == 1, first.stderr  # one row failed
    assert "3 made, 0 already done, 1 failed of 4 row(s); 5 picture(s)" in first.stdout
    assert "broken: the prompt uses 'neon', which the Trattoria Sole brand kit bans" in first.stderr
    names = ["monday-social-post.png", "monday-story.png", "special-menu-card.png", "banner-96x64.png", "banner-64x96.png"]
    for name in names:
        assert (out / name).is_file()
    assert Image.open(out / "monday-social-post.png").size == (1080, 1080)
    assert Image.open(out / "monday-story.png").size == (1080, 1920)
    assert Image.open(out / "banner-96x64.png").size == (96, 64)
    parameters = Image.open(out / "monday-story.png").info["parameters"]
    assert parameters.startswith("a bowl of spaghetti, warm natural light") and "Layout: story" in parameters
    manifest = json.loads((out / "manifest.json").read_text())
    rows = {row["id"]: row for row in manifest["items"]}
    assert rows["broken"]["status"] == "failed" and "bans" in rows["broken"]["error"]
    assert rows["monday"]["files"] == ["monday-social-post.png", "monday-story.png"]
    assert manifest["brand"] == "Trattoria Sole"
    assert Image.open(out / "contact-sheet.png").width > 600
    assert (out / "contact-sheet.pdf").read_bytes().startswith(b"%PDF")
    with zipfile.ZipFile(out / "campaign.zip") as archive:
        assert set(archive.namelist()) >= set(names) | {"manifest.json", "contact-sheet.png", "contact-sheet.pdf"}
        assert archive.testzip() is None
    again = campaign(setup, out, "--no-sign")
    assert "0 made, 3 already done, 1 failed of 4 row(s)" in again.stdout
    assert {p: (out / p).read_bytes() for p in names} == {p: (out / p).read_bytes() for p in names}


def test_a_killed_campaign_resumes_and_ends_as_an_uninterrupted_one(setup, tmp_path):
    whole = tmp_path / "whole"
    assert campaign(setup, whole, "--no-sign").returncode == 1
    cut = tmp_path / "cut"
    process = subprocess.Popen([sys.executable, "-m", "noisecraft.cli", "campaign", setup[0] / "plan.csv", "--brand",
                                setup[0] / "kit", "--model", setup[1], "--out", cut, "--device", "cpu", "--no-progress",
                                "--no-sign"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (cut / "manifest.json").exists():
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)  # after the first row is recorded, before the campaign is done
    process.wait()
    assert not (cut / "campaign.zip").exists()
    for path in cut.glob("*.png"):
        Image.open(path).load()  # every picture there is whole
    resumed = campaign(setup, cut, "--no-sign")
    assert resumed.returncode == 1 and "already done" in resumed.stdout
    done = int(resumed.stdout.split(" made, ")[1].split(" already")[0])
    assert done >= 1
    assert not [p.name for p in cut.iterdir() if p.name.endswith(".tmp")]  # a killed run's temporary files are gone
    for path in whole.glob("*.png"):
        if not path.name.startswith("contact"):
            assert (cut / path.name).read_bytes() == path.read_bytes(), path.name


def test_layout_command_writes_png_and_pdf_and_refuses_clearly(setup, tmp_path):
    root, model = setup
    photo = tmp_path / "photo.png"
    Image.new("RGB", (300, 200), (200, 120, 60)).save(photo)
    made = cli("layout", "menu-card", "--brand", root / "kit", "--set", "name=Margherita", "--set", "price=$12.50",
               "--set", "description=Tomato, mozzarella, basil", "--image", photo, "--no-sign", "--out", tmp_path / "card.png")
    assert made.returncode == 0, made.stderr
    assert Image.open(tmp_path / "card.png").size == Image.open(tmp_path / "card.png").size
    pdf = cli("layout", "flyer", "--size", "Letter", "--set", "headline=Summer tune-up $49", "--set", "body=Any AC, any brand",
              "--set", "cta=Call today", "--prompt", "a house", "--model", model, "--device", "cpu", "--no-sign",
              "--out", tmp_path / "flyer.pdf")
    assert pdf.returncode == 0, pdf.stderr
    assert (tmp_path / "flyer.pdf").read_bytes().startswith(b"%PDF")
    for args, words in [(["social-post", "--set", "headline=Open late", "--set", "mood=happy"], "mood"),
                        (["social-post", "--brand", root / "kit", "--set", "headline=Neon nights"], "bans"),
                        (["social-post", "--set", "headline=Open", "--set", "cta=Visit"], "has no picture"),
                        (["poster-of-doom"], "poster-of-doom")]:
        refused = cli("layout", *args, "--no-sign", "--out", tmp_path / "x.png")
        assert refused.returncode == 2 and words in refused.stderr and refused.stderr.count("\n") == 1, refused.stderr
    gif = cli("layout", "social-post", "--set", "headline=Open", "--set", "cta=Visit", "--image", photo, "--out",
              tmp_path / "post.gif")
    assert gif.returncode == 2 and "give a .png, .jpg, .webp or .pdf file name" in gif.stderr
    assert not (tmp_path / "post.gif").exists()


def test_signed_pictures_and_a_signed_edit_keeps_its_source_as_parent(setup, tmp_path):
    """generate --sign writes Content Credentials c2pa's own Reader accepts (untrusted: the local identity);
    img2img and upscale of that picture record it, manifest and all, as their parent."""
    import c2pa

    from noisecraft.provenance import verify

    root, model = setup
    first = tmp_path / "first.png"
    made = cli("generate", "pizza", "--model", model, "--size", "256x256", "--seed", "1", "--sign", "--out", first,
               "--device", "cpu")
    assert made.returncode == 0, made.stderr
    report = verify(first)
    assert report.state == "untrusted" and report.as_dict()["watermark"]["found"]
    with open(first, "rb") as handle:
        reader = c2pa.Reader("image/png", handle)
        assert "c2pa.created" in reader.json() and "trainedAlgorithmicMedia" in reader.json()
    edit = tmp_path / "edit.png"
    assert cli("generate", "pizza", "--model", model, "--init-image", first, "--strength", "0.5", "--seed", "2",
               "--sign", "--out", edit, "--device", "cpu").returncode == 0
    small, bigger = tmp_path / "small.png", tmp_path / "bigger.png"
    assert cli("generate", "pizza", "--model", model, "--size", "64x64", "--sign", "--out", small,
               "--device", "cpu").returncode == 0
    assert cli("upscale", small, "--scale", "2", "--strength", "0", "--model", model, "--sign", "--out", bigger,
               "--device", "cpu").returncode == 0
    for path, action in [(edit, "c2pa.edited"), (bigger, "c2pa.resized")]:
        text = verify(path).text()
        assert action in text and "manifests in the file: 2" in text
        assert "source picture (parentOf, image/png; its own Content Credentials" in text
    unsigned = tmp_path / "plain.png"
    assert cli("generate", "pizza", "--model", model, "--seed", "1", "--out", unsigned, "--device", "cpu").returncode == 0
    assert verify(unsigned).state == "none"
    shown = cli("verify", unsigned)
    assert shown.returncode == 0 and "Content Credentials: none" in shown.stdout
    assert cli("verify", tmp_path / "missing.png").returncode == 2
