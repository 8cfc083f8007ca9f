"""The `noisecraft` command: parse, validate, call `Pipeline` or the trainer. No diffusion logic here.

    parser.py    every subcommand's options
    generate.py  generate and upscale (output files)
    commands.py  train, info, samplers, presets, data, eval, serve
    brand.py     brand init, brand check
    compose.py   layout, layouts, campaign, verify
"""

from __future__ import annotations

import sys

from ..errors import UserError, out_of_memory
from . import brand, commands, compose, generate
from .parser import build_parser

COMMANDS = {"generate": generate.cmd_generate, "upscale": generate.cmd_upscale, "train": commands.cmd_train,
            "info": commands.cmd_info, "samplers": commands.cmd_samplers, "presets": commands.cmd_presets, "data": commands.cmd_data,
            "eval": commands.cmd_eval, "serve": commands.cmd_serve,
            "brand": brand.cmd_brand, "layout": compose.cmd_layout, "layouts": compose.cmd_layouts,
            "campaign": compose.cmd_campaign, "verify": compose.cmd_verify,
            "finetune": commands.cmd_finetune}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as error:
        print(f"noisecraft: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("noisecraft: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"noisecraft: error: {out_of_memory()}", file=sys.stderr)
        return 2
