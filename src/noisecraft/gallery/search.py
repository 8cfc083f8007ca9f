"""What a user types into the gallery's search box, made into a full-text condition that cannot fail.

The query is read as words (letters and digits; everything else separates them) and "quoted
phrases". Every word must match, as a prefix (`pal` finds "palm tree"); a phrase must match as
written. No character the user types reaches the database's query syntax: the words are rebuilt
from letters and digits only, so `"`, `AND`, `*`, `)` or `NEAR(` search for words or for nothing,
and never raise. SQLite matches them with FTS5, PostgreSQL with its own text search ('simple'
configuration: no stemming, no stop words, the same on both).
"""

from __future__ import annotations

import re

from sqlalchemy import TextClause, text

WORD = re.compile(r"[^\W_]+")
MOST_WORDS = 32  # a longer query only narrows further; its tail is ignored
LONGEST_WORD = 64


def phrases(query: str) -> list[list[str]]:
    """The query's phrases, lower-cased: a quoted part is one phrase, each other word a phrase of its own."""
    found: list[list[str]] = []
    count = 0
    for i, part in enumerate(query.split('"')):
        words = [w[:LONGEST_WORD] for w in WORD.findall(part.lower())]
        words = words[: max(0, MOST_WORDS - count)]
        count += len(words)
        if not words:
            continue
        found += [words] if i % 2 else [[w] for w in words]
    return found


def fts5_match(found: list[list[str]]) -> str:
    """An FTS5 MATCH expression: each word a quoted string (prefix `*` when alone), all of them ANDed."""
    return " AND ".join(f'"{p[0]}"*' if len(p) == 1 else '"' + " ".join(p) + '"' for p in found)


def tsquery(found: list[list[str]]) -> str:
    """A PostgreSQL to_tsquery text: `word:*` for a lone word, `a <-> b` for a phrase, joined by `&`."""
    return " & ".join(f"{p[0]}:*" if len(p) == 1 else "(" + " <-> ".join(p) + ")" for p in found)


def matching(dialect: str, query: str | None) -> TextClause | None:
    """The condition on `images` for `query`, or None when it holds no word (then everything matches)."""
    found = phrases(query or "")
    if not found:
        return None
    if dialect == "sqlite":
        return text("images.id IN (SELECT rowid FROM images_fts WHERE images_fts MATCH :fts)").bindparams(
            fts=fts5_match(found))
    return text("to_tsvector('simple', images.prompt) @@ to_tsquery('simple', :fts)").bindparams(fts=tsquery(found))
