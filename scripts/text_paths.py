"""Which text path does a model draw from: the token states or the pooled sentence vector?

    python scripts/text_paths.py [--model PATH] [--group paraphrases] [--conditions full,name-pooled,name-tokens,pooled]

First the text encoder's own ceiling: how often the pooled MiniLM vector of a prompt is nearest
(cosine) to the pooled vector of the intended emoji's name, among all emoji names of the dataset.
Then the judge's top-1 / top-5 rates on pictures made with the prompt's conditioning taken apart:
  full          the prompt's token states and pooled vector (what `noisecraft generate` does)
  name-pooled   the prompt's token states, the intended emoji name's pooled vector
  name-tokens   the intended emoji name's token states, the prompt's pooled vector
  pooled        the empty prompt's token states, the prompt's pooled vector
The model's default sampler, steps and guidance; prompt i of the group gets seeds i*N .. i*N+N-1.
"""

import argparse
import json
from pathlib import Path

import torch

from noisecraft.eval.judge import judge_batches, load_judge
from noisecraft.eval.metrics import topk_hits
from noisecraft.eval.run import load_prompts
from noisecraft.text.base import TextEmbedding
from noisecraft.pipeline import Pipeline
from noisecraft.text.subjects import sentence_vectors

ROOT = Path(__file__).resolve().parents[1]


class TakenApart:
    """A text encoder that builds each prompt's embedding from the parts `condition` names."""

    def __init__(self, encoder, target_of: dict[str, str], condition: str):
        self.encoder, self.target_of, self.condition = encoder, target_of, condition

    def encode(self, prompts: list[str]) -> TextEmbedding:
        own = self.encoder.encode(prompts)
        if self.condition == "full" or not any(prompts):
            return own
        if self.condition == "pooled":
            other = self.encoder.encode([""] * len(prompts))
            return TextEmbedding(other.tokens, own.pooled, other.mask)
        other = self.encoder.encode([self.target_of.get(p, p) for p in prompts])
        if self.condition == "name-pooled":
            return TextEmbedding(own.tokens, other.pooled, own.mask)
        return TextEmbedding(other.tokens, own.pooled, other.mask)  # name-tokens


def encoder_ceiling(encoder, prompts, names: list[str]) -> dict[str, dict[str, float]]:
    vectors = sentence_vectors(encoder, names)
    result = {}
    for group in sorted({p.group for p in prompts}):
        chosen = [p for p in prompts if p.group == group]
        nearest = (encoder.encode([p.text for p in chosen]).pooled @ vectors.T).topk(5).indices
        found = [[names[j] for j in row] for row in nearest.tolist()]
        result[group] = {"top1": sum(f[0] == p.target for p, f in zip(chosen, found)) / len(chosen),
                         "top5": sum(p.target in f for p, f in zip(chosen, found)) / len(chosen)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model file or folder (default: the built-in model)")
    parser.add_argument("--data", default=str(ROOT / "data" / "emoji64-nst"), help="the training data (for the emoji names)")
    parser.add_argument("--judge", default=str(ROOT / "evals" / "judge.safetensors"))
    parser.add_argument("--prompts", default=str(ROOT / "configs" / "emoji-eval-prompts.json"))
    parser.add_argument("--group", default="paraphrases", help="names, paraphrases or all")
    parser.add_argument("--conditions", default="full,name-pooled,name-tokens,pooled")
    parser.add_argument("--images-per-prompt", type=int, default=4)
    args = parser.parse_args()

    pipe = Pipeline.from_pretrained(args.model, device="cpu")
    judge = load_judge(args.judge)
    prompts = [p for p in load_prompts(args.prompts) if args.group in ("all", p.group)]
    rows = [json.loads(line) for line in (Path(args.data) / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    names = sorted({row["name"] for row in rows})
    encoder = pipe.text_encoder
    print("text encoder alone (pooled vector nearest to the intended name's, among", len(names), "names):",
          json.dumps(encoder_ceiling(encoder, prompts, names)))
    targets = torch.tensor([judge.class_of(p.target) for p in prompts for _ in range(args.images_per_prompt)])
    n = args.images_per_prompt
    for condition in args.conditions.split(","):
        pipe.text_encoder = TakenApart(encoder, {p.text: p.target for p in prompts}, condition)
        pictures = torch.cat([pipe(p.text, seed=i * n, num_images=n, output_type="pt") for i, p in enumerate(prompts)])
        logits, _ = judge_batches(judge, (pictures * 255).round().to(torch.uint8))
        print(f"{condition:12} top-1 {topk_hits(logits, targets, 1).float().mean():.3f}  "
              f"top-5 {topk_hits(logits, targets, 5).float().mean():.3f}  ({len(targets)} pictures)", flush=True)


if __name__ == "__main__":
    main()
