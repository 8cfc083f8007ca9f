"""A1111 prompt syntax for CLIP encoders: attention weights, BREAK, 75-token chunks, emphasis.

The behaviour is AUTOMATIC1111 stable-diffusion-webui's, reimplemented from its description
(modules/prompt_parser.py ``parse_prompt_attention``, modules/sd_hijack_clip.py ``tokenize_line``
and ``process_tokens``, modules/sd_emphasis.py "Original"):

* ``(words)`` multiplies the weight of its words by 1.1, ``((words))`` by 1.21, ``[words]`` divides
  by 1.1, ``(words:1.5)`` multiplies by 1.5; brackets nest and multiply; an unclosed ``(`` or ``[``
  applies to the end of the prompt; ``\\(``, ``\\)``, ``\\[``, ``\\]``, ``\\\\`` are literal
  characters; a ``)``/``]`` with nothing open, a lone ``:`` and ``:1.5)`` outside brackets are text.
* ``BREAK`` (upper case, a word on its own) ends the current chunk.
* A prompt is tokenized piece by piece (each run of equal weight separately), then cut into
  chunks of 75 tokens, each encoded as its own 77-token window (BOS + 75 + EOS, padded). When a
  chunk is full and the last comma lies at most 20 tokens back, the tokens after that comma move
  to the next chunk, so phrases are not split across windows.
* After encoding, each token's state is multiplied by its weight and the chunk is rescaled so its
  mean equals the mean before weighting.

Where noisecraft differs on purpose: the mean is restored per prompt and chunk (A1111 takes it
over its whole batch, which in A1111 holds one prompt or copies of one, so the results agree);
brackets around ``BREAK`` do not stop it from breaking; a textual-inversion embedding moved by
the comma rule takes its vectors along; an unreadable weight such as ``(a:1.2.3)`` is text rather
than an error. Prompt editing and alternation (``[a:b:0.5]``, ``[a|b]``) are not supported: they
read as weighted text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import torch

ROUND, SQUARE = 1.1, 1 / 1.1
CHUNK = 75  # prompt tokens per window; BOS and EOS make it 77
COMMA_BACKTRACK = 20

_SYNTAX = re.compile(r"""
    \\(?P<escaped>[()\[\]\\]?)              # \( \) \[ \] \\ are literal; a lone backslash vanishes
  | (?P<open>[(\[])
  | :\s*(?P<weight>[+-]?[.\d]+)\s*\)        # ':1.3)' closes a round bracket with that weight
  | (?P<close>[)\]])
  | (?P<text>[^\\()\[\]:]+|:)               # plain text; a lone ':' is text too
""", re.X)
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


def parse_attention(prompt: str) -> list[tuple[str, float | None]]:
    """Split a prompt into (text, weight) runs; a weight of None marks a BREAK.

    >>> parse_attention("an (important) word")
    [('an ', 1.0), ('important', 1.1), (' word', 1.0)]
    """
    runs: list[list] = []  # [text, weight]; weights are multiplied in place as brackets close
    open_round: list[int] = []  # index into runs where each open bracket started
    open_square: list[int] = []

    def scale(start: int, factor: float) -> None:
        for run in runs[start:]:
            if run[1] is not None:
                run[1] *= factor

    for match in _SYNTAX.finditer(prompt):
        kind, token = match.lastgroup, match.group(0)
        if kind == "escaped":
            runs.append([match.group("escaped"), 1.0])
        elif kind == "open":
            (open_round if token == "(" else open_square).append(len(runs))
        elif kind == "weight" and open_round and _is_number(match.group("weight")):
            scale(open_round.pop(), float(match.group("weight")))
        elif kind == "close" and token == ")" and open_round:
            scale(open_round.pop(), ROUND)
        elif kind == "close" and token == "]" and open_square:
            scale(open_square.pop(), SQUARE)
        else:
            for i, part in enumerate(_BREAK.split(token)):
                if i:
                    runs.append(["BREAK", None])
                runs.append([part, 1.0])
    for start in open_round:
        scale(start, ROUND)
    for start in open_square:
        scale(start, SQUARE)

    merged: list[list] = []
    for text, weight in runs or [["", 1.0]]:
        if merged and weight is not None and merged[-1][1] == weight:
            merged[-1][0] += text
        else:
            merged.append([text, weight])
    return [(text, weight) for text, weight in merged]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass
class Chunk:
    """One 77-token window: ids (BOS, 75 ids or EOS padding, EOS), a weight per id, embeddings placed in it.

    ``vectors`` lists (position in ``ids``, embedding) for textual-inversion embeddings, whose
    slots hold the placeholder id 0 until the encoder writes the vectors there. Padding is EOS;
    an encoder whose pad token differs swaps it in after the first EOS.
    """

    ids: list[int]
    weights: list[float]
    vectors: list[tuple[int, object]] = field(default_factory=list)


def empty_chunk(bos: int, eos: int) -> Chunk:
    """The window of an empty prompt: what shorter prompts in a batch are padded with."""
    return Chunk([bos] + [eos] * (CHUNK + 1), [1.0] * (CHUNK + 2))


def chunk_tokens(pieces: list[tuple[list[int], float | None]], *, bos: int, eos: int, comma: int | None,
                 find_embedding: Callable[[list[int], int], tuple[object, int, int] | None] | None = None,
                 comma_backtrack: int = COMMA_BACKTRACK) -> list[Chunk]:
    """Cut weighted token runs into 77-token windows, A1111's way (see the module docstring).

    ``pieces``: (token ids, weight) per run, weight None for BREAK. ``find_embedding(ids, i)``
    returns (embedding, number of vectors, number of ids its name takes) when a textual-inversion
    name starts at ``ids[i]``, else None.
    """
    chunks: list[Chunk] = []
    ids: list[int] = []
    weights: list[float] = []
    vectors: list[tuple[int, object]] = []  # positions counted without the BOS
    last_comma = -1

    def close() -> None:
        nonlocal ids, weights, vectors, last_comma
        pad = CHUNK - len(ids)
        chunks.append(Chunk([bos, *ids] + [eos] * (pad + 1), [1.0, *weights] + [1.0] * (pad + 1),
                            [(at + 1, emb) for at, emb in vectors]))
        ids, weights, vectors, last_comma = [], [], [], -1

    for tokens, weight in pieces:
        if weight is None:
            close()
            continue
        i = 0
        while i < len(tokens):
            if tokens[i] == comma:
                last_comma = len(ids)
            elif comma_backtrack and len(ids) == CHUNK and last_comma != -1 and len(ids) - last_comma <= comma_backtrack:
                cut = last_comma + 1
                moved = ids[cut:], weights[cut:], [(at - cut, emb) for at, emb in vectors if at >= cut]
                ids, weights, vectors = ids[:cut], weights[:cut], [(at, emb) for at, emb in vectors if at < cut]
                close()
                ids, weights, vectors = (list(m) for m in moved)
            if len(ids) == CHUNK:
                close()
            found = find_embedding(tokens, i) if find_embedding else None
            if found is None:
                ids.append(tokens[i])
                weights.append(weight)
                i += 1
                continue
            embedding, n_vectors, n_ids = found
            if len(ids) + n_vectors > CHUNK:
                close()
            vectors.append((len(ids), embedding))
            ids += [0] * n_vectors
            weights += [weight] * n_vectors
            i += n_ids
    if ids or not chunks:
        close()
    return chunks


def tokenize_prompt(prompt: str, encode: Callable[[list[str]], list[list[int]]], *, bos: int, eos: int,
                    comma: int | None, find_embedding=None) -> list[Chunk]:
    """Parse a prompt's weights, tokenize each run with `encode`, and cut the result into chunks."""
    runs = parse_attention(prompt)
    token_lists = encode([text if weight is not None else "" for text, weight in runs])
    return chunk_tokens([(ids, weight) for ids, (_, weight) in zip(token_lists, runs)],
                        bos=bos, eos=eos, comma=comma, find_embedding=find_embedding)


def emphasize(states: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A1111's "Original" emphasis: scale each token's state by its weight, then restore the mean.

    ``states`` [N, L, D], ``weights`` [N, L]; the mean is taken per window (row). Rows whose
    weights are all 1 come back unchanged.
    """
    before = states.mean(dim=(1, 2), keepdim=True)
    weighted = states * weights.to(states.dtype).unsqueeze(-1)
    after = weighted.mean(dim=(1, 2), keepdim=True)
    plain = (weights == 1).all(dim=1).view(-1, 1, 1)
    return torch.where(plain, states, weighted * (before / after))
