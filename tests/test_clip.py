"""CLIP text encoders against diffusers' encode_prompt and transformers on the same random weights.

Set-up (tests/clip_helpers.py): transformers' CLIPTextModel / CLIPTextModelWithProjection with
CLIP's real 49,408-token vocabulary, 3 layers, 64-wide heads, widths 128 (CLIP-L stand-in) and
192 (ViT-H / ViT-bigG stand-ins), random weights of unit scale. The same tensors go into the files
real checkpoints are: a single-file state dict (SD1: cond_stage_model.transformer.text_model.*; SD2:
OpenCLIP layout under cond_stage_model.model.*, converted here independently of noisecraft; SDXL:
conditioner.embedders.0.transformer.* + conditioner.embedders.1.model.*) or a diffusers folder
(save_pretrained + tokenizer files). References: diffusers' StableDiffusionPipeline /
StableDiffusionXLPipeline.encode_prompt with transformers' CLIPTokenizer (pad "!" for the OpenCLIP
encoders, as diffusers' SD2/SDXL repositories set it).

Metric: max |ours - reference| / max |reference|, fp32; tolerance 1e-4 (the issue's goal). The
token states come out bit-identical (same operations in the same order); the pooled SDXL vector
differs by rounding only.

Measured (diffusers 0.42.1, transformers 5.24.0, torch 2.13 CPU; `python tests/test_clip.py` reprints it):
    case                                          max rel diff
    sd1 single file: tokens                            0.0e+00
    sd1 single file: negative tokens                   0.0e+00
    sd2 single file (OpenCLIP): tokens                 0.0e+00
    sd2 single file (OpenCLIP): negative tokens        0.0e+00
    sdxl single file: tokens                           0.0e+00
    sdxl single file: negative tokens                  0.0e+00
    sdxl single file: pooled                           4.5e-07
    sdxl single file: negative pooled                  4.0e-07
    sd1 clip skip 2 vs diffusers clip_skip=1           0.0e+00
    sd2 clip skip 2 vs diffusers clip_skip=1           0.0e+00
    sdxl clip skip 2 vs diffusers clip_skip=1          0.0e+00
    sd1 folder: tokens                                 0.0e+00
    sd2 folder: tokens                                 0.0e+00
    sdxl folder: tokens                                0.0e+00
    sdxl folder: pooled                                4.5e-07
    sd1 long prompt (2 windows) vs transformers        0.0e+00
    sd1 weighted prompt vs hand-applied emphasis       0.0e+00
    sd1 textual inversion vs diffusers                 0.0e+00
    sdxl textual inversion vs diffusers                0.0e+00
"""

from __future__ import annotations

import copy
import hashlib
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from clip_helpers import (BIG_G, CLIP_L, VIT_H, hf_state, hf_text_model, hf_to_openclip, hf_tokenizer, prefixed,
                          reference_clip_bpe, save_safetensors, truncated, unet_stub, write_text_encoder_folder, write_tokenizer_folder)
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from noisecraft.errors import ModelFileError, UserError
from noisecraft.checkpoints.embeddings import load_textual_inversion
from noisecraft.checkpoints.keymaps import openclip_to_hf
from noisecraft.checkpoints.sd import text_encoder_from_folder as sd_text_encoder_from_folder
from noisecraft.checkpoints.sd import text_encoder_from_single_file as sd_text_encoder_from_single_file
from noisecraft.text.clip import SDTextEncoder, text_family
from noisecraft.text.clip_tokenizer import CLIPTokenizer, bundled_vocab

TOL = 1e-4
PROMPTS = ["a photo of an astronaut riding a horse on mars, 4k",
           "Crème brûlée & ÉCLAIRS: 3 pieces; it's 50% off?"]
NEGATIVES = ["", "blurry, low quality"]  # no "!" here: see test_exclamation_mark_is_an_ordinary_token


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def cloned(state: dict) -> dict:
    """A copy to build an encoder that a test changes: loading shares the given tensors' memory."""
    return {k: v.clone() for k, v in state.items()}


def sd_pipe(text_encoder, tokenizer):
    return StableDiffusionPipeline(vae=None, text_encoder=text_encoder, tokenizer=tokenizer, unet=None, scheduler=None,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def xl_pipe(l, g, tokenizer, tokenizer_2):
    return StableDiffusionXLPipeline(vae=None, text_encoder=l, text_encoder_2=g, tokenizer=tokenizer,
                                     tokenizer_2=tokenizer_2, unet=None, scheduler=None)


def build_sd1():
    te = hf_text_model(CLIP_L, 1)
    state = {**unet_stub(), **prefixed("cond_stage_model.transformer.", hf_state(te))}
    return SimpleNamespace(hf=te, state=state, ours=sd_text_encoder_from_single_file(state, "sd1"),
                           pipe=sd_pipe(te, hf_tokenizer()))


def build_sd2():
    full = hf_text_model(VIT_H, 2)  # all layers of "OpenCLIP-H", as a single file holds them
    state = {**unet_stub(), **prefixed("cond_stage_model.model.", hf_to_openclip(hf_state(full)))}
    te = truncated(full, 2)  # diffusers' SD2 text_encoder: the last layer dropped
    return SimpleNamespace(hf=te, state=state, ours=sd_text_encoder_from_single_file(state, "sd2-v"),
                           pipe=sd_pipe(te, hf_tokenizer("!")))


def build_sdxl():
    l, g = hf_text_model(CLIP_L, 3), hf_text_model(BIG_G, 4, projection=True)
    state = {**unet_stub(), **prefixed("conditioner.embedders.0.transformer.", hf_state(l)),
             **prefixed("conditioner.embedders.1.model.", hf_to_openclip(hf_state(g)))}
    return SimpleNamespace(l=l, g=g, state=state, ours=sd_text_encoder_from_single_file(state, "sdxl"),
                           pipe=xl_pipe(l, g, hf_tokenizer(), hf_tokenizer("!")))


@pytest.fixture(scope="module")
def sd1():
    return build_sd1()


@pytest.fixture(scope="module")
def sd2():
    return build_sd2()


@pytest.fixture(scope="module")
def sdxl():
    return build_sdxl()


# ---- parity cases (shared by the tests and the printed table) ---------------------------------

def sd_case(ctx, ours=None):
    e, n = ctx.pipe.encode_prompt(PROMPTS, "cpu", 1, True, NEGATIVES)
    got = (ours or ctx.ours).encode(PROMPTS + NEGATIVES)
    assert got.tokens.shape == (4, 77, e.shape[-1]) and got.mask.all()
    return {"tokens": rel(got.tokens[:2], e), "negative tokens": rel(got.tokens[2:], n)}


def sd_clip_skip_case(ctx):
    """Clip skip 2 against diffusers' clip_skip=1 recipe: hidden_states[-2], then final_layer_norm.

    Spelled out on transformers because diffusers 0.42.1's own clip_skip path reaches for
    ``text_encoder.text_model``, which transformers 5's CLIPTextModel no longer has.
    """
    ids = ctx.pipe.tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = ctx.hf(ids, output_hidden_states=True).hidden_states[-2]
        expected = getattr(ctx.hf, "text_model", ctx.hf).final_layer_norm(hidden)
    return rel(ctx.ours.encode(PROMPTS, clip_skip=2).tokens, expected)


def xl_case(ctx, ours=None):
    e, n, pe, pn = ctx.pipe.encode_prompt(PROMPTS, device="cpu", num_images_per_prompt=1,
                                          do_classifier_free_guidance=True, negative_prompt=NEGATIVES)
    got = (ours or ctx.ours).encode(PROMPTS + NEGATIVES)
    assert got.tokens.shape == (4, 77, 128 + 192) and got.pooled.shape == (4, 160)
    return {"tokens": rel(got.tokens[:2], e), "negative tokens": rel(got.tokens[2:], n),
            "pooled": rel(got.pooled[:2], pe), "negative pooled": rel(got.pooled[2:], pn)}


def xl_clip_skip_case(ctx):
    # diffusers applies clip_skip to the prompt only (its negative branch always takes layer -2)
    e, _, _, _ = ctx.pipe.encode_prompt(PROMPTS, device="cpu", num_images_per_prompt=1,
                                        do_classifier_free_guidance=False, clip_skip=1)
    return rel(ctx.ours.encode(PROMPTS, clip_skip=2).tokens, e)


def sd1_folder(root: Path, ctx, tokenizer_json: bool = False) -> Path:
    write_text_encoder_folder(root / "text_encoder", ctx.hf)
    if tokenizer_json:  # what transformers 5's save_pretrained writes
        hf_tokenizer().save_pretrained(root / "tokenizer")
    else:  # what Stable Diffusion repositories hold
        write_tokenizer_folder(root / "tokenizer", "<|endoftext|>")
    return root


def long_prompt_case(ctx):
    """A 105-token prompt: two windows, each the transformers encoding of its own 77 ids."""
    long = " ".join(["a red apple on a wooden table"] * 15)
    ids = ctx.pipe.tokenizer(long, add_special_tokens=False).input_ids
    assert len(ids) == 105
    bos, eos = 49406, 49407
    windows = torch.tensor([[bos, *ids[:75], eos], [bos, *ids[75:], eos] + [eos] * 45])
    with torch.no_grad():
        expected = ctx.hf(windows).last_hidden_state.reshape(1, 154, -1)
    got = ctx.ours.encode([long, ""])
    assert got.tokens.shape == (2, 154, 128)
    empty = ctx.ours.encode([""]).tokens
    assert rel(got.tokens[1], torch.cat([empty[0], empty[0]])) < 1e-6  # negative padded with empty windows
    return rel(got.tokens[:1], expected)


def weighted_case(ctx):
    """(red:1.5) and [wooden] against the plain prompt's states, weighted and rescaled by hand."""
    plain = "a red apple on a wooden table"
    ids = ctx.pipe.tokenizer(plain, padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert (ids[0, 1:8] != 49407).all() and ids[0, 8] == 49407  # seven words, seven tokens
    with torch.no_grad():
        z = ctx.hf(ids).last_hidden_state[0]
    w = torch.ones(77)
    w[2], w[6] = 1.5, 1 / 1.1
    expected = z * w[:, None]
    expected = expected * (z.mean() / expected.mean())
    got = ctx.ours.encode(["a (red:1.5) apple on a [wooden] table"]).tokens[0]
    assert rel(got, z) > 1e-2  # the weights did something
    return rel(got, expected)


def ti_sd1_case(ctx, tmp: Path):
    vec = torch.randn(2, 128, generator=torch.Generator().manual_seed(5))
    path = save_safetensors(tmp / "mystyle.safetensors", {"emb_params": vec})
    ours = sd_text_encoder_from_single_file(ctx.state, "sd1")
    assert load_textual_inversion(ours, path) == "mystyle"
    pipe = sd_pipe(copy.deepcopy(ctx.hf), hf_tokenizer())
    pipe.load_textual_inversion({"emb_params": vec}, token="mystyle")
    prompts = ["a mystyle photo of a cat", "a photo of a cat"]
    expected, _ = pipe.encode_prompt(prompts, "cpu", 1, False)
    got = ours.encode(prompts).tokens
    assert rel(got[0], ctx.ours.encode(prompts[:1]).tokens[0]) > 1e-2  # the embedding changed the states
    return rel(got, expected)


def ti_sdxl_case(ctx, tmp: Path):
    g = torch.Generator().manual_seed(6)
    clip_l, clip_g = torch.randn(3, 128, generator=g), torch.randn(3, 192, generator=g)
    path = save_safetensors(tmp / "xlstyle.safetensors", {"clip_l": clip_l, "clip_g": clip_g})
    ours = sd_text_encoder_from_single_file(ctx.state, "sdxl")
    assert load_textual_inversion(ours, path) == "xlstyle"
    pipe = xl_pipe(copy.deepcopy(ctx.l), copy.deepcopy(ctx.g), hf_tokenizer(), hf_tokenizer("!"))
    pipe.load_textual_inversion(clip_l, token="xlstyle", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(clip_g, token="xlstyle", text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)
    prompts = ["an xlstyle photo of a cat"]
    e, _, pe, _ = pipe.encode_prompt(prompts, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
    got = ours.encode(prompts)
    return max(rel(got.tokens, e), rel(got.pooled, pe))


# ---- tokenizer ---------------------------------------------------------------------------------

TRICKY = [
    "A photo of an ASTRONAUT riding a horse",
    "it's   a\tnew\n\nday, isn't it? they'll've we'd I'M",
    "Crème brûlée, naïve café — 日本語のテキスト 🍣🍕 emoji 👩‍👩‍👧",
    "e\u0301cole (NFD) vs \u00e9cole (NFC)",
    "a,b;c:d.e?f  (x:1.2) [y] {z} <tag> 'quoted' \"double\" “curly” ‘single’ ... --- ___",
    "1234567890 3.14 1e10 50% $5 #hashtag @user",
    "<|startoftext|>special<|endoftext|> tokens",
    "ÀÉÎÕÜ ßẞ İstanbul ΑΒΓ ДЖЯ",
    "&amp; &lt;html&gt; \\ / | ~ ^",
    "masterpiece, best quality, " * 20,
    "",
    "   leading and trailing   ",
]


def test_vocabulary_is_openai_clips():
    data = (Path(__file__).parents[1] / "src/noisecraft/text/clip_vocab/bpe_simple_vocab_16e6.txt.gz").read_bytes()
    assert hashlib.sha256(data).hexdigest() == "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
    vocab, merges = bundled_vocab()
    assert len(vocab) == 49408 and len(merges) == 48894
    assert (vocab["!"], vocab["!</w>"], vocab[",</w>"], vocab["<|startoftext|>"], vocab["<|endoftext|>"]) == (0, 256, 267, 49406, 49407)


def test_tokenizer_matches_transformers_on_tricky_text():
    ours, reference = CLIPTokenizer.bundled(), hf_tokenizer()
    expected = reference(TRICKY, add_special_tokens=False).input_ids
    assert ours.encode(TRICKY) == expected
    assert len(expected[9]) > 77  # the long one really is long
    for text in TRICKY:
        assert ours.window(text) == reference(text, padding="max_length", max_length=77, truncation=True).input_ids


def test_tokenizer_matches_clips_algorithm_written_out():
    """Against a plain-Python BPE (tests/clip_helpers.py), not the tokenizers library both others use."""
    texts = [t for t in TRICKY if "<|" not in t] + ["photorealistic, ultra-detailed 8k uhd!!! hyper-realism"]
    assert CLIPTokenizer.bundled().encode(texts) == [reference_clip_bpe(t) for t in texts]


def test_tokenizer_pads_with_exclamation_for_openclip_encoders():
    ours, reference = CLIPTokenizer.bundled(), hf_tokenizer("!")
    for text in TRICKY:
        assert ours.window(text, pad_id=0) == reference(text, padding="max_length", max_length=77, truncation=True).input_ids


def test_exclamation_mark_is_an_ordinary_token():
    """'!' in a prompt is '!</w>' (256) for every encoder, as OpenCLIP and A1111 tokenize it.

    diffusers' SD2/SDXL tokenizer_2 registers its pad '!' as a special token and so turns every
    '!' in a prompt into id 0; noisecraft does not copy that.
    """
    assert CLIPTokenizer.bundled().encode(["wow!"]) == [[2781, 256]]
    assert hf_tokenizer("!")("wow!", add_special_tokens=False).input_ids == [2781, 0]  # the diffusers quirk


def test_folder_tokenizer_layouts(tmp_path):
    write_tokenizer_folder(tmp_path / "a", "!")
    hf_tokenizer().save_pretrained(tmp_path / "b")
    for folder in ("a", "b"):
        assert CLIPTokenizer.from_folder(tmp_path / folder).encode(TRICKY[:3]) == CLIPTokenizer.bundled().encode(TRICKY[:3])
    with pytest.raises(ModelFileError, match="no tokenizer"):
        CLIPTokenizer.from_folder(tmp_path)


# ---- parity ------------------------------------------------------------------------------------

def test_sd1_single_file_matches_diffusers(sd1):
    assert max(sd_case(sd1).values()) <= TOL


def test_sd1_single_file_old_layout_and_fp16_weights(sd1):
    """Old checkpoints lack the 'text_model.' level and often store fp16 and a position_ids buffer."""
    state = {k.replace("transformer.text_model.", "transformer."): v.half() for k, v in sd1.state.items()}
    state["cond_stage_model.transformer.embeddings.position_ids"] = torch.arange(77.0)[None] + 0.3  # broken ids are ignored
    ours = sd_text_encoder_from_single_file(state, "sd15")
    got, reference = ours.encode(PROMPTS).tokens, sd1.ours.encode(PROMPTS).tokens
    assert 0 < rel(got, reference) < 1e-2  # fp16-rounded weights, fp32 compute


def test_sd1_clip_skip_matches_diffusers(sd1):
    assert sd_clip_skip_case(sd1) <= TOL
    with pytest.raises(UserError, match="clip skip"):
        sd1.ours.encode(["x"], clip_skip=4)


def test_sd2_single_file_openclip_layout_matches_diffusers(sd2):
    assert len(sd2.ours.text_encoder.text_model.encoder.layers) == 2  # the last OpenCLIP layer is dropped
    assert max(sd_case(sd2).values()) <= TOL


def test_sd2_clip_skip_matches_diffusers(sd2):
    assert sd_clip_skip_case(sd2) <= TOL


def test_sdxl_single_file_matches_diffusers(sdxl):
    assert max(xl_case(sdxl).values()) <= TOL


def test_sdxl_clip_skip_matches_diffusers(sdxl):
    assert xl_clip_skip_case(sdxl) <= TOL


def test_parity_metric_can_fail(sd1):
    """The comparisons above are not vacuous: one changed weight shows far above the tolerance."""
    ours = sd_text_encoder_from_single_file(cloned(sd1.state), "sd1")
    with torch.no_grad():
        ours.text_encoder.text_model.encoder.layers[1].mlp.fc2.bias[0] += 0.1
    assert max(sd_case(sd1, ours).values()) > 100 * TOL


def test_openclip_conversion_round_trips(sdxl):
    original = hf_state(sdxl.g)
    openclip = hf_to_openclip(original)
    back = openclip_to_hf({**openclip, "visual.proj": torch.zeros(2, 2), "attn_mask": torch.zeros(77, 77)})
    assert back.keys() == original.keys() and all(torch.equal(back[k], original[k]) for k in original)
    with pytest.raises(ModelFileError, match="unexpected OpenCLIP text-encoder tensor 'transformer.resblocks.0.attn.q'"):
        openclip_to_hf({**openclip, "transformer.resblocks.0.attn.q": torch.zeros(1)})


def test_sd1_folder_matches_diffusers(sd1, tmp_path):
    for tokenizer_json, root in ((False, tmp_path / "a"), (True, tmp_path / "b")):
        sd1_folder(root, sd1, tokenizer_json)
        ours = sd_text_encoder_from_folder(root, "sd1")
        assert max(sd_case(sd1, ours).values()) <= TOL


def test_sd2_folder_matches_diffusers(sd2, tmp_path):
    write_text_encoder_folder(tmp_path / "text_encoder", sd2.hf)
    write_tokenizer_folder(tmp_path / "tokenizer", "!")
    ours = sd_text_encoder_from_folder(tmp_path, "sd2")
    assert ours.pad_ids == {"text_encoder": 0}
    assert max(sd_case(sd2, ours).values()) <= TOL


def test_sdxl_folder_matches_diffusers(sdxl, tmp_path):
    write_text_encoder_folder(tmp_path / "text_encoder", sdxl.l)
    write_text_encoder_folder(tmp_path / "text_encoder_2", sdxl.g)
    write_tokenizer_folder(tmp_path / "tokenizer", "<|endoftext|>")
    write_tokenizer_folder(tmp_path / "tokenizer_2", "!")
    ours = sd_text_encoder_from_folder(tmp_path, "sdxl")
    assert max(xl_case(sdxl, ours).values()) <= TOL


def test_long_prompt_is_two_windows(sd1):
    assert len(sd1.ours.chunks(" ".join(["a red apple on a wooden table"] * 15))) == 2
    assert long_prompt_case(sd1) <= TOL


def test_prompt_weights_follow_a1111(sd1):
    assert weighted_case(sd1) <= TOL


def test_break_and_batch_padding(sdxl):
    got = sdxl.ours.encode(["a cat BREAK a dog", "a cat"])
    assert got.tokens.shape == (2, 154, 320) and got.pooled.shape == (2, 160)
    alone = sdxl.ours.encode(["a cat"])
    same = lambda a, b: rel(a, b) < 1e-6  # batch size may change the rounding of a matmul
    assert same(got.tokens[1, :77], alone.tokens[0]) and same(got.pooled[1], alone.pooled[0])
    assert same(got.tokens[0, :77], alone.tokens[0])  # the window before BREAK is "a cat" alone
    assert same(got.tokens[1, 77:], sdxl.ours.encode([""]).tokens[0])  # padded with the empty prompt's window


def test_bf16_on_request(sd1):
    ours = sd_text_encoder_from_single_file(sd1.state, "sd1", dtype=torch.bfloat16)
    assert ours.text_encoder.text_model.final_layer_norm.weight.dtype == torch.bfloat16
    got = ours.encode(PROMPTS)
    assert got.tokens.dtype == torch.float32 and rel(got.tokens, sd1.ours.encode(PROMPTS).tokens) < 0.1


# ---- textual inversion -------------------------------------------------------------------------

def test_textual_inversion_matches_diffusers(sd1, tmp_path):
    assert ti_sd1_case(sd1, tmp_path) <= TOL


def test_sdxl_textual_inversion_matches_diffusers(sdxl, tmp_path):
    assert ti_sdxl_case(sdxl, tmp_path) <= TOL


def test_textual_inversion_formats_agree(sd1, tmp_path):
    vec = torch.randn(2, 128)
    files = {
        "a1111.safetensors": lambda p: save_safetensors(p, {"emb_params": vec}),
        "a1111.pt": lambda p: torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vec.clone().requires_grad_()},
                                          "name": "a1111", "step": 3000, "sd_checkpoint": "abc", "sd_checkpoint_name": "x"}, p),
        "learned_embeds.safetensors": lambda p: save_safetensors(p, {"<my-style>": vec}),
        "learned_embeds.bin": lambda p: torch.save({"<my-style>": vec[None]}, p),  # [1, n, D] as some trainers save
    }
    results = []
    for name, write in files.items():
        write(tmp_path / name)
        ours = SDTextEncoder("sd1", {"text_encoder": sd1.ours.text_encoder}, sd1.ours.tokenizer, {"text_encoder": "<|endoftext|>"})
        token = load_textual_inversion(ours, tmp_path / name, token="mystyle" if name.startswith("a1111") else None)
        assert token == ("mystyle" if name.startswith("a1111") else "<my-style>")
        results.append(ours.encode([f"a {token} photo, ({token}:1.2)"]).tokens)
    assert all(torch.equal(r, results[0]) for r in results)
    assert load_textual_inversion(ours, tmp_path / "a1111.safetensors") == "a1111"  # default token: the file name


def test_pickle_with_code_is_refused(sd1, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"string_to_param": {"*": Payload()}}, tmp_path / "evil.pt")
    with open(tmp_path / "evil.bin", "wb") as f:
        pickle.dump({"emb_params": Payload()}, f, protocol=2)
    (tmp_path / "evil.safetensors").write_bytes((tmp_path / "evil.bin").read_bytes())
    for name in ("evil.pt", "evil.bin"):
        with pytest.raises(ModelFileError, match="refuses pickles that could run code"):
            load_textual_inversion(sd1.ours, tmp_path / name)
    with pytest.raises(ModelFileError, match="named .safetensors but is a pickle"):
        load_textual_inversion(sd1.ours, tmp_path / "evil.safetensors")
    assert not marker.exists()
    (tmp_path / "cut.pt").write_bytes((tmp_path / "evil.pt").read_bytes()[:100])
    with pytest.raises(ModelFileError, match="corrupt PyTorch file"):
        load_textual_inversion(sd1.ours, tmp_path / "cut.pt")
    (tmp_path / "junk.pt").write_text("hello")
    with pytest.raises(ModelFileError, match="neither a safetensors file nor a PyTorch checkpoint"):
        load_textual_inversion(sd1.ours, tmp_path / "junk.pt")


def test_embedding_for_another_family_is_refused(sd1, sdxl, tmp_path):
    save_safetensors(tmp_path / "wide.safetensors", {"emb_params": torch.randn(1, 1024)})
    with pytest.raises(ModelFileError, match=r"takes \[n, 128\]"):
        load_textual_inversion(sd1.ours, tmp_path / "wide.safetensors")
    save_safetensors(tmp_path / "xl.safetensors", {"clip_l": torch.randn(1, 128), "clip_g": torch.randn(1, 192)})
    with pytest.raises(ModelFileError, match="is for SDXL"):
        load_textual_inversion(sd1.ours, tmp_path / "xl.safetensors")
    with pytest.raises(ModelFileError, match="needs clip_l and clip_g"):
        load_textual_inversion(sdxl.ours, tmp_path / "wide.safetensors")


# ---- LoRA hook and errors ------------------------------------------------------------------------

def test_lora_targets_resolve_kohya_and_diffusers_names(sd1, sdxl):
    from noisecraft.checkpoints.lora import text_lora_targets

    t = text_lora_targets(sd1.ours)
    layer0 = sd1.ours.text_encoder.text_model.encoder.layers[0]
    assert t["lora_te_text_model_encoder_layers_0_self_attn_q_proj"] is layer0.self_attn.q_proj
    assert len(t) == 3 * 6 and all(k.startswith("lora_te_text_model_encoder_layers_") for k in t)  # q k v out fc1 fc2
    modules = dict(sd1.ours.named_modules())  # diffusers/PEFT keys are module paths
    assert modules["text_encoder.text_model.encoder.layers.2.mlp.fc2"] is t["lora_te_text_model_encoder_layers_2_mlp_fc2"]
    x = text_lora_targets(sdxl.ours)
    assert sum(k.startswith("lora_te1_") for k in x) == sum(k.startswith("lora_te2_") for k in x) == 18 == len(x) // 2
    assert x["lora_te2_text_model_encoder_layers_1_self_attn_out_proj"] is sdxl.ours.text_encoder_2.text_model.encoder.layers[1].self_attn.out_proj
    assert dict(sdxl.ours.named_modules())["text_encoder_2.text_model.encoder.layers.1.self_attn.out_proj"] is \
        x["lora_te2_text_model_encoder_layers_1_self_attn_out_proj"]


def test_lora_target_changes_the_output(sd1):
    from noisecraft.checkpoints.lora import text_lora_targets

    ours = sd_text_encoder_from_single_file(cloned(sd1.state), "sd1")
    before = ours.encode(PROMPTS).tokens
    with torch.no_grad():
        text_lora_targets(ours)["lora_te_text_model_encoder_layers_0_self_attn_v_proj"].weight.mul_(1.5)
    assert rel(ours.encode(PROMPTS).tokens, before) > 1e-3


def test_errors_are_one_sentence(sd1):
    with pytest.raises(ModelFileError, match=r"no text encoder weights \(cond_stage_model.transformer"):
        sd_text_encoder_from_single_file(unet_stub(), "sd1")
    with pytest.raises(ModelFileError, match=r"conditioner.embedders.0.transformer.\*\) for a sdxl model"):
        sd_text_encoder_from_single_file(sd1.state, "sdxl")
    broken = {k: v for k, v in sd1.state.items() if "layers.1.mlp.fc1.weight" not in k}
    with pytest.raises(ModelFileError, match="lacks text_model.encoder.layers.1.mlp.fc1.weight"):
        sd_text_encoder_from_single_file(broken, "sd1")
    with pytest.raises(UserError, match="no CLIP text encoder for model family 'kandinsky'"):
        text_family("kandinsky")
    assert [text_family(f) for f in ("sd15", "SD1.5", "sd2-v", "sd21", "sdxl-base", "sdxl")] == ["sd1", "sd1", "sd2", "sd2", "sdxl", "sdxl"]


def test_folder_errors(tmp_path):
    with pytest.raises(ModelFileError, match="no text_encoder/config.json"):
        sd_text_encoder_from_folder(tmp_path, "sd1")


if __name__ == "__main__":
    import tempfile

    torch.set_num_threads(1)
    rows = []
    s1, s2, xl = build_sd1(), build_sd2(), build_sdxl()
    for label, case in (("sd1 single file", sd_case(s1)), ("sd2 single file (OpenCLIP)", sd_case(s2)),
                        ("sdxl single file", xl_case(xl))):
        rows += [(f"{label}: {k}", v) for k, v in case.items()]
    rows += [("sd1 clip skip 2 vs diffusers clip_skip=1", sd_clip_skip_case(s1)),
             ("sd2 clip skip 2 vs diffusers clip_skip=1", sd_clip_skip_case(s2)),
             ("sdxl clip skip 2 vs diffusers clip_skip=1", xl_clip_skip_case(xl))]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows.append(("sd1 folder: tokens", max(sd_case(s1, sd_text_encoder_from_folder(sd1_folder(tmp / "1", s1), "sd1")).values())))
        write_text_encoder_folder(tmp / "2/text_encoder", s2.hf)
        write_tokenizer_folder(tmp / "2/tokenizer", "!")
        rows.append(("sd2 folder: tokens", max(sd_case(s2, sd_text_encoder_from_folder(tmp / "2", "sd2")).values())))
        for name, model in (("text_encoder", xl.l), ("text_encoder_2", xl.g)):
            write_text_encoder_folder(tmp / "xl" / name, model)
        write_tokenizer_folder(tmp / "xl/tokenizer", "<|endoftext|>")
        write_tokenizer_folder(tmp / "xl/tokenizer_2", "!")
        folder_case = xl_case(xl, sd_text_encoder_from_folder(tmp / "xl", "sdxl"))
        rows += [("sdxl folder: tokens", max(folder_case["tokens"], folder_case["negative tokens"])),
                 ("sdxl folder: pooled", max(folder_case["pooled"], folder_case["negative pooled"]))]
        rows += [("sd1 long prompt (2 windows) vs transformers", long_prompt_case(s1)),
                 ("sd1 weighted prompt vs hand-applied emphasis", weighted_case(s1)),
                 ("sd1 textual inversion vs diffusers", ti_sd1_case(s1, tmp)),
                 ("sdxl textual inversion vs diffusers", ti_sdxl_case(xl, tmp))]
    print(f"    {'case':<46}{'max rel diff':>12}")
    for label, value in rows:
        print(f"    {label:<46}{value:>12.1e}")
