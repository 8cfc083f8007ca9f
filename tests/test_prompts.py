"""A1111 prompt syntax: weights, BREAK, 75-token chunks with comma back-off, emphasis.

Expected values are A1111's (stable-diffusion-webui modules/prompt_parser.py doctests for the
parser; modules/sd_hijack_clip.py's chunking worked by hand on a toy tokenizer whose ids are
easy to read: word "wN" is id N, "," is id 5, BOS 1000, EOS 1001).
"""

import re

import pytest
import torch

from noisecraft.text.prompts import CHUNK, Chunk, chunk_tokens, empty_chunk, emphasize, parse_attention, tokenize_prompt

BOS, EOS, COMMA = 1000, 1001, 5


def toy_encode(texts):
    """'w12 w7, w3' -> [12, 7, 5, 3]."""
    return [[COMMA if t == "," else int(t[1:]) for t in re.findall(r"w\d+|,", text)] for text in texts]


def chunks_of(prompt, **kwargs):
    return tokenize_prompt(prompt, toy_encode, bos=BOS, eos=EOS, comma=COMMA, **kwargs)


def words(n, start=10):
    return " ".join(f"w{start + i}" for i in range(n))


# ---- parsing ---------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt, expected", [
    # A1111's own doctests
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),
    # more, worked by hand from the same rules
    ("((a))", [("a", 1.1 * 1.1)]),
    ("[[a]]", [("a", 1 / 1.1 / 1.1)]),
    ("(a:1.5) b", [("a", 1.5), (" b", 1.0)]),
    ("(a : 0.5 )", [("a ", 0.5)]),
    ("(a [b] c)", [("a ", 1.1), ("b", 1.1 / 1.1), (" c", 1.1)]),
    ("a:b (c:x)", [("a:b ", 1.0), ("c:x", 1.1)]),  # a colon that is not a weight is text
    ("x :1.2) y ] z", [("x :1.2) y ] z", 1.0)]),  # closers with nothing open are text
    ("a \\\\ b \\ c", [("a \\ b  c", 1.0)]),  # \\ is a backslash; a lone backslash vanishes
    ("(a:1.2.3)", [("a:1.2.3)", 1.1)]),  # an unreadable weight is text, the bracket stays open (A1111 raises)
    ("", [("", 1.0)]),
])
def test_parse_attention(prompt, expected):
    got = parse_attention(prompt)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected], rel=1e-12)


def test_parse_attention_merges_exactly_like_a1111():
    # the doctest's weights are compared exactly: the same products in the same order
    got = parse_attention("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")
    assert got[1] == ("house", 1.5730000000000004) and got[7] == ("sky", 1.4641000000000006)


def test_break_splits_only_as_an_upper_case_word():
    assert parse_attention("a cat BREAK a dog") == [("a cat", 1.0), ("BREAK", None), ("a dog", 1.0)]
    assert parse_attention("BREAKFAST, break, Break") == [("BREAKFAST, break, Break", 1.0)]
    # noisecraft: brackets around BREAK do not stop it breaking (in A1111 they turn it into text)
    assert parse_attention("(a BREAK b)") == [("a", 1.1), ("BREAK", None), ("b", 1.1)]


# ---- chunking ----------------------------------------------------------------------------------

def test_short_prompt_is_one_window_padded_with_eos():
    (chunk,) = chunks_of("w10 w11 w12")
    assert chunk.ids == [BOS, 10, 11, 12] + [EOS] * 73
    assert chunk.weights == [1.0] * 77 and len(chunk.ids) == 77


def test_empty_prompt_is_the_empty_window():
    (chunk,) = chunks_of("")
    assert chunk.ids == empty_chunk(BOS, EOS).ids == [BOS] + [EOS] * 76


def test_75_tokens_fit_76_make_two_windows():
    (one,) = chunks_of(words(75))
    assert one.ids == [BOS] + list(range(10, 85)) + [EOS]
    first, second = chunks_of(words(76))
    assert first.ids == [BOS] + list(range(10, 85)) + [EOS]
    assert second.ids == [BOS, 85] + [EOS] * 75


def test_comma_back_off_moves_the_last_phrase_to_the_next_window():
    # 60 words, a comma, 20 words: the window fills at the 14th word after the comma (15 back <= 20)
    first, second = chunks_of(f"{words(60)}, {words(20, start=100)}")
    assert first.ids == [BOS] + list(range(10, 70)) + [COMMA] + [EOS] * 15
    assert second.ids == [BOS] + list(range(100, 120)) + [EOS] * 56


def test_comma_back_off_limit_is_20_tokens():
    # comma at index 55: 75 - 55 = 20 -> moved; at index 54: 21 -> plain cut at 75
    first, _ = chunks_of(f"{words(55)}, {words(30, start=100)}")
    assert first.ids[1:57] == list(range(10, 65)) + [COMMA] and first.ids[57:] == [EOS] * 20
    first, second = chunks_of(f"{words(54)}, {words(30, start=100)}")
    assert first.ids[1:76] == list(range(10, 64)) + [COMMA] + list(range(100, 120))
    assert second.ids[1:11] == list(range(120, 130))


def test_comma_back_off_can_be_turned_off():
    pieces = [(toy_encode([f"{words(60)}, {words(20, start=100)}"])[0], 1.0)]
    first, _ = chunk_tokens(pieces, bos=BOS, eos=EOS, comma=COMMA, comma_backtrack=0)
    assert first.ids[-2] == 113  # filled to 75 tokens


def test_break_starts_a_new_window():
    first, second = chunks_of("w10 w11 BREAK w12")
    assert first.ids[:4] == [BOS, 10, 11, EOS] and second.ids[:3] == [BOS, 12, EOS]
    # as A1111: a leading BREAK leaves an empty first window, a trailing one adds nothing
    assert [c.ids[1] for c in chunks_of("BREAK w10")] == [EOS, 10]
    assert len(chunks_of("w10 BREAK")) == 1


def test_weights_follow_their_tokens():
    (chunk,) = chunks_of("w10 (w11 w12:1.5) [w13]")
    assert chunk.ids[:5] == [BOS, 10, 11, 12, 13]
    assert chunk.weights[:6] == pytest.approx([1.0, 1.0, 1.5, 1.5, 1 / 1.1, 1.0])


class Emb:
    def __init__(self, name_ids, n):
        self.ids, self.n = tuple(name_ids), n


def finder(*embs):
    def find(ids, at):
        for e in embs:
            if tuple(ids[at : at + len(e.ids)]) == e.ids:
                return e, e.n, len(e.ids)
        return None
    return find


def test_embedding_takes_as_many_slots_as_it_has_vectors():
    emb = Emb([7, 8], 3)  # a name of two tokens, three vectors
    (chunk,) = chunks_of("w10 (w7 w8) w11", find_embedding=finder(emb))
    assert chunk.ids[:6] == [BOS, 10, 0, 0, 0, 11]
    assert chunk.weights[2:5] == pytest.approx([1.1] * 3)
    assert chunk.vectors == [(2, emb)]


def test_embedding_that_does_not_fit_starts_a_new_window():
    emb = Emb([7], 3)
    first, second = chunks_of(f"{words(73)} w7", find_embedding=finder(emb))
    assert first.vectors == [] and first.ids[74:] == [EOS] * 3
    assert second.ids[:5] == [BOS, 0, 0, 0, EOS] and second.vectors == [(1, emb)]


def test_embedding_moved_by_comma_back_off_keeps_its_vectors():
    emb = Emb([7], 2)
    first, second = chunks_of(f"{words(60)}, w7 {words(20, start=100)}", find_embedding=finder(emb))
    assert first.vectors == [] and first.ids[61] == COMMA
    assert second.vectors == [(1, emb)] and second.ids[:4] == [BOS, 0, 0, 100]


# ---- emphasis ----------------------------------------------------------------------------------

def test_emphasis_scales_tokens_and_restores_each_windows_mean():
    z = torch.randn(2, 77, 8, generator=torch.Generator().manual_seed(0)) + 0.5
    w = torch.ones(2, 77)
    w[0, 3] = 1.5
    got = emphasize(z, w)
    assert torch.equal(got[1], z[1])  # unweighted window: untouched, bit for bit
    assert torch.allclose(got[0].mean(), z[0].mean(), rtol=1e-6)
    ratio = got[0] / z[0]
    assert torch.allclose(ratio[3], 1.5 * ratio[4], rtol=1e-5)
    expected = z[0] * w[0, :, None]
    expected = expected * (z[0].mean() / expected.mean())
    assert torch.allclose(got[0], expected, rtol=1e-6)


def test_chunk_is_77_long_everywhere():
    for chunk in chunks_of(f"{words(200)}, w9 BREAK ((w3)) [w4:0.7]") + [empty_chunk(BOS, EOS)]:
        assert isinstance(chunk, Chunk) and len(chunk.ids) == len(chunk.weights) == CHUNK + 2
        assert chunk.ids[0] == BOS and chunk.ids[-1] == EOS
