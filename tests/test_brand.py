"""Brand kits: brand.toml read and checked, words applied and refused, the palette's names, distances and
colour step (CIEDE2000 via scikit-image), and the CLI's `brand init|check` and `generate --brand`."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from skimage.color import deltaE_ciede2000, rgb2lab

from noisecraft.brand import colour_name, hex_rgb, init_kit, load_kit, palette_report, recolour
from noisecraft.errors import UserError

PALETTE = [(162, 59, 42), (253, 243, 214), (34, 87, 58)]  # brick red, cream, forest green


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "noisecraft.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def blocks(colours, size=48, noise=0.0, seed=0) -> Image.Image:
    """A picture of vertical bands of `colours`, with optional pixel noise (so k-means has texture to see)."""
    bands = np.repeat(np.array(colours, dtype=np.float64), size // len(colours) + 1, axis=0)[:size]
    pixels = np.broadcast_to(bands[None], (size, size, 3)).copy()
    pixels += np.random.default_rng(seed).normal(0, noise, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def test_colours_parse_and_are_named():
    assert hex_rgb("#a23b2a") == (162, 59, 42) and hex_rgb("fa3") == (255, 170, 51)
    with pytest.raises(UserError, match=r"^the accent is 'teal'; give a hex colour such as \"#a23b2a\"$"):
        hex_rgb("teal", "the accent")
    assert [colour_name(c) for c in PALETTE] == ["brick red", "cream", "forest green"]
    assert colour_name((20, 40, 90)) == "navy blue" and colour_name((250, 250, 250)) == "white"


def test_report_measures_ciede2000_to_the_nearest_palette_colour():
    on = palette_report(blocks(PALETTE), PALETTE)
    assert len(on.colours) == 3 and on.median < 0.5  # exactly the palette's colours
    off = palette_report(blocks([(40, 90, 200), (240, 200, 20)]), PALETTE)
    blue = next(c for c in off.colours if c.colour[2] > 150)
    expected = deltaE_ciede2000(rgb2lab(np.array(blue.colour) / 255), rgb2lab(np.array(blue.nearest) / 255))
    assert blue.delta_e == pytest.approx(float(expected), abs=1e-6) and off.median > 20
    assert off.lines()[-1].startswith("median dE") and "off palette" in off.lines()[-1]


def test_colour_step_pulls_toward_the_palette_and_keeps_what_it_should():
    picture = blocks([(210, 40, 30), (250, 230, 150), (90, 190, 80)], noise=6)  # red, yellowish cream, light green
    picture.info["parameters"] = "pizza\nSteps: 2, Seed: 1"
    assert np.array_equal(np.asarray(recolour(picture, PALETTE, 0.0)), np.asarray(picture))
    medians = [palette_report(recolour(picture, PALETTE, s), PALETTE).median for s in (0.0, 0.5, 1.0)]
    assert medians[0] > medians[1] > medians[2] and medians[2] < medians[0] / 2
    full = np.asarray(recolour(picture, PALETTE, 1.0)).astype(int)
    assert full[:, 40].mean(axis=0)[1] > full[:, 40].mean(axis=0)[0]  # the light green goes to the green, not the cream
    assert recolour(picture, PALETTE, 0.5).info["parameters"] == picture.info["parameters"]
    skin = blocks([(224, 172, 140)], noise=3)  # a skin tone moves a quarter as far
    moved = lambda protect: np.abs(np.asarray(recolour(skin, [(40, 90, 200)], 1.0, protect_skin=protect)).astype(int)
                                   - np.asarray(skin)).mean()
    assert moved(True) < 0.4 * moved(False)
    with pytest.raises(UserError, match="colour strength is 1.5; give a number from 0"):
        recolour(picture, PALETTE, 1.5)


def test_starter_kit_loads_and_applies_its_words(tmp_path):
    written = init_kit(tmp_path / "kit", "Trattoria Sole")
    assert sorted(p.name for p in written) == ["brand.toml", "logo.svg"]
    kit = load_kit(tmp_path / "kit")
    assert kit.name == "Trattoria Sole" and kit.palette["primary"] == (162, 59, 42) and kit.signing.sign
    prompt, negative = kit.apply("a bowl of ramen", "cold")
    assert prompt == ("a bowl of ramen, warm natural light, clean composition, "
                      "colour palette of brick red, cream, forest green and off-white")
    assert negative == "cold, blurry, low quality, watermark, text"
    with pytest.raises(UserError, match=r"^the prompt uses 'neon', which the Trattoria Sole brand kit bans; leave it out$"):
        kit.apply("a NEON sign over the door")
    kit.apply("neonatal care poster")  # whole words only
    with pytest.raises(UserError, match="already has a brand.toml"):
        init_kit(tmp_path / "kit")


@pytest.mark.parametrize("toml, words", [
    ('name = "x"\n[palette]\nprimary = "red"\n', r"palette.primary is 'red'; give a hex colour"),
    ('[palette]\nmauve = "#aa88aa"\n', "palette role 'mauve' is not one of primary"),
    ('[palette]\nprimary = "#aa88aa"\n[logo]\nfile = "gone.png"\n', "logo.file names .*gone.png, which is not there"),
    ('[palette]\nprimary = "#aa88aa"\n[words]\nbanned = "neon"\nrequired = [3]\n', "words.required should be a list"),
    ('colour = 1\n[palette]\nprimary = "#aa88aa"\n', "unknown key 'colour'"),
    ('[palette]\nprimary = "#aa88aa"\n[style]\ncolour_strength = 2\n', "colour_strength is 2; give a number from 0"),
    ('[palette\n', "is not valid TOML"),
    ('name = "x"\n', "the \\[palette\\] has no colours"),
])
def test_bad_kits_are_one_sentence(tmp_path, toml, words):
    (tmp_path / "brand.toml").write_text(toml)
    with pytest.raises(UserError, match=words) as caught:
        load_kit(tmp_path)
    assert "\n" not in str(caught.value)
    with pytest.raises(UserError, match="no brand kit there"):
        load_kit(tmp_path / "elsewhere")


def test_required_words_extra_colours_and_sizes(tmp_path):
    (tmp_path / "brand.toml").write_text('name = "Cool Air"\nsizes = ["96x64"]\n[palette]\nprimary = "#1b2a4a"\n'
                                         'extra = ["#f07f13"]\n[words]\nrequired = ["HVAC"]\n')
    kit = load_kit(tmp_path)
    assert kit.apply("a technician")[0] == "a technician, HVAC, colour palette of navy blue"
    assert kit.apply("an hvac unit")[0] == "an hvac unit, colour palette of navy blue"
    assert kit.colours == [(27, 42, 74), (240, 127, 19)] and kit.sizes == ((96, 64),) and not kit.signing.sign


def test_cli_brand_init_check_and_generate(tmp_path):
    made = cli("brand", "init", tmp_path / "kit", "--name", "Trattoria Sole")
    assert made.returncode == 0 and made.stdout.split() == [str(tmp_path / "kit" / "logo.svg"), str(tmp_path / "kit" / "brand.toml")]
    out = tmp_path / "pizza.png"
    drawn = cli("generate", "pizza", "--brand", tmp_path / "kit", "--seed", "1", "--steps", "4", "--no-sign", "--out", out)
    assert drawn.returncode == 0, drawn.stderr
    parameters = Image.open(out).info["parameters"]
    assert parameters.startswith("pizza, warm natural light, clean composition, colour palette of brick red")
    assert "Brand: Trattoria Sole, Colour strength: 0.5" in parameters
    plain = tmp_path / "plain.png"
    assert cli("generate", "pizza", "--brand", tmp_path / "kit", "--seed", "1", "--steps", "4", "--no-sign",
               "--colour-strength", "0", "--out", plain).returncode == 0
    checked = cli("brand", "check", out, "--brand", tmp_path / "kit", "--json")
    assert checked.returncode == 0, checked.stderr
    report = json.loads(checked.stdout)
    assert report["brand"] == "Trattoria Sole" and len(report["colours"]) == 5
    unpulled = json.loads(cli("brand", "check", plain, "--brand", tmp_path / "kit", "--json").stdout)
    assert report["median_delta_e"] < unpulled["median_delta_e"]
    text = cli("brand", "check", out, "--brand", tmp_path / "kit")
    assert text.stdout.splitlines()[-1].strip().startswith("median dE")
    refused = cli("generate", "a neon pizza", "--brand", tmp_path / "kit", "--out", tmp_path / "no.png")
    assert refused.returncode == 2 and refused.stderr.strip() == (
        "noisecraft: error: the prompt uses 'neon', which the Trattoria Sole brand kit bans; leave it out")
    assert not (tmp_path / "no.png").exists()


def test_server_offers_brand_kits_to_a1111_openai_and_the_studio(tmp_path):
    import base64
    import io

    import httpx
    import openai

    from noisecraft.gallery import Gallery
    from noisecraft.server.context import ServerSettings
    from server_fixtures import cached_pipeline, entry_for, make_pool, model_file, running_server

    init_kit(tmp_path / "kit", "Trattoria Sole")
    kit = load_kit(tmp_path / "kit")
    path = model_file(tmp_path, "pixel", text=False)
    settings = ServerSettings(brands={kit.name: kit})
    with Gallery(tmp_path / "gallery") as gallery, \
            running_server(make_pool({entry_for(path): cached_pipeline(path)}), settings, gallery=gallery) as url:
        listed = httpx.get(url + "/brands").json()
        assert listed[0]["name"] == "Trattoria Sole" and listed[0]["palette"]["primary"] == "#a23b2a"
        body = {"prompt": "pizza", "width": 16, "height": 16, "steps": 2, "seed": 1}
        plain = httpx.post(url + "/sdapi/v1/txt2img", json=body, timeout=60).json()
        branded = httpx.post(url + "/sdapi/v1/txt2img", json=body | {"brand": "Trattoria Sole"}, timeout=60).json()
        info = json.loads(branded["info"])
        assert info["prompt"].startswith("pizza, warm natural light") and "colour palette of brick red" in info["prompt"]
        picture = Image.open(io.BytesIO(base64.b64decode(branded["images"][0])))
        assert "Brand: Trattoria Sole, Colour strength: 0.5" in picture.info["parameters"]
        plain_picture = Image.open(io.BytesIO(base64.b64decode(plain["images"][0])))
        # the same prompt and seed, drawn on brand and pulled toward the palette, is closer to it
        unpulled = httpx.post(url + "/sdapi/v1/txt2img", json=body | {"prompt": info["prompt"]}, timeout=60).json()
        unpulled_picture = Image.open(io.BytesIO(base64.b64decode(unpulled["images"][0])))
        assert palette_report(picture, kit.colours).median < palette_report(unpulled_picture, kit.colours).median
        assert plain_picture.size == picture.size
        refused = httpx.post(url + "/sdapi/v1/txt2img", json=body | {"prompt": "neon pizza", "brand": "Trattoria Sole"})
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "prompt"]
        assert "bans" in refused.json()["detail"][0]["msg"]
        unknown = httpx.post(url + "/sdapi/v1/txt2img", json=body | {"brand": "Acme"})
        assert unknown.status_code == 422 and "unknown brand kit 'Acme'; the kits are: Trattoria Sole" in unknown.text
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        made = client.images.generate(prompt="pizza", size="256x256", extra_body={"brand": "Trattoria Sole"})
        assert made.data[0].revised_prompt.startswith("pizza, warm natural light")
        with pytest.raises(openai.BadRequestError) as caught:
            client.images.generate(prompt="neon pizza", extra_body={"brand": "Trattoria Sole"})
        assert caught.value.body["param"] == "prompt" and "bans" in caught.value.body["message"]
        grid = httpx.post(url + "/studio/imagine", json={"prompt": "pizza --seed 3", "brand": "Trattoria Sole"}, timeout=120)
        assert grid.status_code == 200, grid.text
        first = grid.json()["items"][0]
        assert "Brand: Trattoria Sole" in Image.open(io.BytesIO(httpx.get(url + f"/gallery/{first['id']}/image").content)).info["parameters"]


def test_server_composes_layouts_with_a_kit(tmp_path):
    import base64
    import io

    import httpx
    import pytesseract

    from noisecraft.gallery import Gallery
    from noisecraft.provenance import verify
    from noisecraft.server.context import ServerSettings
    from server_fixtures import cached_pipeline, entry_for, make_pool, model_file, running_server

    init_kit(tmp_path / "kit", "Trattoria Sole")
    kit = load_kit(tmp_path / "kit")
    path = model_file(tmp_path, "latent", text=False)
    photo = io.BytesIO()
    Image.new("RGB", (200, 150), (90, 140, 60)).save(photo, "PNG")
    photo = base64.b64encode(photo.getvalue()).decode()
    with Gallery(tmp_path / "gallery") as gallery, running_server(
            make_pool({entry_for(path): cached_pipeline(path)}), ServerSettings(brands={kit.name: kit}), gallery=gallery) as url:
        listed = {t["name"]: t for t in httpx.get(url + "/layouts").json()}
        assert listed["menu-card"]["texts"] == ["name", "price", "description"] and listed["menu-card"]["images"] == ["photo"]
        body = {"template": "social-post", "brand": "Trattoria Sole", "texts": {"headline": "Pasta Monday", "cta": "Book now"},
                "images": {"image": photo}, "sign": False}
        made = httpx.post(url + "/layouts/render", json=body, timeout=120)
        assert made.status_code == 200 and made.headers["content-type"] == "image/png", made.text
        card = Image.open(io.BytesIO(made.content))
        assert card.size == (1080, 1080)
        band = card.crop((0, 713, 1080, 1080)).convert("L").resize((540, 184))
        assert "Pasta Monday" in pytesseract.image_to_string(band)
        drawn = httpx.post(url + "/layouts/render", json=body | {"images": {}, "prompt": "pizza", "seed": 2,
                                                                  "sign": True}, timeout=120)
        assert drawn.status_code == 200, drawn.text
        (tmp_path / "signed.png").write_bytes(drawn.content)
        report = verify(tmp_path / "signed.png").as_dict()
        assert "Layout: social-post" in Image.open(tmp_path / "signed.png").info["parameters"]
        assert json.dumps(report).count("componentOf") >= 2  # the drawn photo and the logo, placed
        pdf = httpx.post(url + "/layouts/render", json=body | {"template": "flyer", "size": "Letter", "format": "pdf",
                                                                "texts": {"headline": "Summer tune-up", "body": "Any AC",
                                                                          "cta": "Call today"}}, timeout=120)
        assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
        for change, loc in [({"texts": {"headline": "Neon night", "cta": "Go"}}, ["body", "texts", "headline"]),
                            ({"template": "poster-of-doom"}, ["body", "template"]),
                            ({"images": {}}, ["body", "images"]), ({"brand": "Acme"}, ["body", "brand"])]:
            refused = httpx.post(url + "/layouts/render", json=body | change, timeout=60)
            assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == loc, refused.text


def test_a_kit_that_signs_signs_its_pictures_over_http(tmp_path):
    """A kit with sign = true (the starter's): A1111, OpenAI and studio pictures made with it come back, and
    are kept in the gallery, as one signed file each; without the kit nothing is signed; a studio edit of a
    signed picture records it as its parent."""
    import base64
    import io

    import httpx
    import openai

    from noisecraft.gallery import Gallery
    from noisecraft.provenance import verify
    from noisecraft.server.context import ServerSettings
    from noisecraft.settings import Limits
    from server_fixtures import cached_pipeline, entry_for, make_pool, model_file, running_server

    init_kit(tmp_path / "kit", "Trattoria Sole")
    kit = load_kit(tmp_path / "kit")
    path = model_file(tmp_path, "latent", text=False)
    with Gallery(tmp_path / "gallery") as gallery, running_server(
            make_pool({entry_for(path): cached_pipeline(path)}),
            ServerSettings(brands={kit.name: kit}, limits=Limits(max_side=512)), gallery=gallery) as url:
        body = {"prompt": "pizza", "width": 256, "height": 256, "steps": 2, "seed": 1}
        signed = httpx.post(url + "/sdapi/v1/txt2img", json=body | {"brand": kit.name}, timeout=120).json()
        plain = httpx.post(url + "/sdapi/v1/txt2img", json=body, timeout=120).json()
        (tmp_path / "signed.png").write_bytes(base64.b64decode(signed["images"][0]))
        (tmp_path / "plain.png").write_bytes(base64.b64decode(plain["images"][0]))
        report = verify(tmp_path / "signed.png")
        assert report.state == "untrusted" and report.as_dict()["watermark"]["found"]
        assert verify(tmp_path / "plain.png").state == "none"
        newest = httpx.get(url + "/gallery").json()["items"]
        kept = httpx.get(url + newest[1]["image_url"]).content  # the signed one, as the gallery keeps it
        assert kept == base64.b64decode(signed["images"][0])
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        made = client.images.generate(prompt="pizza", size="256x256", extra_body={"brand": kit.name})
        (tmp_path / "openai.png").write_bytes(base64.b64decode(made.data[0].b64_json))
        assert verify(tmp_path / "openai.png").state == "untrusted"
        grid = httpx.post(url + "/studio/imagine", json={"prompt": "pizza --seed 3", "brand": kit.name}, timeout=120).json()
        first = grid["items"][0]
        picture = httpx.get(url + first["image_url"]).content
        (tmp_path / "grid.png").write_bytes(picture)
        assert verify(tmp_path / "grid.png").state == "untrusted"
        assert Image.open(io.BytesIO(picture)).info["parameters"].startswith("pizza, warm natural light")
        bigger = httpx.post(url + f"/studio/{first['id']}/upscale", json={}, timeout=120).json()["items"][0]
        (tmp_path / "bigger.png").write_bytes(httpx.get(url + bigger["image_url"]).content)
        text = verify(tmp_path / "bigger.png").text()
        assert "manifests in the file: 2" in text and "source picture (parentOf" in text
