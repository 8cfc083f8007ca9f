"""noisecraft.layouts: business pictures whose text is composed, never drawn by the model.

Every built-in template is rendered and each of its texts read back with Tesseract (no skipping: a
missing tesseract binary fails these tests). Fitting is checked on the pixels (text stays inside
its box, too long is one sentence), contrast on the rendered pixels, PDF pages by their MediaBox.
"""

from __future__ import annotations

import re

import numpy as np
import pytesseract
import pytest
from PIL import Image, ImageDraw

from noisecraft.errors import UserError
from noisecraft.layouts import (Style, Template, canvas_pixels, compose, contrast_ratio, fit_text, load_logo,
                                load_template, relative_luminance, render, render_pdf, save, templates)

RNG = np.random.default_rng(0)
HEADLINE, CTA = "Summer tune-up $49", "Book today"


def noise(width=640, height=480) -> Image.Image:
    return Image.fromarray(RNG.integers(0, 256, (height, width, 3), dtype=np.uint8))


def gradient(width=640, height=480) -> Image.Image:
    """Black to white across, tinted: no single text colour reads on all of it."""
    ramp = np.linspace(0, 255, width)[None, :, None] * np.array([1.0, 0.9, 0.8])
    return Image.fromarray(np.broadcast_to(ramp, (height, width, 3)).astype(np.uint8))


def one_sentence(message: str) -> bool:
    return "\n" not in message and re.search(r"[.!?]\s+[A-Z]", message) is None and len(message) < 400


@pytest.fixture(scope="module")
def style(tmp_path_factory) -> Style:
    svg = tmp_path_factory.mktemp("logo") / "logo.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="300" height="100"><circle cx="50" cy="50" r="40" '
                   'fill="#BE3E28"/><rect x="100" y="30" width="180" height="40" rx="8" fill="#F0C040"/></svg>')
    return Style.default().with_logo(load_logo(svg, height=160))


def read_back(image: Image.Image, placed) -> str:
    """Tesseract's reading of one text box: the lines and 0.2 em around them, inside the box (so the round
    ends of a button or a panel, which Tesseract reads as brackets, stay out), scaled so the text is about
    40 pixels high, light text inverted to dark on light."""
    margin = round(0.2 * placed.size)  # a panel reaches 0.3 em (above, below) to 0.45 em (sides) past the text
    left, top, right, bottom = placed.extent
    box = placed.box if placed.panel is None else tuple(min(a, b) if i < 2 else max(a, b)
                                                        for i, (a, b) in enumerate(zip(placed.box, placed.panel)))
    region = image.crop((max(left - margin, box[0]), max(top - margin, box[1]),
                         min(right + margin, box[2]), min(bottom + margin, box[3]))).convert("L")
    scale = 40 / placed.size
    region = region.resize((max(1, round(region.width * scale)), max(1, round(region.height * scale))), Image.LANCZOS)
    if relative_luminance(placed.colour) > 0.4:
        region = region.point(lambda v: 255 - v)
    psm = 7 if len(placed.lines) == 1 else 6
    return " ".join(pytesseract.image_to_string(region, config=f"--psm {psm}").split())


STEPS = {"title": "Repot a plant in three steps", "caption1": "Water the plant a day before",
         "caption2": "Loosen the roots gently", "caption3": "Add fresh soil and water well"}
CASES = {  # id: (template, size, texts, image slots, picture)
    "menu-card": ("menu-card", None, {"name": "Margherita", "price": "$12.50",
                                      "description": "Tomato, mozzarella and fresh basil on a thin crust."},
                  ["photo"], gradient),
    "social-post": ("social-post", None, {"headline": HEADLINE, "cta": CTA}, ["image"], noise),
    "story-noise": ("story", None, {"headline": HEADLINE, "cta": CTA}, ["image"], noise),
    "story-gradient": ("story", None, {"headline": HEADLINE, "cta": CTA}, ["image"], gradient),
    "flyer-A4": ("flyer", "A4", {"headline": HEADLINE, "body": "Brakes, gears and a safety check while you wait.",
                                 "cta": CTA}, ["image"], noise),
    "flyer-Letter": ("flyer", "Letter", {"headline": HEADLINE, "body": "Open Monday to Saturday, nine to six.",
                                         "cta": CTA}, ["image"], gradient),
    "sign": ("sign", None, {"headline": HEADLINE, "details": "Open Monday to Saturday", "cta": CTA},
             ["image"], gradient),
    "before-after": ("before-after", None, {"headline": "Kitchen refresh in two days"}, ["before", "after"], noise),
    "steps": ("steps", None, STEPS, ["image1", "image2", "image3"], gradient),
}


def test_every_built_in_template_is_read_back():
    assert sorted({case[0] for case in CASES.values()}) == templates()
    assert {"menu-card", "social-post", "story", "flyer", "sign", "before-after", "steps"} <= set(templates())


@pytest.mark.parametrize("case", CASES)
def test_ocr_reads_every_text_exactly(case, style):
    name, size, texts, slots, picture = CASES[case]
    layout = compose(load_template(name, size=size), style, texts, {slot: picture() for slot in slots})
    expected = dict(texts)
    expected |= {"before_label": "Before", "after_label": "After"} if name == "before-after" else {}
    expected |= {f"step{n}": f"Step {n}" for n in (1, 2, 3)} if name == "steps" else {}
    assert set(layout.texts) == set(expected)
    for field, placed in layout.texts.items():
        assert read_back(layout.image, placed) == expected[field], field
        assert placed.contrast >= 4.5, field
    assert layout.empty_slots == ()


def test_text_over_a_noisy_photo_gets_a_backing_panel(style):
    layout = compose("story", style, {"headline": HEADLINE, "cta": CTA}, {"image": noise()})
    headline = layout.texts["headline"]
    assert headline.panel is not None
    box = headline.box
    assert box[0] <= headline.panel[0] and headline.panel[2] <= box[2]  # the panel stays in the box
    assert box[1] <= headline.panel[1] and headline.panel[3] <= box[3]
    assert layout.texts["cta"].panel is None  # on its own fill: nothing to add


def test_long_text_shrinks_and_stays_inside_its_box():
    short = {"name": "Margherita", "price": "$12.50", "description": "Tomato and basil."}
    long = dict(short, description="San Marzano tomato, fior di latte mozzarella, fresh basil, a drizzle of "
                                   "olive oil and sea salt, baked for ninety seconds in a wood-fired oven on a thin, "
                                   "blistered crust made from dough that rests for forty-eight hours.")
    small, big = compose("menu-card", None, short), compose("menu-card", None, long)
    placed = big.texts["description"]
    assert placed.size < small.texts["description"].size
    assert 2 <= len(placed.lines) <= 5
    assert " ".join(placed.lines) == long["description"]  # every word, none broken
    left, top, right, bottom = placed.box
    assert left <= placed.extent[0] and placed.extent[2] <= right and top <= placed.extent[1]
    assert placed.extent[3] <= bottom
    # on the pixels: in a band around the box, ink only inside it
    pixels = np.asarray(big.image).astype(int)
    margin = round(0.015 * big.image.height)
    band = pixels[top - margin: bottom + margin]
    ink = np.abs(band - np.array(Style.default().colour("background"))).sum(-1) > 30
    rows, cols = np.nonzero(ink)
    assert rows.size > 1000
    assert rows.min() >= margin and rows.max() < margin + bottom - top
    assert cols.min() >= left and cols.max() < right


def test_text_too_long_for_the_smallest_size_is_one_sentence():
    texts = {"name": "Margherita", "price": "$12.50", "description": "Fresh basil and tomato. " * 60}
    with pytest.raises(UserError) as caught:
        render("menu-card", None, texts)
    message = str(caught.value)
    assert "description" in message and "too long" in message and re.search(r"about \d+ fit", message)
    assert one_sentence(message) and caught.value.field == "description"


def font_at(size):
    return Style.default().font("body", size)


def test_words_break_only_as_a_last_resort():
    fitted = fit_text("Call Sanitarium", font_at, (300, 200), (10, 80), 2, "x")
    assert fitted.lines == ("Call", "Sanitarium")  # the size came down rather than the word breaking
    word = "Pneumonoultramicroscopicsilicovolcanoconiosis"
    broken = fit_text(word, font_at, (200, 200), (20, 30), 4, "x")
    assert "".join(broken.lines) == word and len(broken.lines) > 1
    assert max(broken.widths) <= 200 and broken.height <= 200


def test_two_lines_are_evened_out():
    fitted = fit_text("Water the plant a day before", font_at, (400, 100), (30, 30), 3, "x")
    assert len(fitted.lines) == 2 and min(len(line) for line in fitted.lines) >= 10


def test_contrast_ratio_is_wcag():
    assert contrast_ratio((0, 0, 0), (255, 255, 255)) == pytest.approx(21)
    assert contrast_ratio((255, 255, 255), (0, 0, 0)) == pytest.approx(21)
    assert contrast_ratio((10, 20, 30), (10, 20, 30)) == pytest.approx(1)
    assert contrast_ratio((119, 119, 119), (255, 255, 255)) == pytest.approx(4.48, abs=0.01)  # #777 on white
    assert relative_luminance((255, 0, 0)) == pytest.approx(0.2126)


def test_white_text_on_a_white_photo_gets_a_panel_that_reads():
    colours = dict(Style.default().colours, background=(255, 255, 255))
    layout = compose("story", Style(colours=colours), {"headline": HEADLINE, "cta": CTA},
                     {"image": Image.new("RGB", (500, 900), (255, 255, 255))})
    placed = layout.texts["headline"]
    assert placed.panel is not None and placed.colour == (255, 255, 255)
    left, top, right, bottom = placed.extent
    pixels = np.asarray(layout.image)[top:bottom, left:right].reshape(-1, 3)
    lightness = pixels.astype(int).sum(-1)
    ink = pixels[lightness.argmax()]  # the text's own white
    ground = pixels[np.argsort(lightness)[len(pixels) // 4]]  # what most of the extent is: the panel
    assert contrast_ratio(ink, ground) >= 4.5
    assert contrast_ratio(ink, np.median(pixels, axis=0).round().astype(int)) >= 4.5
    outside = np.asarray(layout.image)[placed.panel[1] - 5, (placed.panel[0] + placed.panel[2]) // 2]
    assert tuple(outside) == (255, 255, 255)  # the photo is left alone beside the panel


def test_text_on_flat_colour_switches_colour_instead():
    colours = dict(Style.default().colours, primary=(70, 70, 70), background=(95, 95, 95))
    layout = compose("social-post", Style(colours=colours), {"headline": HEADLINE, "cta": CTA}, {"image": noise()})
    placed = layout.texts["headline"]  # background-coloured text on the primary band
    assert placed.panel is None and placed.colour != (95, 95, 95) and placed.contrast >= 4.5
    assert read_back(layout.image, placed) == HEADLINE


def pdf_page(path):
    data = path.read_bytes()
    box = re.search(rb"/MediaBox\s*\[\s*0\s+0\s+([\d.]+)\s+([\d.]+)\s*\]", data)
    pixels = (int(re.search(rb"/Width\s+(\d+)", data).group(1)), int(re.search(rb"/Height\s+(\d+)", data).group(1)))
    return data[:5], (float(box.group(1)), float(box.group(2))), pixels


@pytest.mark.parametrize("paper, pixels, points", [("A4", (2480, 3508), (595.2, 841.92)),
                                                   ("Letter", (2550, 3300), (612, 792))])
def test_pdf_pages_have_the_paper_size(tmp_path, paper, pixels, points):
    template = load_template("flyer", size=paper)
    assert template.size == pixels and template.dpi == 300
    path = render_pdf(template, tmp_path / "flyer.pdf", None, {"headline": HEADLINE, "body": "Open daily.", "cta": CTA})
    magic, page, image = pdf_page(path)
    assert magic == b"%PDF-" and image == pixels
    assert page == pytest.approx(points, abs=0.01)
    assert [p.name for p in tmp_path.iterdir()] == ["flyer.pdf"]  # no temp file left behind


def test_save_writes_png_with_its_dpi_and_refuses_other_kinds(tmp_path):
    image = render("social-post", None, {"headline": HEADLINE, "cta": CTA})
    path = save(image, tmp_path / "post.png")
    with Image.open(path) as back:
        assert back.size == (1080, 1080) and round(back.info["dpi"][0]) == 300
    with pytest.raises(UserError) as caught:
        save(image, tmp_path / "post.gif")
    assert ".png or .pdf" in str(caught.value) and one_sentence(str(caught.value))
    with pytest.raises(UserError, match="does not exist"):
        save(image, tmp_path / "no" / "post.png")


def test_sizes():
    assert render("social-post", None, {"headline": HEADLINE, "cta": CTA}).size == (1080, 1080)
    assert load_template("story").size == (1080, 1920)
    assert load_template("sign").size == (5400, 7200)  # 18 x 24 in at 300 dpi
    assert load_template("sign", size="24x36in").size == (7200, 10800)
    assert canvas_pixels("A4", 300) == (2480, 3508) and canvas_pixels("Letter", 300) == (2550, 3300)
    assert canvas_pixels("A4 landscape", 300) == (3508, 2480)
    assert all(isinstance(load_template(name), Template) for name in templates())
    with pytest.raises(UserError) as caught:
        canvas_pixels("B52", 300)
    assert "B52" in str(caught.value) and one_sentence(str(caught.value))


def test_a_sign_renders_at_full_size_with_its_texts(style):
    layout = compose("sign", style, {"headline": HEADLINE, "cta": CTA}, {"image": gradient()})
    assert layout.image.size == (5400, 7200) and layout.image.info["dpi"] == (300, 300)
    assert "details" not in layout.texts  # optional, left out
    assert layout.texts["headline"].size > 300  # big enough to read across the street


def test_steps_take_their_count_from_the_names():
    texts = {"title": "Three steps", "caption1": "One", "caption2": "Two", "caption3": "Three", "caption4": "Four"}
    layout = compose("steps", None, texts, {"image1": gradient(), "image2": gradient()})
    assert layout.steps == 4 and layout.empty_slots == ("image3", "image4")
    assert [layout.texts[f"step{n}"].text for n in (1, 2, 3, 4)] == ["Step 1", "Step 2", "Step 3", "Step 4"]
    sizes = {layout.texts[f"caption{n}"].size for n in (1, 2, 3, 4)}
    assert len(sizes) == 1  # the captions of a guide match
    for bad in ({"title": "t", "caption1": "One"}, {"title": "t", **{f"caption{n}": "x" for n in range(1, 8)}}):
        with pytest.raises(UserError) as caught:
            render("steps", None, bad)
        assert "2 to 6 steps" in str(caught.value) and one_sentence(str(caught.value))
    with pytest.raises(UserError, match="'caption2'"):
        render("steps", None, {"title": "t", "caption1": "One", "caption3": "Three"})


def test_unknown_and_missing_fields_are_one_sentence():
    with pytest.raises(UserError) as caught:
        render("social-post", None, {"headline": HEADLINE, "cta": CTA, "subtitle": "x"})
    message = str(caught.value)
    assert "'subtitle'" in message and "headline, cta" in message and one_sentence(message)
    assert caught.value.field == "subtitle"
    with pytest.raises(UserError) as caught:
        render("social-post", None, {"headline": HEADLINE})
    assert "'cta'" in str(caught.value) and one_sentence(str(caught.value))
    with pytest.raises(UserError) as caught:
        render("social-post", None, {"headline": HEADLINE, "cta": CTA}, {"photo": noise()})
    assert "'photo'" in str(caught.value) and "image" in str(caught.value)


def test_unknown_template_name_lists_the_built_in_ones():
    with pytest.raises(UserError) as caught:
        load_template("poster")
    message = str(caught.value)
    assert "'poster'" in message and "social-post" in message and one_sentence(message)


GOOD = """
name = "banner"
size = "1200x400"
[[box]]
kind = "text"
name = "headline"
font_size = [0.1, 0.3]
x = 0.05
y = 0.1
w = 0.9
h = 0.8
"""


@pytest.mark.parametrize("text, fault", [
    ("name = 'x'\nsize = '10x10\n", "not valid TOML"),
    (GOOD.replace('name = "banner"\n', ""), "needs 'name'"),
    (GOOD.replace('kind = "text"', 'kind = "video"'), "kind = 'video'"),
    (GOOD.replace("w = 0.9", "w = 0.99"), "beyond its canvas"),
    (GOOD.replace("h = 0.8", "h = 0.8\ncolor = 'red'"), "unknown key(s) color"),
    (GOOD.replace("[0.1, 0.3]", "[0.3, 0.1]"), "font_size"),
    (GOOD.replace("1200x400", "huge"), "bad size"),
    (GOOD.replace("x = 0.05", "x = 'left'"), "not a number"),
])
def test_a_bad_template_file_is_one_sentence_naming_it(tmp_path, text, fault):
    path = tmp_path / "banner.toml"
    path.write_text(text)
    with pytest.raises(UserError) as caught:
        load_template(path)
    message = str(caught.value)
    assert str(path) in message and fault in message and one_sentence(message), message


def test_a_user_template_renders(tmp_path):
    path = tmp_path / "banner.toml"
    path.write_text(GOOD)
    template = load_template(str(path))
    assert template.name == "banner" and template.text_fields() == ["headline"]
    layout = compose(template, None, {"headline": "Open late on Fridays"})
    assert layout.image.size == (1200, 400)
    assert read_back(layout.image, layout.texts["headline"]) == "Open late on Fridays"
    with pytest.raises(UserError, match="does not exist"):
        load_template(tmp_path / "missing.toml")


def test_logos_png_and_svg(tmp_path):
    logo = Image.new("RGBA", (200, 100), (0, 0, 0, 0))
    ImageDraw.Draw(logo).ellipse((50, 0, 150, 100), fill=(200, 0, 0, 255))
    logo.save(tmp_path / "logo.png")
    png = load_logo(tmp_path / "logo.png")
    assert png.mode == "RGBA" and png.getpixel((0, 0))[3] == 0 and png.getpixel((100, 50)) == (200, 0, 0, 255)
    (tmp_path / "logo.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20">'
                                       '<rect x="10" width="20" height="20" fill="#00c000"/></svg>')
    svg = load_logo(tmp_path / "logo.svg", height=120)
    assert svg.size == (240, 120) and svg.getpixel((5, 60))[3] == 0 and svg.getpixel((120, 60))[1] > 150
    for bad, content in (("broken.png", b"not a png"), ("broken.svg", b"<svg")):
        (tmp_path / bad).write_bytes(content)
        with pytest.raises(UserError) as caught:
            load_logo(tmp_path / bad)
        assert bad in str(caught.value) and one_sentence(str(caught.value))
    with pytest.raises(UserError, match="does not exist"):
        load_logo(tmp_path / "none.png")
    # placed with its alpha, "contain"-fitted in the logo box: red where the circle is, the band around it
    layout = compose("social-post", Style.default().with_logo(png), {"headline": HEADLINE, "cta": CTA})
    box = load_template("social-post").layout()[-1].rect.pixels((1080, 1080))
    region = np.asarray(layout.image.crop(box)).reshape(-1, 3)
    red = (region[:, 0] > 150) & (region[:, 1] < 50)
    band = (region == Style.default().colour("primary")).all(-1)
    assert red.sum() > 0.1 * len(region) and band.sum() > 0.3 * len(region)


def test_style_errors_are_one_sentence(tmp_path):
    with pytest.raises(UserError, match="accent"):
        Style(colours={"primary": (0, 0, 0)})
    with pytest.raises(UserError) as caught:
        Style(fonts={"heading": tmp_path / "none.ttf", "body": tmp_path / "none.ttf"})
    assert "heading font" in str(caught.value) and one_sentence(str(caught.value))
    default = Style.default()
    assert all(path.is_file() and path.parent.name == "fonts" for path in default.fonts.values())
    assert (default.fonts["body"].parent / "LICENSE-DejaVu.txt").is_file()


def test_a_logo_that_blends_into_its_band_gets_a_backing():
    """A navy logo on a navy band would vanish: it is set on a panel of the background colour; a logo that
    stands out on its own is pasted bare."""
    colours = dict(Style.default().colours, primary=(27, 42, 74), background=(255, 255, 255))
    photo = Image.new("RGB", (300, 200), (200, 210, 220))
    texts = {"headline": "Summer tune-up", "cta": "Book now"}
    for logo_colour, backed in [((27, 42, 74), True), ((240, 127, 19), False)]:
        logo = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
        ImageDraw.Draw(logo).rounded_rectangle((10, 10, 190, 190), 30, fill=(*logo_colour, 255))
        made = compose("social-post", Style(colours=colours, logo=logo), texts, {"image": photo})
        band = np.asarray(made.image)[713:, 760:]  # the logo box (right of the headline and the button)
        white = np.all(band > 250, axis=-1).mean()  # a white backing shows up as white pixels in the band
        assert (white > 0.01) == backed, (logo_colour, white)
