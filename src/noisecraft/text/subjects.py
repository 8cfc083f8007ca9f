"""Nearest-subject prompts: how a small model with a closed list of subjects reads new wordings.

A model trained on a few thousand captioned pictures (the built-in emoji model) learns to draw from
the words of its captions; a wording it never saw ("a carved halloween pumpkin") gives token states
it cannot read, although the text encoder's sentence vector of that wording lies close to those of
the subject it means ("jack-o-lantern"). A model file can therefore carry a subject index: the
subjects it was trained on (emoji names) and the sentence vectors of some phrases for each (the
name itself, its name + keywords caption). At generation the prompt's sentence vector, or that of
one of its comma-separated parts if nearer, picks the nearest phrase, and the UNet reads the words
of that phrase's subject instead of the prompt's own (the prompt's sentence vector stays). A prompt
that is a subject name finds itself, so it is drawn exactly as without the index. The chosen
subject is written into the picture's parameters (``Subject: jack-o-lantern``), and
``subject="off"`` reads the prompt's own words.

This is retrieval (nearest neighbour in the text encoder's sentence space), not learning: it cannot
draw a subject the model does not know, and it keeps only the subject of a prompt, not its details.

In a model file the index is the part ``subjects``: ``vectors`` [K, D] (unit sentence vectors of
the phrases), ``owner`` [K] (the subject of each phrase) and ``names`` (the subjects, UTF-8,
one per line, as uint8).
"""

import hashlib
from dataclasses import dataclass

import torch

from ..errors import ModelFileError

MAX_PARTS = 16  # comma-separated parts of a prompt that are looked up (the first ones, each once)


@torch.no_grad()
def sentence_vectors(encoder, texts: list[str], batch: int = 256) -> torch.Tensor:
    """The text encoder's pooled sentence vectors of `texts` [N, D] (float32, CPU), `batch` at a time."""
    return torch.cat([encoder.encode(texts[i : i + batch]).pooled.float().cpu() for i in range(0, len(texts), batch)])


@dataclass
class SubjectIndex:
    names: list[str]
    vectors: torch.Tensor  # [K, D] unit sentence vectors of the phrases
    owner: torch.Tensor  # [K] index into `names` of each phrase's subject

    @classmethod
    @torch.no_grad()
    def build(cls, encoder, phrases: dict[str, str], batch: int = 256) -> "SubjectIndex":
        """An index of `phrases` (phrase -> its subject name) with `encoder`'s sentence vectors.

        Each subject name is a phrase of its own as well, so a prompt that is a name finds itself.
        """
        phrases = dict(phrases) | {name: name for name in phrases.values()}
        names = sorted(set(phrases.values()))
        number = {name: i for i, name in enumerate(names)}
        keys = sorted(phrases)
        return cls(names, sentence_vectors(encoder, keys, batch), torch.tensor([number[phrases[k]] for k in keys], dtype=torch.int32))

    def nearest(self, pooled: torch.Tensor) -> list[str]:
        """The subject nearest (cosine) to each sentence vector of `pooled` [B, D]."""
        return [self.names[int(self.owner[k])] for k in self._scores(pooled).argmax(dim=1).tolist()]

    @torch.no_grad()
    def subject_of(self, encoder, prompt: str) -> str:
        """The subject of a prompt: the nearest to the whole prompt or to any of its comma-separated
        parts, whichever is nearest, so that "a pizza, food photography, warm light" finds pizza
        although its style words outweigh "a pizza" in the sentence vector of the whole."""
        if prompt in self.names:  # "family: man, woman, girl" is a subject, not three
            return prompt
        parts = list(dict.fromkeys(part.strip() for part in prompt.split(",") if part.strip()))
        candidates = [prompt] + (parts[:MAX_PARTS] if len(parts) > 1 else [])
        best = self._scores(encoder.encode(candidates).pooled).max(dim=0).values.argmax()
        return self.names[int(self.owner[best])]

    def _scores(self, pooled: torch.Tensor) -> torch.Tensor:
        return pooled.float().to(self.vectors.device) @ self.vectors.float().T

    def to_part(self) -> dict[str, torch.Tensor]:
        text = "\n".join(self.names).encode("utf-8")
        return {"vectors": self.vectors, "owner": self.owner,
                "names": torch.frombuffer(bytearray(text), dtype=torch.uint8)}

    @classmethod
    def from_part(cls, part: dict[str, torch.Tensor]) -> "SubjectIndex":
        """The index stored in a model file, checked: a damaged one is a `ModelFileError`, never a wrong subject."""
        damaged = ModelFileError("the model file's subject index is damaged or inconsistent (its vectors, owners and names do not "
                                 "fit together); copy the file again")
        if set(part) != {"names", "owner", "vectors"}:
            raise damaged
        try:
            names = part["names"].to(torch.uint8).numpy().tobytes().decode("utf-8").split("\n")
        except UnicodeDecodeError:
            raise damaged from None
        owner, vectors = part["owner"].long(), part["vectors"].float()
        if vectors.ndim != 2 or owner.ndim != 1 or len(owner) != len(vectors) or not len(owner):
            raise damaged
        if int(owner.min()) < 0 or int(owner.max()) >= len(names) or len(set(names)) != len(names) or not all(names):
            raise damaged
        # every subject is a phrase of its own, and every phrase vector is a unit vector (fp16 keeps ~1e-3)
        if int(torch.bincount(owner, minlength=len(names)).min()) < 1 or ((vectors.norm(dim=1) - 1).abs() > 1e-2).any():
            raise damaged
        return cls(names, vectors, owner)

    @staticmethod
    def digest(part: dict[str, torch.Tensor]) -> str:
        """sha256 of a stored index's tensors (names, dtypes, shapes, bytes), kept in the model file's metadata."""
        hasher = hashlib.sha256()
        for key in sorted(part):
            tensor = part[key].detach().cpu().contiguous()
            hasher.update(f"{key}:{tensor.dtype}:{list(tensor.shape)};".encode())
            hasher.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        return hasher.hexdigest()
