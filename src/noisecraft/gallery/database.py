"""The gallery's database connection: one SQLAlchemy engine (a pool) for SQLite or PostgreSQL.

SQLite runs in WAL mode with `synchronous=FULL` (a committed picture survives a power cut),
foreign keys on and a busy timeout, set on every new connection. Its transactions are explicit
(`BEGIN`, the SQLAlchemy recipe for pysqlite), so migrations are atomic, and a writing transaction
starts with `BEGIN IMMEDIATE`: it holds the one write lock from its first statement on. On
PostgreSQL a writing transaction takes a transaction-level advisory lock instead. Writers that
touch files (add, delete, the check) therefore run one at a time, across threads and processes.

A URL that cannot be used becomes a `UserError` of one sentence that never shows the password.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError

from ..errors import UserError

WRITE = "noisecraft_gallery_write"  # the execution option that makes a SQLite transaction BEGIN IMMEDIATE
LOCK_KEY = 0x6E6F697365676131  # the PostgreSQL advisory lock of the gallery's writers ("noisega1")
BUSY_TIMEOUT_MS = 30_000
BACKENDS = ("sqlite", "postgresql")
EXAMPLES = "sqlite:///path/to/gallery.db or postgresql+psycopg://user:password@host/database"


def parse_url(url: str) -> URL:
    """`url` as a SQLAlchemy URL for one of the supported backends (plain postgresql:// uses psycopg 3)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, TypeError, ValueError):
        raise UserError(f"the gallery database URL is not a database URL; write one like {EXAMPLES}") from None
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in BACKENDS:
        raise UserError(f"the gallery keeps its pictures in SQLite or PostgreSQL, not {parsed.get_backend_name()!r}; "
                        f"write a URL like {EXAMPLES}")
    return parsed


def shown_url(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def reason(exc: BaseException, url: URL) -> str:
    """The first line of a driver's error, without the URL's password and without a final full stop."""
    cause = getattr(exc, "orig", None) or exc
    line = next((s.strip() for s in str(cause).splitlines() if s.strip()), type(cause).__name__)
    if url.password:
        line = line.replace(str(url.password), "***")
    return line.rstrip(".")


def open_engine(url: str) -> Engine:
    """An engine for `url`, its first connection made (so a wrong URL fails here, as a `UserError`)."""
    parsed = parse_url(url)
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite and parsed.database in (None, "", ":memory:"):
        raise UserError("the gallery needs a database file, not an in-memory SQLite database")
    try:
        if sqlite:
            engine = create_engine(parsed, connect_args={"check_same_thread": False,
                                                         "timeout": BUSY_TIMEOUT_MS / 1000})
            _sqlite_events(engine)
        else:
            engine = create_engine(parsed, pool_pre_ping=True, connect_args={"connect_timeout": 10})
    except (NoSuchModuleError, ImportError) as exc:
        raise UserError(f"the database driver for {parsed.drivername!r} is not installed "
                        f"({reason(exc, parsed)})") from None
    except (ArgumentError, TypeError, ValueError) as exc:
        raise UserError(f"cannot use the gallery database URL {shown_url(parsed)}: {reason(exc, parsed)}") from None
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except (DBAPIError, SQLAlchemyError, OSError) as exc:
        engine.dispose()
        raise UserError(f"cannot open the gallery database {shown_url(parsed)}: {reason(exc, parsed)}") from None
    return engine


def _sqlite_events(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # no implicit transactions: `begin` below starts them
        cursor = dbapi_connection.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", f"busy_timeout={BUSY_TIMEOUT_MS}"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def begin(conn: Connection):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE) else "BEGIN")


@contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """A transaction holding the gallery's write lock; it commits when the block ends without an exception."""
    with engine.connect() as conn:
        conn.execution_options(**{WRITE: True})
        with conn.begin():
            if engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
            yield conn
