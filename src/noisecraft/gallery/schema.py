"""The gallery's tables and the numbered migrations that build them.

`schema_version` holds one row: how many steps of `MIGRATIONS` the database has had. Opening a
gallery runs the missing steps in order, each in its own transaction under the write lock (two
servers opening one database at once migrate it once). A step, once released, never changes:
a new column or index is a new step at the end of the list.

    1  the `images` table
    2  full-text search over prompts (SQLite: an FTS5 table kept by triggers; PostgreSQL: a GIN
       index on to_tsvector('simple', prompt)), and indexes for the model and date filters
"""

from __future__ import annotations

from typing import Callable

from sqlalchemy import (BigInteger, Boolean, Column, Connection, Engine, Float, ForeignKey, Index, Integer, MetaData,
                        String, Table, Text, insert, select, text, update)

from ..errors import UserError
from .database import writing

METADATA = MetaData()


def images_v1(metadata: MetaData) -> Table:
    """The `images` table as step 1 makes it. Frozen: a later step's column is added to `IMAGES` below."""
    return Table(
        "images", metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("created", Float, nullable=False),  # unix time
        Column("prompt", Text, nullable=False),
        Column("negative_prompt", Text, nullable=False),
        Column("model", Text, nullable=False),
        Column("seed", BigInteger),
        Column("width", Integer, nullable=False),
        Column("height", Integer, nullable=False),
        Column("settings", Text, nullable=False),  # a JSON object
        Column("source", Text, nullable=False),
        Column("parent_id", Integer, ForeignKey("images.id", ondelete="SET NULL")),
        Column("operation", Text, nullable=False),
        Column("strength", Float),
        Column("favourite", Boolean, nullable=False),
        Column("sha256", String(64), nullable=False),
        Index("images_sha256", "sha256"),
        sqlite_autoincrement=True,  # ids are never reused, even after the newest picture is deleted
    )


IMAGES = images_v1(METADATA)  # the table the queries use: today, step 1's

VERSION = Table("schema_version", METADATA, Column("version", Integer, nullable=False))


def _images_v1(conn: Connection) -> None:
    images_v1(MetaData()).create(conn)


SQLITE_FTS = [
    "CREATE VIRTUAL TABLE images_fts USING fts5(prompt, content='images', content_rowid='id')",
    "CREATE TRIGGER images_fts_insert AFTER INSERT ON images BEGIN "
    "INSERT INTO images_fts(rowid, prompt) VALUES (new.id, new.prompt); END",
    "CREATE TRIGGER images_fts_delete AFTER DELETE ON images BEGIN "
    "INSERT INTO images_fts(images_fts, rowid, prompt) VALUES ('delete', old.id, old.prompt); END",
    "CREATE TRIGGER images_fts_update AFTER UPDATE OF prompt ON images BEGIN "
    "INSERT INTO images_fts(images_fts, rowid, prompt) VALUES ('delete', old.id, old.prompt); "
    "INSERT INTO images_fts(rowid, prompt) VALUES (new.id, new.prompt); END",
    "INSERT INTO images_fts(images_fts) VALUES ('rebuild')",  # the pictures made before this step
]
POSTGRES_FTS = ["CREATE INDEX images_prompt_fts ON images USING gin (to_tsvector('simple', prompt))"]


def _search_v2(conn: Connection) -> None:
    for statement in SQLITE_FTS if conn.dialect.name == "sqlite" else POSTGRES_FTS:
        conn.execute(text(statement))
    conn.execute(text("CREATE INDEX images_model_id ON images (model, id)"))
    conn.execute(text("CREATE INDEX images_created ON images (created)"))


MIGRATIONS: list[Callable[[Connection], None]] = [_images_v1, _search_v2]
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(engine: Engine) -> int:
    """How many migration steps the database has had (0 for an empty database)."""
    with writing(engine) as conn:
        return _version(conn)


def _version(conn: Connection) -> int:
    VERSION.create(conn, checkfirst=True)
    version = conn.execute(select(VERSION.c.version)).scalar()
    if version is None:
        conn.execute(insert(VERSION).values(version=0))
        return 0
    return version


def migrate(engine: Engine, target: int | None = None) -> int:
    """Run the missing migration steps up to `target` (all by default); returns the version reached."""
    target = SCHEMA_VERSION if target is None else target
    if not 0 <= target <= SCHEMA_VERSION:
        raise ValueError(f"there is no schema version {target}; the newest is {SCHEMA_VERSION}")
    while True:
        with writing(engine) as conn:
            version = _version(conn)
            if version > SCHEMA_VERSION:
                raise UserError(f"the gallery database has schema version {version}, newer than this noisecraft "
                                f"knows ({SCHEMA_VERSION}); upgrade noisecraft to open it")
            if version >= target:
                return version
            MIGRATIONS[version](conn)
            conn.execute(update(VERSION).values(version=version + 1))
