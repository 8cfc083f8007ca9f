"""`noisecraft brand init|check`."""

from __future__ import annotations

import json


def cmd_brand(args) -> int:
    from ..brand import init_kit, load_kit, palette_report, to_hex
    from ..images import open_image

    if args.brand_command == "init":
        for path in init_kit(args.folder, args.name):
            print(path)
        return 0
    kit = load_kit(args.brand)
    report = palette_report(open_image(args.image, "the picture"), kit.colours)
    if args.json:
        print(json.dumps({"brand": kit.name, "median_delta_e": round(report.median, 2),
                          "colours": [{"colour": to_hex(c.colour), "share": round(c.share, 4), "nearest": to_hex(c.nearest),
                                       "delta_e": round(c.delta_e, 2)} for c in report.colours]}, indent=2))
    else:
        print(f"{args.image} against the {kit.name} palette (5 dominant colours, CIEDE2000):")
        print("\n".join("  " + line for line in report.lines()))
    return 0
