"""The `noisecraft` command line: every subcommand's options (the commands themselves: generate.py, commands.py)."""

from __future__ import annotations

import argparse
import re

from ..version import __version__


def size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"size must look like 512x512 or 512, not {text!r}")
    width = int(match.group(1))
    return width, int(match.group(2) or width)


def brand_options(command) -> None:
    """--brand and the signing flags, shared by generate, layout and campaign."""
    command.add_argument("--brand", default=None, metavar="DIR", help="a brand kit (`noisecraft brand init DIR`): its style, "
                         "colours, words, fonts and logo")
    command.add_argument("--colour-strength", type=float, default=None, metavar="S",
                         help="with --brand: pull the colours toward the palette, 0 (off) .. 1 (default: the kit's)")
    command.add_argument("--sign", action=argparse.BooleanOptionalAction, default=None,
                         help="Content Credentials (C2PA) and an invisible watermark (default: on for a kit that signs)")
    command.add_argument("--certificate", default=None, metavar="PEM", help="sign with this certificate chain (default: the "
                         "kit's, or a local self-signed identity)")
    command.add_argument("--key", default=None, metavar="PEM", help="the private key of --certificate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="noisecraft", description="Text-to-image diffusion: generate, train, inspect.")
    parser.add_argument("--version", action="version", version=f"noisecraft {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = commands.add_parser("generate", help="make pictures from a prompt", description="Make pictures from a prompt.")
    gen.add_argument("prompt", help="what the picture shows")
    gen.add_argument("--negative", default="", help="what the picture must not show")
    gen.add_argument("--steps", type=int, default=None, help="sampling steps (model default: 20)")
    gen.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (model default)")
    gen.add_argument("--rescale", type=float, default=0.0, help="guidance rescale, 0..1 (Lin et al. 2023)")
    gen.add_argument("--sampler", default=None, help="sampler name, e.g. dpmpp_2m_karras, euler_a, ddim (see `noisecraft samplers`)")
    gen.add_argument("--scheduler", default=None, choices=["automatic", "karras", "exponential"],
                     help="the sampler's step spacing, as A1111's scheduler (default: the sampler's own)")
    gen.add_argument("--subject", default="auto", help="auto: a model with a subject index (the built-in one) draws the nearest subject it knows; "
                     "off: the prompt's own words; or the words to draw (written into the PNG)")
    gen.add_argument("--seed", type=int, default=None, help="random seed; image k uses seed+k (default: random)")
    gen.add_argument("--num-images", type=int, default=1, help="how many pictures")
    gen.add_argument("--batch-size", type=int, default=16, help="pictures per network call")
    gen.add_argument("--size", type=size, default=None, metavar="WxH", help="picture size in pixels (model default)")
    gen.add_argument("--model", default=None, help="noisecraft model, Stable Diffusion .safetensors/.ckpt file or diffusers folder (default: the built-in model)")
    gen.add_argument("--out", default=".", help="output .png file, or a folder (default: the current folder)")
    gen.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    gen.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"], help="network precision (default: bf16 on CUDA, fp32 elsewhere)")
    gen.add_argument("--init-image", default=None, metavar="PNG", help="start from this picture (img2img)")
    gen.add_argument("--strength", type=float, default=None, help="img2img: how much to change the start picture, 0..1 (default 0.75)")
    gen.add_argument("--mask", default=None, metavar="PNG", help="inpainting: repaint where this mask is white")
    gen.add_argument("--outpaint", default=None, metavar="L,T,R,B", help="extend the start picture by these many pixels per side, painting the new area")
    gen.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]", help="merge a LoRA file (repeatable)")
    gen.add_argument("--controlnet", action="append", default=[], metavar="FILE",
                     help="a ControlNet file or diffusers folder (repeatable; one per --control, or one for all)")
    gen.add_argument("--control", action="append", default=[], metavar="KIND:PICTURE[:STRENGTH[:START:END]]",
                     help="keep the shape of PICTURE: canny (edges found here), tile, or a map you made "
                          "(depth, lineart, scribble, pose, softedge, seg, normal); e.g. canny:photo.png:0.8")
    gen.add_argument("--embedding", action="append", default=[], metavar="FILE[:WORD]", help="load a textual-inversion embedding, called by WORD (default: its file name) in the prompt (repeatable)")
    gen.add_argument("--vae", default=None, metavar="FILE", help="use this autoencoder instead of the checkpoint's")
    gen.add_argument("--text-encoders", nargs="+", default=None, metavar="FILE",
                     help="CLIP / T5 files for an SD3 or FLUX file that has none (ComfyUI's clip_l, clip_g, t5xxl)")
    gen.add_argument("--text-device", default=None, metavar="DEVICE",
                     help="run an SD3 / FLUX / Z-Image model's text encoders here (cpu: leaves the GPU to the transformer)")
    gen.add_argument("--free-text-encoders", action="store_true",
                     help="encode the prompt, then free the text encoders' memory before sampling (T5-XXL, Qwen3: gigabytes)")
    gen.add_argument("--prediction", default=None, choices=["eps", "v"], help="override the model's prediction type (SD 2.x 768 models: v)")
    gen.add_argument("--vae-tiling", action="store_true", help="decode in tiles (bounded memory for large pictures; automatic above 1024 px)")
    gen.add_argument("--offload", action="store_true", help="keep weights in CPU memory, moving each block to the GPU only while it runs")
    gen.add_argument("--gallery", default=None, metavar="DIR", help="also keep the pictures in the gallery in DIR (as `serve --gallery`)")
    gen.add_argument("--preset", action="append", default=[], metavar="NAME", help="apply a preset to the prompt (see `noisecraft presets`; repeatable)")
    gen.add_argument("--presets", action="append", default=[], metavar="FILE", help="presets file: noisecraft .toml, A1111 styles.csv or Fooocus .json (repeatable)")
    brand_options(gen)

    up = commands.add_parser("upscale", help="make a picture larger, redrawing detail with the model",
                             description="Enlarge a picture (Lanczos or an ESRGAN-family file), then redraw it tile by tile at low strength.")
    up.add_argument("image", help="the picture (PNG, JPEG or WebP)")
    up.add_argument("--scale", type=float, default=2.0, help="how many times larger (default 2)")
    up.add_argument("--strength", type=float, default=None, help="how much the model redraws, 0..1 (default 0.25; 0: pixels only)")
    up.add_argument("--prompt", default=None, help="what the picture shows (default: the prompt stored in it)")
    up.add_argument("--upscaler", default="Lanczos", metavar="NAME|FILE", help="Lanczos, Nearest, or an ESRGAN-family .pth/.safetensors file")
    up.add_argument("--model", default=None, help="the model that redraws (default: the built-in model)")
    up.add_argument("--steps", type=int, default=None, help="sampling steps (model default)")
    up.add_argument("--seed", type=int, default=None, help="tile k is drawn with seed + k (default: random)")
    up.add_argument("--out", default=".", help="output .png file, or a folder")
    up.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    up.add_argument("--sign", action=argparse.BooleanOptionalAction, default=False,
                    help="Content Credentials (with the picture as its parent) and an invisible watermark")
    up.add_argument("--certificate", default=None, metavar="PEM", help="sign with this certificate chain (default: a local identity)")
    up.add_argument("--key", default=None, metavar="PEM", help="the private key of --certificate")

    train = commands.add_parser("train", help="train a model from a TOML config", description="Train a VAE or a pixel/latent UNet.")
    train.add_argument("config", help="training config (.toml); see configs/")
    train.add_argument("--steps", type=int, default=None, help="override train.steps")
    train.add_argument("--out", default=None, help="override train.out, the run folder")
    train.add_argument("--data", default=None, help="override data.path, the image folder")
    train.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override any setting (TOML value)")
    train.add_argument("--no-resume", action="store_true", help="start over even if the run folder has a checkpoint")
    train.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    train.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])

    fine = commands.add_parser("finetune", help="teach a model your own subject from a folder of photos (LoRA)",
                               description="Train a LoRA on a folder of photos (JPEG, PNG, WebP, HEIC); writes a kohya/A1111 "
                                           "LoRA file that `generate --lora` and A1111/ComfyUI load.")
    fine.add_argument("photos", metavar="PHOTOS_DIR", help="the photos (captions from metadata.jsonl or .txt files, else a template)")
    fine.add_argument("--name", required=True, help="what the photos show, as you will prompt it: \"acme storefront\"")
    fine.add_argument("--class-word", default="", help="the kind of thing it is (storefront, mug, van), for the template captions")
    fine.add_argument("--model", default=None, help="the model to teach (default: the built-in model)")
    fine.add_argument("--out", required=True, metavar="FILE", help="the LoRA file to write (.safetensors)")
    fine.add_argument("--steps", type=int, default=None, help="training steps (default: 100 per photo, 500-2000)")
    fine.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16; alpha follows)")
    fine.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    fine.add_argument("--seed", type=int, default=0, help="the run's seed (same photos and seed: the same file)")
    fine.add_argument("--text-encoder", action="store_true", help="also adapt the text encoder (kohya lora_te_ layers)")
    fine.add_argument("--conv", action="store_true", help="also adapt the UNet's convolutions (kohya's LoCon set)")
    fine.add_argument("--flip", action="store_true", help="also learn from mirror images (leave off for text and logos)")
    fine.add_argument("--prior", type=int, default=0, metavar="N", help="DreamBooth prior preservation with N class "
                      "pictures the model draws first (needs --class-word; try 50)")
    fine.add_argument("--prior-weight", type=float, default=1.0, help="weight of the class pictures' loss (default 1)")
    fine.add_argument("--sample", action="append", default=[], metavar="PROMPT",
                      help="a prompt to draw at every checkpoint and before/after (repeatable; default: 'a photo of NAME')")
    fine.add_argument("--every", type=int, default=100, metavar="N", help="checkpoint, held-out loss and samples every N steps")
    fine.add_argument("--no-samples", action="store_true", help="skip the sample pictures (faster)")
    fine.add_argument("--peft", action="store_true", help="also write a diffusers/PEFT copy (FILE-diffusers/)")
    fine.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])

    info = commands.add_parser("info", help="describe a model file", description="Describe a model file.")
    info.add_argument("model", nargs="?", default=None, help="model folder or .safetensors file (default: the built-in model)")

    commands.add_parser("samplers", help="list the samplers", description="List the samplers.")

    pre = commands.add_parser("presets", help="list the presets", description="List the presets (built-in, and from files).")
    pre.add_argument("--presets", action="append", default=[], metavar="FILE", help="also these: noisecraft .toml, A1111 styles.csv or Fooocus .json")

    brand = commands.add_parser("brand", help="brand kits: write a starter kit, check a picture's colours",
                                description="Brand kits: a folder with brand.toml (palette, logo, fonts, words, style).")
    kit = brand.add_subparsers(dest="brand_command", required=True, metavar="ACTION")
    init = kit.add_parser("init", help="write a commented starter kit into DIR")
    init.add_argument("folder", metavar="DIR")
    init.add_argument("--name", default=None, help="the business's name (default: the folder's)")
    check = kit.add_parser("check", help="how close a picture's dominant colours are to the kit's palette (CIEDE2000)")
    check.add_argument("image", help="the picture")
    check.add_argument("--brand", required=True, metavar="DIR", help="the brand kit")
    check.add_argument("--json", action="store_true", help="print JSON")

    lay = commands.add_parser("layout", help="compose a menu card, social post, story, flyer, sign, before/after or guide",
                              description="Compose a layout: text and logos set in the kit's fonts and colours (never drawn "
                                          "by the model), pictures from --image files or drawn from --prompt.")
    lay.add_argument("template", help="a built-in layout (see `noisecraft layouts`) or a .toml layout file")
    lay.add_argument("--set", action="append", default=[], metavar="FIELD=TEXT", help="a text field, e.g. headline=\"Summer tune-up $49\" (repeatable)")
    lay.add_argument("--image", action="append", default=[], metavar="[SLOT=]FILE", help="a picture for an image slot (default slot: the first; repeatable)")
    lay.add_argument("--prompt", default="", help="draw the image slots not given with --image from this prompt")
    lay.add_argument("--negative", default="", help="what the drawn pictures must not show")
    lay.add_argument("--preset", default="", metavar="NAME", help="a preset for the drawn pictures (default: the kit's)")
    lay.add_argument("--size", default=None, metavar="SIZE", help="another canvas: 1080x1350, A4, Letter, 24x36in (the template lists its sizes)")
    lay.add_argument("--seed", type=int, default=None, help="slot k is drawn with seed + k (default: random)")
    lay.add_argument("--steps", type=int, default=None, help="sampling steps (model default)")
    lay.add_argument("--model", default=None, help="the model that draws (default: the built-in model)")
    lay.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    lay.add_argument("--out", default=".", help="output .png or .pdf file, or a folder")
    brand_options(lay)

    commands.add_parser("layouts", help="list the layout templates, their sizes and fields",
                        description="List the built-in layout templates, their sizes, text fields and image slots.")

    camp = commands.add_parser("campaign", help="make every row of a CSV plan: pictures, layouts, contact sheet, ZIP",
                               description="Make a campaign from a CSV plan (columns: id, prompt, preset, layout, sizes, "
                                           "image, seed, and the layouts' text fields). Rerunning skips what is done.")
    camp.add_argument("plan", help="the plan (.csv)")
    camp.add_argument("--out", required=True, metavar="DIR", help="the campaign folder")
    camp.add_argument("--seed", type=int, default=0, help="row k draws with seeds SEED + 10k ... unless its seed column says")
    camp.add_argument("--steps", type=int, default=None, help="sampling steps (model default)")
    camp.add_argument("--model", default=None, help="the model that draws (default: the built-in model)")
    camp.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    camp.add_argument("--presets", action="append", default=[], metavar="FILE", help="more presets for the preset column")
    camp.add_argument("--no-progress", action="store_true", help="no progress bar")
    brand_options(camp)

    ver = commands.add_parser("verify", help="what a picture says about itself: Content Credentials, watermark, parameters",
                              description="Check a picture's Content Credentials (C2PA), its invisible watermark and its "
                                          "generation parameters.")
    ver.add_argument("image", help="the picture (PNG, JPEG or WebP)")
    ver.add_argument("--json", action="store_true", help="print JSON")

    data = commands.add_parser("data", help="build ready-made datasets", description="Build ready-made training datasets.")
    which = data.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    emoji = which.add_parser("emoji", help="emoji artwork from npm packages (Noto, Twemoji)")
    emoji.add_argument("--out", required=True, help="folder to write the dataset to")
    emoji.add_argument("--from-tarball", action="append", default=None, metavar="PATH", help="use a package tarball made by `npm pack` (repeatable)")
    emoji.add_argument("--styles", default="google,twitter", help="comma-separated styles")
    emoji.add_argument("--size", type=int, default=64, help="image size in pixels")
    emoji.add_argument("--no-skin-tones", action="store_true", help="leave out the skin-tone variants of people and hands")

    ev = commands.add_parser("eval", help="score an emoji model's prompt adherence and fidelity with a judge classifier",
                             description="Generate pictures for a prompt list, name them with the emoji judge, and report "
                                         "top-1/top-5 adherence and Frechet distances per sampler and step count.")
    ev.add_argument("--model", default=None, help="model folder or .safetensors file (default: the built-in model)")
    ev.add_argument("--data", default="data/emoji64", help="the real emoji (`noisecraft data emoji`)")
    ev.add_argument("--judge", default="evals/judge.safetensors", help="the judge classifier (written there with --train-judge)")
    ev.add_argument("--out", default="eval-out", help="folder for results.json, results.md, grid.png and the pictures")
    ev.add_argument("--prompts", default="configs/emoji-eval-prompts.json", help="prompt list: names and paraphrases")
    ev.add_argument("--images-per-prompt", type=int, default=4, help="pictures per prompt")
    ev.add_argument("--samplers", default="ddim,euler,dpmpp_2m_karras", help="comma-separated sampler names")
    ev.add_argument("--steps", default="10,20,50", help="comma-separated step counts")
    ev.add_argument("--guidance", type=float, default=None, help="guidance scale (model default)")
    ev.add_argument("--batch-size", type=int, default=16, help="pictures per network call")
    ev.add_argument("--grid", default=None, help="where to write the sample grid PNG (default: OUT/grid.png)")
    ev.add_argument("--quick", action="store_true", help="the model's default sampler and steps only, first 20 names and 10 paraphrases")
    ev.add_argument("--train-judge", action="store_true", help="train the judge on --data and write it to --judge, instead of evaluating")
    ev.add_argument("--judge-steps", type=int, default=1500, help="with --train-judge: training steps of 128 images")
    ev.add_argument("--holdout-style", default=None, help="with --train-judge: leave this style out and report accuracy on it")
    ev.add_argument("--subject", default="auto", choices=["auto", "off"], help="nearest-subject prompts (models with a subject index) or the prompts' own words")
    ev.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])

    srv = commands.add_parser("serve", help="web page + AUTOMATIC1111-compatible API",
                              description="Serve the web page at / and an AUTOMATIC1111-compatible API under /sdapi/v1.")
    srv.add_argument("--model", action="append", default=None, metavar="PATH",
                     help="model folder or file; repeat to offer several (the first is the default; 'builtin' is the built-in model)")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    srv.add_argument("--port", type=int, default=7860, help="port (default: 7860, as A1111)")
    srv.add_argument("--api-key", default=None, metavar="KEY", help="require this key on every API call (or set NOISECRAFT_API_KEY)")
    srv.add_argument("--insecure", action="store_true", help="allow a non-local --host without an API key")
    srv.add_argument("--cors-origin", action="append", default=[], metavar="URL", help="allow browser pages from this origin (repeatable)")
    srv.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                     help="also answer requests addressed to this host name (repeatable; localhost and --host always are)")
    srv.add_argument("--device", default="auto", help="auto, cpu, cuda, mps, or a comma list (one worker per device: cuda:0,cuda:1)")
    srv.add_argument("--queue-size", type=int, default=16, metavar="N", help="requests that may wait; more get HTTP 429 (default: 16)")
    srv.add_argument("--max-images", type=int, default=16, metavar="N", help="most images per request (default: 16)")
    srv.add_argument("--max-size", type=int, default=None, metavar="PIXELS", help="largest width/height (default: 8x the model's size)")
    srv.add_argument("--gallery", default=None, metavar="DIR", help="keep every picture in the gallery in DIR (default: your data folder)")
    srv.add_argument("--gallery-db", default=None, metavar="URL", help="the gallery's database (default: SQLite in DIR; "
                                                                       "postgresql+psycopg://... for a shared one)")
    srv.add_argument("--no-gallery", action="store_true", help="keep pictures for this session only (in a temporary folder, removed at exit)")
    srv.add_argument("--presets", action="append", default=[], metavar="FILE", help="offer these presets too (A1111 styles.csv, Fooocus .json, noisecraft .toml)")
    srv.add_argument("--brand", action="append", default=[], metavar="DIR", help="offer this brand kit, by its name (repeatable)")
    srv.add_argument("--sign", action="store_true", help="sign every picture (Content Credentials + watermark); a kit "
                                                        "with sign = true signs its own pictures anyway")
    srv.add_argument("--certificate", default=None, metavar="PEM", help="sign with this certificate chain (default: a local identity)")
    srv.add_argument("--key", default=None, metavar="PEM", help="the private key of --certificate")
    srv.add_argument("--upscaler", action="append", default=[], metavar="FILE", help="offer this ESRGAN-family upscaler file (repeatable)")
    srv.add_argument("--controlnet", action="append", default=[], metavar="FILE", help="offer this ControlNet file or diffusers "
                     "folder to the A1111 ControlNet API and the page (repeatable)")
    return parser
