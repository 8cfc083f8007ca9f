"""Business pictures where text and logos are composed, never drawn by the diffusion model.

    from noisecraft.layouts import Style, load_template, render, save
    card = render("menu-card", Style.default(), {"name": "Margherita", "price": "$12.50",
                  "description": "Tomato, mozzarella, basil"}, {"photo": picture})
    save(card, "margherita.pdf")

A `Template` (TOML, built-in ones listed by `templates()`) places image slots, text slots, panels
and a logo box in relative coordinates; a `Style` says what its colour and font roles are. Text is
fitted to its box (never cut off: too long is a `UserError`) and kept at a WCAG contrast of 4.5:1
or more against the pixels under it. `compose` returns the picture with where each text went.

    style.py     Style (colour, font roles, logo), load_logo (PNG or SVG)
    sizes.py     "1080x1080", "A4", "Letter", "18x24in" -> pixels at a dpi
    boxes.py     the boxes a template holds, and the grid of numbered cells
    template.py  Template, load_template, templates (TOML files in templates/)
    fitting.py   wrapping and auto-fit
    contrast.py  contrast_ratio and the backing-panel choice
    paint.py     pictures, panels and logos on the canvas
    render.py    render / compose
    output.py    save (PNG, PDF, atomic), render_pdf
"""

from .boxes import Grid, ImageSlot, LogoBox, Panel, Rect, TextSlot
from .contrast import TARGET as CONTRAST_TARGET
from .contrast import contrast_ratio, relative_luminance, worst_ratio
from .fitting import FittedText, fit_text
from .output import render_pdf, save
from .render import Layout, PlacedText, compose, render
from .sizes import canvas_pixels
from .style import COLOUR_ROLES, FONT_ROLES, Style, load_logo
from .template import Template, load_template, templates

__all__ = ["COLOUR_ROLES", "CONTRAST_TARGET", "FONT_ROLES", "FittedText", "Grid", "ImageSlot", "Layout", "LogoBox",
           "Panel", "PlacedText", "Rect", "Style", "Template", "TextSlot", "canvas_pixels", "compose",
           "contrast_ratio", "fit_text", "load_logo", "load_template", "relative_luminance", "render", "render_pdf",
           "save", "templates", "worst_ratio"]
