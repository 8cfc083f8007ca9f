"""Fitting text to a box: word wrapping and the largest size that fits, never a cut-off.

`fit_text` wraps greedily at spaces (explicit newlines start new paragraphs) and looks for the
largest whole pixel size in the box's range at which every line fits the width, the lines fit the
height and there are at most `max_lines` of them; two or three lines are then evened out (the
narrowest wrapping into as many lines), so a headline does not end on a lone word. A word wider
than the box is broken between letters only if no size in the range fits without that. If even the smallest size does not fit,
that is a `UserError` saying so, with roughly how many characters would fit: text is never
truncated silently.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from PIL import ImageFont

from ..errors import UserError

LINE_SPACING = 1.2  # baseline to baseline, in em


@dataclass(frozen=True)
class FittedText:
    """Wrapped lines at a size, with what it takes to place them."""

    lines: tuple[str, ...]
    size: int  # em size in pixels
    font: ImageFont.FreeTypeFont
    widths: tuple[int, ...]  # of each line, in pixels
    line_height: int  # baseline to baseline
    ascent: int
    descent: int

    @property
    def width(self) -> int:
        return max(self.widths)

    @property
    def height(self) -> int:
        return (len(self.lines) - 1) * self.line_height + self.ascent + self.descent


def normalise(text: str) -> str:
    """Runs of spaces and tabs as one space, each paragraph (line) trimmed, blank lines dropped."""
    return "\n".join(" ".join(line.split()) for line in text.splitlines() if line.strip())


def fit_text(text: str, font_at: Callable[[int], ImageFont.FreeTypeFont], box: tuple[int, int],
             sizes: tuple[int, int], max_lines: int, name: str) -> FittedText:
    """`text` wrapped at the largest size in `sizes` (pixels, smallest and largest) that fits `box`
    (width, height) in at most `max_lines` lines; `name` names the box in the error when nothing fits."""
    text = normalise(text)
    low, high = sizes
    for break_words in (False, True):  # breaking a word is the last resort
        best = None
        lo, hi = low, high
        while lo <= hi:  # the largest fitting size; fitting is monotone in the size, up to rounding
            mid = (lo + hi) // 2
            fitted = _try(text, font_at(mid), mid, box, max_lines, break_words)
            if fitted is not None:
                best, lo = fitted, mid + 1
            else:
                hi = mid - 1
        if best is not None:
            return _balanced(text, best, box, max_lines, break_words)
    raise _too_long(text, font_at(low), low, box, max_lines, name)


def _balanced(text, fitted: FittedText, box, max_lines, break_words) -> FittedText:
    """Two or three lines evened out: the narrowest width that wraps into as many lines (no lone last word)."""
    count = len(fitted.lines)
    if not 2 <= count <= 3:
        return fitted
    lo, hi = fitted.width // count, fitted.width
    best = fitted
    while lo <= hi:
        mid = (lo + hi) // 2
        trial = _try(text, fitted.font, fitted.size, (mid, box[1]), max_lines, break_words)
        if trial is not None and len(trial.lines) == count:
            best, hi = trial, mid - 1
        else:
            lo = mid + 1
    return best


def _try(text, font, size, box, max_lines, break_words) -> FittedText | None:
    width, height = box
    ascent, descent = font.getmetrics()
    line_height = max(round(size * LINE_SPACING), 1)
    lines: list[str] = []
    for paragraph in text.split("\n"):
        wrapped = _wrap(paragraph, font, width, break_words)
        if wrapped is None:
            return None
        lines += wrapped
        if len(lines) > max_lines:
            return None
    fitted = FittedText(tuple(lines), size, font, tuple(_width(font, line) for line in lines),
                        line_height, ascent, descent)
    return fitted if fitted.height <= height and fitted.width <= width else None


def _width(font, line: str) -> int:
    """The pixels a line takes: its advance, or its ink where a glyph overhangs."""
    return math.ceil(max(font.getlength(line), font.getbbox(line)[2] if line else 0))


def _wrap(paragraph: str, font, width: int, break_words: bool) -> list[str] | None:
    """Greedy wrapping at spaces; None when a word is wider than `width` and words may not break."""
    lines: list[str] = []
    current = ""
    for word in paragraph.split(" "):
        trial = f"{current} {word}" if current else word
        if _width(font, trial) <= width:
            current = trial
            continue
        if current:
            lines.append(current)
        if _width(font, word) <= width:
            current = word
            continue
        if not break_words:
            return None
        pieces = _break(word, font, width)
        if pieces is None:
            return None
        lines += pieces[:-1]
        current = pieces[-1]
    lines.append(current)
    return lines


def _break(word: str, font, width: int) -> list[str] | None:
    """A word too wide for a line, cut between letters into pieces that fit (None if one letter does not)."""
    pieces, piece = [], ""
    for letter in word:
        if _width(font, piece + letter) <= width:
            piece += letter
        elif not piece:
            return None
        else:
            pieces.append(piece)
            piece = letter
    return pieces + [piece]


def _too_long(text, font, size, box, max_lines, name) -> UserError:
    width, height = box
    ascent, descent = font.getmetrics()
    line_height = max(round(size * LINE_SPACING), 1)
    lines = 0 if height < ascent + descent else min(max_lines, 1 + (height - ascent - descent) // line_height)
    per_line = width / max(font.getlength(text.replace("\n", " ")) / max(len(text), 1), 1)
    fits = int(per_line * lines * 0.9)  # greedy wrapping leaves some of each line empty
    return UserError(f"the text for {name!r} is too long for its box: it has {len(text)} characters and about "
                     f"{fits} fit at the smallest size ({max_lines} line(s)); shorten it", field=name)
