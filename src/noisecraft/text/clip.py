"""CLIP text encoders of Stable Diffusion 1.x, 2.x and SDXL.

DESIGN NOTE. The transformer is noisecraft's own (`CLIPTextTransformer`, ~60 lines: pre-LayerNorm
causal transformer, Radford et al. 2021), not transformers' ``CLIPTextModel``: importing
transformers costs 1.3-6 s on the machines measured, most of a CLI generation's start-up, and the
model is small enough to write plainly (the same choice as the MiniLM encoder in ``minilm.py``).
Its parameter names are transformers' (``text_model.encoder.layers.0.self_attn.q_proj`` ...),
which is the layout of SD1 single files, of SDXL's first encoder and of every diffusers folder, so
those load without a converter and LoRA keys resolve by name. OpenCLIP's layout (SD2's ViT-H and
SDXL's ViT-bigG in single files) goes through one table of rules (`checkpoints.keymaps.OPENCLIP_TO_HF`).
tests/test_clip.py pins it to transformers and to diffusers' ``encode_prompt`` on the same random
weights: token states bit-identical in fp32, SDXL's pooled vector within 5e-7 relative.

The tokenizer (``clip_tokenizer.py``) is built on ``tokenizers`` from OpenAI's BPE vocabulary,
shipped with its MIT licence, since single files carry none; a diffusers folder's own
``tokenizer/`` is used when present. Reading the weights (single files, diffusers folders,
OpenCLIP's names, textual-inversion files) is `noisecraft.checkpoints.sd`'s job; this module builds
the networks from transformers-layout state dicts.

What each family feeds the UNet (as diffusers and A1111 do):

* SD1: CLIP ViT-L/14, last layer after the final LayerNorm, 768 wide; pads with EOS.
* SD2: OpenCLIP ViT-H/14, penultimate layer + final LayerNorm, 1024 wide; pads with ``!`` (id 0).
  A single file has all 24 layers; the 24th is dropped on load, as diffusers' converter does, so a
  diffusers folder's 23-layer encoder and a single file behave the same ("last" of 23).
* SDXL: CLIP ViT-L penultimate (no final LayerNorm, 768) concatenated with ViT-bigG penultimate (no
  final LayerNorm, 1280) = 2048; pooled = bigG's text_projection(final_ln(last layer)[EOS]) (1280).
  Pads with EOS and ``!`` respectively.

``clip_skip`` counts like A1111's "Clip skip": 1 is the family's default layer, 2 one layer
earlier, ... (diffusers' ``clip_skip`` is this minus one; A1111 ignores it for SD2, noisecraft and
diffusers apply it). Prompts use A1111's syntax, chunks and
emphasis (`noisecraft.text.prompts`). Pooled vectors come from each prompt's first chunk, before
weighting (as A1111); for SD1/SD2, where the UNet takes none, it is the final-LayerNorm EOS state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ModelFileError, UserError
from .base import TextEmbedding, embedding
from .clip_tokenizer import EOS, CLIPTokenizer
from .prompts import CHUNK, empty_chunk, emphasize, tokenize_prompt


@dataclass
class CLIPTextConfig:
    vocab_size: int = 49408
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_width: int = 3072
    max_positions: int = 77
    activation: str = "quick_gelu"  # OpenAI's CLIP; OpenCLIP's models use "gelu"
    eps: float = 1e-5
    projection_dim: int | None = None


class CLIPAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(width, width) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (p(x).view(b, n, self.heads, d // self.heads).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        h = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(h.transpose(1, 2).reshape(b, n, d))


class CLIPLayer(nn.Module):
    """x + attn(ln1(x)), then + fc2(act(fc1(ln2(x)))): a pre-LayerNorm transformer block."""

    def __init__(self, c: CLIPTextConfig):
        super().__init__()
        self.quick = c.activation == "quick_gelu"
        if c.activation not in ("quick_gelu", "gelu"):
            raise ModelFileError(f"unsupported CLIP activation {c.activation!r}")
        self.layer_norm1, self.layer_norm2 = nn.LayerNorm(c.width, eps=c.eps), nn.LayerNorm(c.width, eps=c.eps)
        self.self_attn = CLIPAttention(c.width, c.heads)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(c.width, c.mlp_width), nn.Linear(c.mlp_width, c.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        h = self.mlp.fc1(self.layer_norm2(x))
        h = h * torch.sigmoid(1.702 * h) if self.quick else nn.functional.gelu(h)
        return x + self.mlp.fc2(h)


class CLIPTextTransformer(nn.Module):
    """CLIP's text tower with transformers' parameter names (``text_model.*``, ``text_projection``)."""

    def __init__(self, c: CLIPTextConfig):
        super().__init__()
        self.config = c
        self.text_model = tm = nn.Module()
        tm.embeddings = nn.Module()
        tm.embeddings.token_embedding = embedding(c.vocab_size, c.width)
        tm.embeddings.position_embedding = embedding(c.max_positions, c.width)
        tm.encoder = nn.Module()
        tm.encoder.layers = nn.ModuleList(CLIPLayer(c) for _ in range(c.layers))
        tm.final_layer_norm = nn.LayerNorm(c.width, eps=c.eps)
        if c.projection_dim:
            self.text_projection = nn.Linear(c.width, c.projection_dim, bias=False)

    def forward(self, token_states: torch.Tensor) -> list[torch.Tensor]:
        """Hidden states from token embeddings [B, L, D]: the input plus positions, then each layer's output."""
        x = token_states + self.text_model.embeddings.position_embedding.weight[: token_states.shape[1]]
        hidden = [x]
        for layer in self.text_model.encoder.layers:
            hidden.append(layer(hidden[-1]))
        return hidden

    def pool(self, last: torch.Tensor, ids: torch.Tensor, eos_id: int) -> torch.Tensor:
        """final_ln(last layer) at each row's first EOS, through text_projection when there is one."""
        rows = torch.arange(ids.shape[0], device=ids.device)
        pooled = self.text_model.final_layer_norm(last[rows, (ids == eos_id).int().argmax(dim=1)])
        return self.text_projection(pooled) if self.config.projection_dim else pooled


@dataclass(frozen=True)
class Part:
    """One text encoder of a family: where its weights are and which states it contributes."""

    name: str  # module name; the diffusers subfolder holding its weights ("text_encoder", "text_encoder_2")
    kohya: str  # kohya LoRA prefix ("lora_te", "lora_te1", "lora_te2")
    single_file: tuple[str, ...]  # key prefixes in single-file checkpoints, in either layout
    activation: str  # single files carry no config: OpenAI's CLIP uses quick_gelu, OpenCLIP gelu
    pad: str
    from_end: int  # hidden state used at clip skip 1, counted from the end: 1 last, 2 penultimate
    final_norm: bool  # apply final_layer_norm to that state
    drop_last_layer: bool = False  # single files: SD2's 24th layer is never used
    projection: bool = False  # keep text_projection (the pooled vector of SDXL)


FAMILIES = {
    "sd1": (Part("text_encoder", "lora_te", ("cond_stage_model.transformer.",), "quick_gelu", EOS, 1, True),),
    "sd2": (Part("text_encoder", "lora_te", ("cond_stage_model.model.", "cond_stage_model.transformer."), "gelu", "!",
                 1, True, drop_last_layer=True),),
    "sdxl": (Part("text_encoder", "lora_te1", ("conditioner.embedders.0.transformer.",), "quick_gelu", EOS, 2, False),
             Part("text_encoder_2", "lora_te2", ("conditioner.embedders.1.model.", "conditioner.embedders.1.transformer."),
                  "gelu", "!", 2, False, projection=True)),
    # SD3 / SD3.5: SDXL's two CLIP towers (penultimate states), both pooled and projected (T5 comes apart)
    "sd3": (Part("text_encoder", "lora_te1", ("text_encoders.clip_l.transformer.",), "quick_gelu", EOS, 2, False, projection=True),
            Part("text_encoder_2", "lora_te2", ("text_encoders.clip_g.transformer.",), "gelu", "!", 2, False, projection=True)),
    # FLUX.1: CLIP-L's pooled vector alone (final LayerNorm at EOS, no projection); its tokens come from T5
    "flux": (Part("text_encoder", "lora_te1", ("text_encoders.clip_l.transformer.",), "quick_gelu", EOS, 1, True),),
}
POOL_ALL = {"sd3"}  # families whose pooled vector is every tower's, concatenated (else the last tower's)


def text_family(family: str) -> str:
    """'sd1' | 'sd2' | 'sdxl' from a family name such as 'sd15', 'sd2-v', 'sd21', 'sdxl-base'."""
    name = family.lower().replace("_", "-").replace(".", "")
    if name.startswith("sdxl") and "refiner" not in name:
        return "sdxl"
    for key in ("sd3", "sd2", "sd1", "flux"):
        if name.startswith(key):
            return key
    raise UserError(f"noisecraft has no CLIP text encoder for model family {family!r}; known: sd1, sd2, sdxl, sd3, flux")


def config_from_state(state: dict, activation: str) -> CLIPTextConfig:
    """The config of a transformers-layout CLIP text tower, from its tensor shapes (single files carry none)."""
    try:
        vocab, width = state["text_model.embeddings.token_embedding.weight"].shape
        positions = state["text_model.embeddings.position_embedding.weight"].shape[0]
        mlp_width = state["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]
    except KeyError as missing:
        raise ModelFileError(f"the text encoder's weights lack {missing.args[0]}; the checkpoint is incomplete") from None
    layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("text_model.encoder.layers."))
    projection = state["text_projection.weight"].shape[0] if "text_projection.weight" in state else None
    # single files carry no head count; every CLIP text tower of Stable Diffusion uses 64-wide heads
    return CLIPTextConfig(vocab, width, layers, width // 64, mlp_width, positions, activation, 1e-5, projection)


def build_text_tower(config: CLIPTextConfig, state: dict, device, dtype, what: str) -> CLIPTextTransformer:
    """A CLIP text tower on `device` with `state` (transformers layout); `what` names it in errors."""
    with torch.device("meta"):
        model = CLIPTextTransformer(config)
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    missing, unexpected = (sorted(set(model.state_dict()) - set(state)), sorted(set(state) - set(model.state_dict())))
    if missing or unexpected:
        problem = f"lacks {', '.join(missing[:3])}" if missing else f"has unexpected tensors {', '.join(unexpected[:3])}"
        raise ModelFileError(f"the {what} {problem}; the checkpoint is incomplete or not a Stable Diffusion one")
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)


@dataclass
class TextualInversion:
    """An embedding: the token ids of its name and, per text encoder, the vectors that replace them."""

    name: str
    ids: tuple[int, ...]
    vectors: dict[str, torch.Tensor]  # part name -> [n, width]

    @property
    def n_vectors(self) -> int:
        return next(iter(self.vectors.values())).shape[0]


class SDTextEncoder(nn.Module):
    """Prompts -> `TextEmbedding` for a Stable Diffusion family, with A1111's prompt syntax.

    Holds one or two `CLIPTextTransformer` as ``text_encoder`` / ``text_encoder_2`` (diffusers'
    names), the shared tokenizer, each encoder's pad id, and the loaded textual-inversion
    embeddings. ``dim`` / ``pooled_dim``: widths of ``tokens`` and ``pooled``.
    """

    def __init__(self, family: str, encoders: dict[str, CLIPTextTransformer], tokenizer: CLIPTokenizer,
                 pads: dict[str, str], clip_skip: int = 1):
        super().__init__()
        self.family, self.tokenizer, self.clip_skip = family, tokenizer, clip_skip
        self.parts = [p for p in FAMILIES[family] if p.name in encoders]
        for name, model in encoders.items():
            self.add_module(name, model)
        self.pad_ids = {name: tokenizer.token_id(pad) for name, pad in pads.items()}
        self.embeddings: dict[str, TextualInversion] = {}
        self.name = f"clip-{family}"
        self.dim = sum(m.config.width for m in encoders.values())
        pooled = [encoders[p.name].config.projection_dim or encoders[p.name].config.width for p in self.parts]
        self.pooled_dim = sum(pooled) if family in POOL_ALL else pooled[-1]
        self.max_length = CHUNK + 2

    @property
    def device(self) -> torch.device:
        return getattr(self, self.parts[0].name).text_model.final_layer_norm.weight.device

    def encoder(self, name: str) -> CLIPTextTransformer:
        return getattr(self, name)

    # -- prompts -> chunks -------------------------------------------------------------------
    def _find_embedding(self, ids: list[int], at: int):
        for emb in sorted(self.embeddings.values(), key=lambda e: -len(e.ids)):  # longest name first, as A1111
            if tuple(ids[at : at + len(emb.ids)]) == emb.ids:
                return emb, emb.n_vectors, len(emb.ids)
        return None

    def chunks(self, prompt: str):
        """The prompt's 77-token windows (`noisecraft.prompts.Chunk`), before padding to a batch."""
        t = self.tokenizer
        return tokenize_prompt(prompt, t.encode, bos=t.bos_id, eos=t.eos_id, comma=t.comma_id,
                               find_embedding=self._find_embedding if self.embeddings else None)

    # -- encoding ------------------------------------------------------------------------------
    def encode(self, prompts: list[str], *, clip_skip: int | None = None) -> TextEmbedding:
        """tokens [B, 77k, D], pooled [B, P], mask all True; every prompt padded to the same k windows."""
        if not prompts:
            raise UserError("give at least one prompt to encode")
        skip = self.clip_skip if clip_skip is None else clip_skip
        cache = {p: self.chunks(p) for p in dict.fromkeys(prompts)}
        k = max(len(c) for c in cache.values())
        blank = empty_chunk(self.tokenizer.bos_id, self.tokenizer.eos_id)
        windows = [c[i] if i < len(c) else blank for p in prompts for c in [cache[p]] for i in range(k)]
        device = self.device
        ids = torch.tensor([w.ids for w in windows], device=device)
        weights = torch.tensor([w.weights for w in windows], device=device)
        eos = self.tokenizer.eos_id
        after_eos = torch.arange(ids.shape[1], device=device) > (ids == eos).int().argmax(dim=1, keepdim=True)
        states, pools = [], []
        for part in self.parts:
            model = self.encoder(part.name)
            layers = len(model.text_model.encoder.layers)
            index = layers + 2 - part.from_end - skip  # into hidden: [embeddings, layer 1, ..., layer L]
            if not 1 <= index <= layers:
                raise UserError(f"clip skip must be 1 to {layers + 1 - part.from_end} for this {self.family} model, not {skip}")
            part_ids = ids.masked_fill(after_eos, self.pad_ids[part.name])
            x = model.text_model.embeddings.token_embedding(part_ids)
            for row, window in enumerate(windows):
                for at, emb in window.vectors:
                    x[row, at : at + emb.n_vectors] = emb.vectors[part.name].to(x)
            hidden = model(x)
            z = model.text_model.final_layer_norm(hidden[index]) if part.final_norm else hidden[index]
            states.append(emphasize(z.float(), weights))
            pools.append(model.pool(hidden[-1][::k], part_ids[::k], eos).float())
        pooled = torch.cat(pools, dim=-1) if self.family in POOL_ALL else pools[-1]
        tokens = torch.cat(states, dim=-1).reshape(len(prompts), k * (CHUNK + 2), -1)
        return TextEmbedding(tokens, pooled, torch.ones(tokens.shape[:2], dtype=torch.bool, device=device))

    # -- textual inversion ---------------------------------------------------------------------
    def add_embedding(self, token: str, vectors: dict[str, torch.Tensor], source: str) -> str:
        """Make `token` call a textual-inversion embedding: its vectors (part name -> [n, width]) replace
        the token's ids in prompts. `source` names the file in errors. Returns the token."""
        ids = tuple(self.tokenizer.encode([token])[0])
        if not ids:
            raise UserError(f"the embedding token {token!r} has no text; give it a name")
        for part in self.parts:
            width = self.encoder(part.name).config.width
            v = vectors[part.name]
            if v.ndim != 2 or v.shape[1] != width or not 1 <= v.shape[0] <= CHUNK:
                raise ModelFileError(f"embedding {source} has vectors of shape {tuple(v.shape)}; this {self.family} "
                                     f"model's {part.name} takes [n, {width}] (it is for another model family)")
        self.embeddings[token] = TextualInversion(token, ids, {k: v.detach().float().cpu() for k, v in vectors.items()})
        return token

    # -- LoRA ----------------------------------------------------------------------------------
    def lora_roots(self) -> dict[str, tuple[nn.Module, str]]:
        """Where LoRA files adapt this encoder: {kohya prefix: (encoder, path prefix)}, ``lora_te`` (SD1/SD2) or
        ``lora_te1`` / ``lora_te2`` (SDXL's two encoders), the layers under ``text_model.encoder.``
        (``lora_te_text_model_encoder_layers_0_self_attn_q_proj``). diffusers/PEFT keys name the same modules
        by path: ``text_encoder.text_model.encoder.layers.0.self_attn.q_proj``, ``text_encoder_2...``."""
        return {part.kohya: (self.encoder(part.name), "text_model.encoder.") for part in self.parts}
