"""The judge: a small CNN that names which emoji a 64 x 64 picture shows. Evaluation only.

Design. A stride-2 3x3 stem (64 -> 32 pixels), then four stages of 3x3 convolutions with
BatchNorm + ReLU, max-pooling between them: 32 channels at 32 px, 64 at 16 px, 128 at 8 px and 256
at 4 px (1, 2, 2, 2 convolutions), global average pooling to a 256-d feature and one linear layer
to the classes: about 1.7M parameters, ~60 MMAC per image, so it trains on a 2-core CPU in well
under an hour. A plain VGG-style stack is enough: an emoji is a flat, centred icon whose identity
is its silhouette and colours, which 32 px resolves (generated 64 px pictures are blurry anyway);
the stride-2 stem makes it ~3x cheaper than the same stack at full resolution, and global pooling makes the judge indifferent to where the icon sits, which matters for generated
pictures that are often off-centre. The pooled feature is the penultimate layer used for Frechet
distances.

Classes. One class per emoji identity, named by its CLDR name with the skin-tone variants merged
into their base emoji ("waving hand: dark skin tone" -> "waving hand"): the eval prompts name
base emoji, and a judge that must tell five skin tones apart learns little of use here. The five
bare tone swatches become one class, "skin tone". A class list travels inside the weights file.

File. safetensors (fp16 weights by default), metadata ``{"format": "noisecraft-judge",
"config": <JudgeConfig JSON>, "classes": <JSON list>}``; no pickle.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints.io import read_safetensors_header, sniff, write_safetensors
from ..errors import ModelFileError, UserError

FORMAT = "noisecraft-judge"
TONE = re.compile(r"\b(?:medium-light|medium-dark|light|medium|dark) skin tone\b")


def class_name(cldr_name: str, known: set[str] | None = None) -> str:
    """The judge class of an emoji: its CLDR name with skin tones removed.

    "Santa Claus: medium skin tone" -> "Santa Claus"; "woman running: dark skin tone, facing right"
    -> "woman running: facing right"; "light skin tone" -> "skin tone". With `known` (the tone-free
    names of the dataset), a stripped name that is not one falls back to the part before the colon
    ("kiss: person, person, light skin tone, dark skin tone" -> "kiss").
    """
    if not TONE.search(cldr_name):
        return cldr_name
    head, sep, tail = cldr_name.partition(": ")
    if not sep:
        return "skin tone"
    rest = [part for part in tail.split(", ") if not TONE.fullmatch(part)]
    name = head + (": " + ", ".join(rest) if rest else "")
    if known is not None and name not in known and head in known:
        return head
    return name


@dataclass
class JudgeConfig:
    widths: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    convs_per_stage: list[int] = field(default_factory=lambda: [1, 2, 2, 2])
    stem_stride: int = 2
    image_size: int = 64
    dropout: float = 0.2
    num_classes: int = 0
    trained: dict = field(default_factory=dict)  # how it was trained: data, steps, accuracies (informational)


class Judge(nn.Module):
    """``judge(images) -> logits`` and ``judge.features(images) -> [B, widths[-1]]`` for images in [0, 1]."""

    def __init__(self, config: JudgeConfig, classes: list[str]):
        super().__init__()
        if len(classes) != config.num_classes:
            raise ValueError(f"{len(classes)} class names for {config.num_classes} classes")
        self.config, self.classes = config, list(classes)
        self.index = {name: i for i, name in enumerate(self.classes)}
        def conv(cin, cout, stride=1):
            return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        layers, channels = conv(3, config.widths[0], config.stem_stride), config.widths[0]
        for stage, (width, convs) in enumerate(zip(config.widths, config.convs_per_stage)):
            if stage:
                layers.append(nn.MaxPool2d(2))
            for _ in range(convs):
                layers += conv(channels, width)
                channels = width
        self.body = nn.Sequential(*layers)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(channels, config.num_classes)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Float [0, 1] or uint8 images [B, 3, H, W] -> the network's input at its size, centred on 0."""
        images = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return (images - 0.5) / 0.5

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(self.prepare(images)).mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(images)))

    def class_of(self, cldr_name: str) -> int:
        """The class index of an emoji's CLDR name; a one-sentence error if the judge does not know it."""
        name = class_name(cldr_name, set(self.classes))
        if name not in self.index:
            raise UserError(f"the judge has no class {cldr_name!r}; use the emoji's CLDR name (e.g. 'palm tree')")
        return self.index[name]


@torch.no_grad()
def judge_batches(judge: Judge, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and features of many images, in eval mode, batch by batch."""
    was_training = judge.training
    judge.eval()
    logits, feats = [], []
    for start in range(0, len(images), batch_size):
        f = judge.features(images[start : start + batch_size])
        feats.append(f)
        logits.append(judge.head(f))
    judge.train(was_training)
    return torch.cat(logits), torch.cat(feats)


def save_judge(judge: Judge, path: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous() for k, v in judge.state_dict().items()}
    metadata = {"format": FORMAT, "config": json.dumps(asdict(judge.config)), "classes": json.dumps(judge.classes)}
    return write_safetensors(path, tensors, metadata)


def load_judge(path: str | Path) -> Judge:
    """Rebuild a judge from its safetensors file alone (float32, eval mode)."""
    from safetensors.torch import load_file

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"no judge at {path}; train one with `noisecraft eval --train-judge --judge {path}` or pass --judge PATH")
    if sniff(path) != "safetensors":
        raise ModelFileError(f"{path} is not a safetensors judge file; noisecraft never loads pickles")
    metadata = read_safetensors_header(path).get("__metadata__") or {}
    if metadata.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a noisecraft judge (its metadata has no judge config)")
    from safetensors import SafetensorError

    try:
        config = JudgeConfig(**json.loads(metadata["config"]))
        judge = Judge(config, json.loads(metadata["classes"]))
        state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
        judge.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError, SafetensorError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:120]
        raise ModelFileError(f"{path} is a damaged judge file ({first}); train it again with --train-judge") from None
    return judge.eval()
