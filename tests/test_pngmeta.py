from PIL import Image

from noisecraft.pngmeta import format_parameters, parse_parameters, read_parameters, save_png


def test_format_matches_a1111_layout():
    text = format_parameters("a palm tree", "blurry", Steps=20, Sampler="DPM++ 2M Karras", CFG_scale=5.0, Seed=7,
                             Size="64x64", Model_hash="0123456789", Model="emoji")
    assert text == ("a palm tree\nNegative prompt: blurry\n"
                    "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 5.0, Seed: 7, Size: 64x64, Model hash: 0123456789, Model: emoji")


def test_no_negative_line_when_empty_and_none_values_left_out():
    text = format_parameters("sushi", "", Steps=4, Seed=1, Model_hash=None)
    assert text == "sushi\nSteps: 4, Seed: 1"


def test_round_trip_with_commas_quotes_and_newlines():
    prompt = "a red apple, on a table\nsecond line"
    text = format_parameters(prompt, "ugly, blurry", Steps=30, Sampler="Euler a", Model='my, "odd" model', Seed=5)
    back = parse_parameters(text)
    assert back["prompt"] == prompt
    assert back["negative_prompt"] == "ugly, blurry"
    assert back["Steps"] == "30" and back["Sampler"] == "Euler a" and back["Seed"] == "5"
    assert back["Model"] == 'my, "odd" model'


def test_png_carries_parameters_chunk(tmp_path):
    image = Image.new("RGB", (8, 8), "red")
    image.info["parameters"] = format_parameters("x", Steps=1, Seed=0)
    path = save_png(image, tmp_path / "x.png")
    assert read_parameters(path) == "x\nSteps: 1, Seed: 0"
    assert not list(tmp_path.glob("*.tmp"))
