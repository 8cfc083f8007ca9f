"""The gallery: a library of every picture noisecraft makes (a folder of PNGs and a database).

    from noisecraft.gallery import Gallery, default_folder
    g = Gallery(default_folder())                       # SQLite in the folder; or url="postgresql+psycopg://..."
    item = g.add(png_bytes, prompt="a palm tree", width=512, height=512, seed=1)
    items, cursor = g.search("palm", favourite=True)     # newest first; pass before=cursor for the next page
    g.path(item)                                         # the PNG file, as given (its `parameters` text included)

`store.py` holds `Gallery` (how a crash is survived: its docstring), `files.py` the content-addressed
files, `schema.py` the tables and migrations, `search.py` the full-text query, `database.py` the
engine. Imports nothing of noisecraft but `errors`.
"""

from .files import default_folder
from .items import CheckReport, Item
from .store import Gallery

__all__ = ["CheckReport", "Gallery", "Item", "default_folder"]
