"""Brand kits: a business's colours, logo, fonts, house style and words, applied to every picture.

    kit = load_kit("trattoria/")
    prompt, negative = kit.apply("a bowl of ramen")
    report = palette_report(picture, kit.colours)   # dominant colours and their CIEDE2000 to the palette
"""

from .kit import BrandKit, Signing, brand_prompt, load_kit
from .palette import PaletteReport, colour_name, hex_rgb, palette_report, recolour, to_hex, verdict
from .starter import init_kit

__all__ = ["BrandKit", "PaletteReport", "Signing", "brand_prompt", "colour_name", "hex_rgb", "init_kit", "load_kit", "palette_report",
           "recolour", "to_hex", "verdict"]
