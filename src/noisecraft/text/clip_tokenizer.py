"""CLIP's byte-level BPE tokenizer (Radford et al. 2021), assembled from `tokenizers` parts.

The vocabulary is OpenAI's ``bpe_simple_vocab_16e6.txt.gz``, shipped beside this file with its MIT
licence (see ``clip_vocab/ATTRIBUTION.md`` for why a copy and not the ``open_clip_torch``
package). From it, as CLIP's ``simple_tokenizer.py`` defines: the 256 byte symbols, the same 256
with the end-of-word mark ``</w>``, one token per merge (the file's first 48,894 merge lines),
then ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407): 49,408 tokens. A diffusers folder's
``tokenizer/`` (``vocab.json`` + ``merges.txt``, or a ``tokenizer.json``) replaces it when given.

Text handling matches transformers' ``CLIPTokenizer``, the tokenizer diffusers uses: NFC, runs
of whitespace to one space, lowercase, then CLIP's word pattern (contractions, letter runs, single
digits, runs of other symbols), each word byte-encoded and merged with ``</w>`` on its last
symbol. OpenAI's original also runs ``ftfy.fix_text`` and ``html.unescape`` first; neither is
done here (ftfy is not a dependency), so mojibake and HTML entities tokenize as in diffusers.

Padding is not the tokenizer's business here: the text encoder pads each 77-token window with
its own pad id (``<|endoftext|>`` for OpenAI's CLIP-L, ``!`` = id 0 for OpenCLIP's encoders). In
particular a ``!`` in a prompt is always the ordinary token ``!</w>`` (256), as in OpenCLIP and
A1111; diffusers' SD2/SDXL ``tokenizer_2`` turns it into id 0 because it registers the pad
``!`` as a special token.
"""

from __future__ import annotations

import functools
import gzip
import json
from importlib import resources
from pathlib import Path

from ..errors import ModelFileError

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
WORD_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
MERGES_USED = 49152 - 256 - 2  # CLIP keeps the first 48,894 merges: a 49,152-token budget less bytes and specials


def byte_symbols() -> list[str]:
    """The printable stand-in for each byte 0..255 (GPT-2/CLIP's byte-level alphabet), in vocabulary order.

    Bytes that are printable Latin-1 characters stand for themselves and come first, in byte order;
    the other 68 bytes are mapped to code points 256, 257, ... in byte order and follow.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def clip_vocab_and_merges(bpe_text: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary (token -> id) and merge list from the text of ``bpe_simple_vocab_16e6.txt``."""
    lines = bpe_text.split("\n")[1 : MERGES_USED + 1]  # line 0 is a version header
    merges = [tuple(line.split()) for line in lines]
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    return {token: i for i, token in enumerate(tokens)}, merges


@functools.lru_cache(maxsize=1)
def bundled_vocab() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """The vocabulary and merges derived from the shipped BPE file (read once per process)."""
    data = resources.files(__package__).joinpath("clip_vocab", VOCAB_FILE).read_bytes()
    vocab, merges = clip_vocab_and_merges(gzip.decompress(data).decode("utf-8"))
    return vocab, tuple(merges)


class CLIPTokenizer:
    """Prompt text -> CLIP token ids, without special tokens, truncation or padding.

    `encode` splits nothing into windows: `noisecraft.prompts` does that, A1111's way.
    `window` gives the plain single 77-token window (BOS, up to 75 ids, EOS, padding) that
    diffusers' pipelines feed the encoder.
    """

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]] | tuple):
        from tokenizers import AddedToken, Regex, Tokenizer, normalizers, pre_tokenizers
        from tokenizers.models import BPE

        for special in (BOS, EOS):
            if special not in vocab:
                raise ModelFileError(f"the CLIP vocabulary lacks {special}; it is not a CLIP tokenizer")
        self.vocab = vocab
        tokenizer = Tokenizer(BPE(vocab=vocab, merges=list(merges), continuing_subword_prefix="",
                                  end_of_word_suffix="</w>", unk_token=EOS, fuse_unk=False, dropout=None))
        tokenizer.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                                     normalizers.Lowercase()])
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        # BOS/EOS typed into a prompt stay themselves, as in CLIP and transformers
        tokenizer.add_special_tokens([AddedToken(BOS, normalized=False), AddedToken(EOS, normalized=False)])
        self._tokenizer = tokenizer
        self.bos_id, self.eos_id = vocab[BOS], vocab[EOS]
        self.comma_id = vocab.get(",</w>")

    @classmethod
    def bundled(cls) -> "CLIPTokenizer":
        """The tokenizer of OpenAI's CLIP (shared, built once per process)."""
        return _bundled_tokenizer()

    @classmethod
    def from_folder(cls, folder: str | Path) -> "CLIPTokenizer":
        """A diffusers/transformers tokenizer folder: ``vocab.json`` + ``merges.txt``, or ``tokenizer.json``."""
        vocab, merges = read_vocab_folder(Path(folder))
        if vocab == bundled_vocab()[0] and tuple(merges) == bundled_vocab()[1]:
            return cls.bundled()
        return cls(vocab, merges)

    def token_id(self, token: str) -> int:
        if token not in self.vocab:
            raise ModelFileError(f"the tokenizer has no token {token!r}")
        return self.vocab[token]

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without BOS/EOS, however long."""
        return [e.ids for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def window(self, text: str, pad_id: int | None = None, length: int = 77) -> list[int]:
        """BOS + the first length-2 ids + EOS, padded to `length` with `pad_id` (default EOS)."""
        ids = self.encode([text])[0][: length - 2]
        pad = self.eos_id if pad_id is None else pad_id
        return [self.bos_id, *ids, self.eos_id] + [pad] * (length - 2 - len(ids))


@functools.lru_cache(maxsize=1)
def _bundled_tokenizer() -> CLIPTokenizer:
    vocab, merges = bundled_vocab()
    return CLIPTokenizer(vocab, merges)


def read_vocab_folder(folder: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges from a tokenizer folder (the files transformers writes)."""
    vocab_file, merges_file, json_file = folder / "vocab.json", folder / "merges.txt", folder / "tokenizer.json"
    try:
        if vocab_file.is_file() and merges_file.is_file():
            vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
            lines = merges_file.read_text(encoding="utf-8").split("\n")
            merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
            return vocab, merges
        if json_file.is_file():
            model = json.loads(json_file.read_text(encoding="utf-8"))["model"]
            merges = [tuple(m.split()) if isinstance(m, str) else tuple(m) for m in model["merges"]]
            return model["vocab"], merges
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelFileError(f"the tokenizer in {folder} is unreadable ({error}); copy the folder again") from None
    raise ModelFileError(f"{folder} has no tokenizer (vocab.json and merges.txt, or tokenizer.json)")


def read_pad_token(folder: Path) -> str | None:
    """The pad token a tokenizer folder declares (``tokenizer_config.json`` or ``special_tokens_map.json``)."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        file = folder / name
        if file.is_file():
            try:
                pad = json.loads(file.read_text(encoding="utf-8")).get("pad_token")
            except ValueError:
                raise ModelFileError(f"{file} is not valid JSON; copy the folder again") from None
            if isinstance(pad, dict):
                pad = pad.get("content")
            if isinstance(pad, str):
                return pad
    return None
