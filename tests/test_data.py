import json

import pytest
import torch
from PIL import Image

from noisecraft.errors import UserError
from noisecraft.train.data import batch_indices, load_image_folder


def _png(path, color, size=(20, 10), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_metadata_jsonl_with_several_captions(tmp_path):
    _png(tmp_path / "images/a.png", "red")
    _png(tmp_path / "images/b.png", (0, 0, 255, 0), mode="RGBA")  # fully transparent: becomes white
    rows = [{"file_name": "images/a.png", "text": "red square", "texts": ["red square", "a red tile"]},
            {"file_name": "images/b.png", "text": "nothing"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = load_image_folder(tmp_path, 16)
    assert data.images.shape == (2, 3, 16, 16) and data.images.dtype == torch.uint8
    assert [[data.captions[i] for i in ids] for ids in data.caption_ids] == [["red square", "a red tile"], ["nothing"]]
    assert data.images[0, 0].float().mean() > 250 and data.images[0, 1].float().mean() < 5
    assert (data.images[1] == 255).all()


def test_txt_sidecars_and_unreadable_images_are_skipped_and_counted(tmp_path):
    _png(tmp_path / "one.png", "green")
    (tmp_path / "one.txt").write_text("a green square\n")
    _png(tmp_path / "sub/two.jpg", "blue")
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    messages = []
    data = load_image_folder(tmp_path, 8, log=messages.append)
    assert len(data) == 2 and len(data.skipped) == 1
    assert "skipped 1 unreadable" in messages[0]
    assert sorted(data.captions) == ["", "a green square"]


def test_empty_or_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="holds no images"):
        load_image_folder(tmp_path, 8)
    with pytest.raises(UserError, match="does not exist"):
        load_image_folder(tmp_path / "nope", 8)
    (tmp_path / "bad.png").write_bytes(b"garbage")
    with pytest.raises(UserError, match="could be read"):
        load_image_folder(tmp_path, 8, log=lambda m: None)


def test_bad_metadata_line_names_the_line(tmp_path):
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "x"}\n{oops\n')
    with pytest.raises(UserError, match="line 2"):
        load_image_folder(tmp_path, 8)


def test_batch_order_is_a_pure_function_of_step():
    n, b = 10, 4
    steps = [batch_indices(n, s, b, seed=3) for s in range(5)]  # 20 samples = 2 full epochs
    flat = torch.cat(steps)
    assert sorted(flat[:10].tolist()) == list(range(10)) and sorted(flat[10:].tolist()) == list(range(10))
    assert torch.equal(batch_indices(n, 3, b, seed=3), steps[3])
    assert not torch.equal(batch_indices(n, 0, b, seed=4), steps[0])
