"""The gallery store (noisecraft.gallery) on SQLite and on PostgreSQL.

PostgreSQL runs when NOISECRAFT_TEST_POSTGRES holds a URL (`bash scripts/start_postgres.sh`
prints one); each test gets a schema of its own. Unset, those tests skip, unless
NOISECRAFT_REQUIRE_POSTGRES=1 makes that a failure (CI).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from sqlalchemy import inspect, insert, text

import noisecraft
from noisecraft.errors import UserError
from noisecraft.gallery import CheckReport, Gallery, Item, default_folder
from noisecraft.gallery.database import open_engine
from noisecraft.gallery.schema import IMAGES, SCHEMA_VERSION, migrate, schema_version


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request):
    """The database URL for a test's gallery: None (SQLite in the folder) or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield None
        return
    base = os.environ.get("NOISECRAFT_TEST_POSTGRES")
    if not base:
        if os.environ.get("NOISECRAFT_REQUIRE_POSTGRES") == "1":
            pytest.fail("NOISECRAFT_REQUIRE_POSTGRES=1 but NOISECRAFT_TEST_POSTGRES is not set")
        pytest.skip("PostgreSQL: set NOISECRAFT_TEST_POSTGRES (bash scripts/start_postgres.sh prints it)")
    schema = f"gallery_test_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    url = sqlalchemy.make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture
def folder(tmp_path):
    return tmp_path / "library"


@pytest.fixture
def gallery(folder, db):
    g = Gallery(folder, db)
    yield g
    g.close()


def png(seed: int = 0, size: int = 8, parameters: str | None = None) -> bytes:
    """A small PNG of one colour made from `seed` (different seeds, different bytes)."""
    info = PngInfo()
    if parameters:
        info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (seed % 256, seed // 256 % 256, 7)).save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


def add(g: Gallery, prompt: str, seed: int = 0, **details) -> Item:
    return g.add(png(seed), prompt=prompt, width=8, height=8, seed=seed, **details)


def ids(page) -> list[int]:
    return [item.id for item in page[0]]


def everything(g: Gallery) -> list[Item]:
    items, cursor = g.search(limit=200)
    while cursor is not None:
        more, cursor = g.search(before=cursor, limit=200)
        items += more
    return items


def files_in(folder: Path) -> list[Path]:
    return sorted(p for p in (folder / "images").rglob("*") if p.is_file())


# -- adding and reading ------------------------------------------------------------------------

def test_add_get_round_trip(gallery, folder):
    data = png(3, parameters="a palm tree\nSteps: 20, Sampler: Euler, Seed: 42")
    item = gallery.add(data, prompt="a palm tree", negative_prompt="blurry", model="builtin", seed=42, width=8,
                       height=8, settings={"steps": 20, "cfg_scale": 7.5}, source="api")
    assert item.id > 0 and abs(item.created - time.time()) < 60
    assert item.sha256 == hashlib.sha256(data).hexdigest()
    path = gallery.path(item)
    assert path == folder / "images" / item.sha256[:2] / f"{item.sha256}.png"
    assert path.read_bytes() == data
    assert Image.open(path).text["parameters"].startswith("a palm tree")
    assert gallery.get(item.id) == item
    got = gallery.get(item.id)
    assert (got.prompt, got.negative_prompt, got.model, got.seed, got.settings, got.source, got.operation,
            got.favourite, got.parent_id, got.strength) == ("a palm tree", "blurry", "builtin", 42,
                                                            {"steps": 20, "cfg_scale": 7.5}, "api", "generate",
                                                            False, None, None)
    as_json = json.loads(json.dumps(got.to_json()))
    assert as_json["file"] == f"{item.sha256}.png" and as_json["id"] == item.id
    assert str(folder) not in json.dumps(as_json)
    assert gallery.get(item.id + 1000) is None and gallery.get(-1) is None and gallery.get(2**70) is None


def test_add_checks_what_it_is_given(gallery, folder):
    with pytest.raises(ValueError, match="not a PNG"):
        gallery.add(b"GIF89a....", prompt="x", width=8, height=8)
    with pytest.raises(ValueError, match="width"):
        gallery.add(png(), prompt="x", width=0, height=8)
    with pytest.raises(TypeError, match="colour"):
        gallery.add(png(), prompt="x", width=8, height=8, colour="red")
    with pytest.raises(UserError, match="no picture 999"):
        gallery.add(png(), prompt="x", width=8, height=8, parent_id=999)
    assert everything(gallery) == [] and files_in(folder) == []  # nothing stored by a refused add


def test_the_same_picture_twice_shares_one_file(gallery, folder):
    a, b = add(gallery, "one", seed=5), add(gallery, "two", seed=5)
    assert a.sha256 == b.sha256 and a.id != b.id
    assert len(files_in(folder)) == 1


# -- searching -----------------------------------------------------------------------------------

def test_search_is_newest_first_and_matches_every_word(gallery):
    palm = add(gallery, "a palm tree on a beach", 1)
    car = add(gallery, "a red car near a palm", 2)
    cat = add(gallery, "a CAT wearing a hat", 3)
    cafe = add(gallery, "Café by the sea, 東京 tower", 4)
    assert ids(gallery.search()) == [cafe.id, cat.id, car.id, palm.id]
    assert ids(gallery.search("palm")) == [car.id, palm.id]
    assert ids(gallery.search("pal")) == [car.id, palm.id]  # words match as prefixes
    assert ids(gallery.search("PALM tree")) == [palm.id]  # every word, any case
    assert ids(gallery.search('"red car"')) == [car.id]
    assert ids(gallery.search('"car red"')) == []  # a phrase in its order
    assert ids(gallery.search("cat")) == [cat.id]
    assert ids(gallery.search("café")) == [cafe.id]
    assert ids(gallery.search("東京")) == [cafe.id]
    assert ids(gallery.search("palm dog")) == []
    assert ids(gallery.search("   ")) == ids(gallery.search())


def test_search_filters(gallery):
    first = add(gallery, "palm one", 1, model="builtin")
    time.sleep(0.02)
    middle = time.time()
    second = add(gallery, "palm two", 2, model="sd15")
    third = add(gallery, "palm three", 3, model="builtin")
    gallery.set_favourite(second.id, True)
    assert ids(gallery.search(model="builtin")) == [third.id, first.id]
    assert ids(gallery.search("palm", model="sd15")) == [second.id]
    assert ids(gallery.search(model="nothing")) == []
    assert ids(gallery.search(favourite=True)) == [second.id]
    assert ids(gallery.search(favourite=False)) == [third.id, first.id]
    assert ids(gallery.search(since=middle)) == [third.id, second.id]
    assert ids(gallery.search(until=middle)) == [first.id]
    assert ids(gallery.search("two", since=middle, until=time.time() + 1, favourite=True)) == [second.id]


def test_paging_covers_every_item_once(gallery):
    made = [add(gallery, f"picture number {i}" + (" palm" if i % 3 == 0 else ""), i).id for i in range(23)]
    for query, expected in [(None, made), ("palm", made[::3])]:
        seen, cursor, pages = [], None, 0
        while True:
            page, cursor = gallery.search(query, before=cursor, limit=5)
            seen += [item.id for item in page]
            pages += 1
            if cursor is None:
                break
        assert seen == sorted(expected, reverse=True)
        assert pages == -(-len(expected) // 5)
    assert len(gallery.search(limit=0)[0]) == 1 and len(gallery.search(limit=10_000)[0]) == 23  # clamped to 1..200
    assert gallery.search(limit=23) == (gallery.search(limit=23)[0], None)


HOSTILE = ['"', '""', '"""', "AND", "OR", "NOT", "palm AND", "AND palm", "*", "**", ")", "(", "NEAR(", "NEAR(palm",
           "palm NEAR/2 tree", "prompt:palm", "^palm", "-palm", "+", "'", "'; DROP TABLE images; --", "\\", "%", "_",
           "palm:*", "a & b | !c <-> d", "!!", "\x00", "palm\x00tree", "{prompt}: x", "[", "🌴", "palm" * 200,
           " ".join(["palm"] * 100), "\u202e\u0301", "a" * 5000]


def test_hostile_queries_never_raise(gallery):
    palm = add(gallery, "a palm tree", 1)
    for query in HOSTILE:
        items, cursor = gallery.search(query)
        assert set(item.id for item in items) <= {palm.id} and cursor is None, query
    assert ids(gallery.search("AND palm")) == []  # `AND` is a word to match, not an operator
    assert ids(gallery.search('palm "')) == [palm.id]
    assert ids(gallery.search("'; DROP TABLE images; --")) == []
    assert gallery.get(palm.id) == palm  # the table is still there


# -- changing ------------------------------------------------------------------------------------

def test_favourite(gallery):
    item = add(gallery, "a palm tree")
    assert gallery.set_favourite(item.id, True).favourite is True
    assert gallery.get(item.id).favourite is True
    assert gallery.set_favourite(item.id, False).favourite is False
    assert gallery.set_favourite(item.id + 1, True) is None


def test_delete_removes_the_row_and_its_file_unless_shared(gallery, folder):
    a, b, other = add(gallery, "one", seed=5), add(gallery, "two", seed=5), add(gallery, "three", seed=6)
    shared = gallery.path(a)
    assert gallery.delete(a.id) is True
    assert gallery.get(a.id) is None and shared.exists()  # b still needs it
    assert gallery.delete(b.id) is True
    assert not shared.exists() and gallery.get(b.id) is None
    assert gallery.delete(b.id) is False and gallery.delete(10**12) is False
    assert files_in(folder) == [gallery.path(other)]
    assert ids(gallery.search("one")) == [] and ids(gallery.search()) == [other.id]
    newer = add(gallery, "four", seed=7)
    assert newer.id > other.id  # ids are never reused


def test_lineage(gallery):
    a = add(gallery, "a palm tree", 1)
    b = add(gallery, "a palm tree", 2, parent_id=a.id, operation="img2img", strength=0.6)
    c = add(gallery, "a palm tree", 3, parent_id=b.id, operation="upscale")
    assert [i.id for i in gallery.lineage(c.id)] == [c.id, b.id, a.id]
    assert (gallery.get(b.id).operation, gallery.get(b.id).strength) == ("img2img", 0.6)
    assert gallery.lineage(12345) == []
    gallery.delete(b.id)
    assert gallery.get(c.id).parent_id is None
    assert [i.id for i in gallery.lineage(c.id)] == [c.id]


def test_reopening_keeps_everything(folder, db):
    with Gallery(folder, db) as g:
        made = [add(g, f"palm {i}", i) for i in range(4)]
        g.set_favourite(made[1].id, True)
        before = everything(g)
    with Gallery(folder, db) as g:  # a server restart
        assert g.report.clean and g.report.items == 4
        assert everything(g) == before
        assert ids(g.search(favourite=True)) == [made[1].id]
        assert all(g.path(item).read_bytes() == png(i) for i, item in enumerate(made))
        assert add(g, "after", 9).id > made[-1].id


def test_threads_add_and_search_together(gallery, folder):
    errors = []

    def work(n):
        try:
            for i in range(8):
                add(gallery, f"thread {n} palm {i}", n * 100 + i)
                gallery.search("palm", limit=5)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    items = everything(gallery)
    assert len(items) == 32 and len(files_in(folder)) == 32


# -- the schema ----------------------------------------------------------------------------------

def test_a_version_1_database_is_migrated(folder, db):
    folder.mkdir()
    url = db or f"sqlite:///{folder / 'gallery.db'}"
    engine = open_engine(url)
    assert migrate(engine, target=1) == 1 and schema_version(engine) == 1
    old = png(11)
    sha = hashlib.sha256(old).hexdigest()
    with engine.begin() as conn:
        conn.execute(insert(IMAGES).values(created=1.0e9, prompt="an old lighthouse", negative_prompt="", model="m",
                                           seed=1, width=8, height=8, settings="{}", source="cli", parent_id=None,
                                           operation="generate", strength=None, favourite=False, sha256=sha))
    assert "images_model_id" not in {ix["name"] for ix in inspect(engine).get_indexes("images")}
    engine.dispose()
    (folder / "images" / sha[:2]).mkdir(parents=True)
    (folder / "images" / sha[:2] / f"{sha}.png").write_bytes(old)
    with Gallery(folder, db) as g:
        assert schema_version(g.engine) == SCHEMA_VERSION == 2
        assert g.report.clean and g.report.items == 1
        [item] = g.search("lighthouse")[0]  # made before full-text search existed, found by it
        assert (item.prompt, item.created, item.source) == ("an old lighthouse", 1.0e9, "cli")
        assert "images_model_id" in {ix["name"] for ix in inspect(g.engine).get_indexes("images")}
        new = add(g, "a new lighthouse", 12)
        assert ids(g.search("lighthouse")) == [new.id, item.id]


def test_a_newer_schema_is_refused(folder, db):
    with Gallery(folder, db) as g:
        with g.engine.begin() as conn:
            conn.execute(text("UPDATE schema_version SET version = 99"))
    with pytest.raises(UserError, match="newer than this noisecraft"):
        Gallery(folder, db)


# -- consistency ---------------------------------------------------------------------------------

def test_the_check_repairs_what_a_crash_leaves(folder, db):
    with Gallery(folder, db) as g:
        keep, lose = add(g, "kept", 1), add(g, "file lost", 2)
        g.path(lose).unlink()  # (c) a row whose file is gone (a crash mid-delete)
    orphan = png(77)  # (b) a whole file with no row (a crash between rename and commit)
    sha = hashlib.sha256(orphan).hexdigest()
    (folder / "images" / sha[:2]).mkdir(parents=True, exist_ok=True)
    (folder / "images" / sha[:2] / f"{sha}.png").write_bytes(orphan)
    temp = folder / "images" / keep.sha256[:2] / f".{keep.sha256[:16]}.0123456789abcdef.tmp"  # (a) half a file
    temp.write_bytes(orphan[:20])
    notes = folder / "images" / "notes.txt"
    notes.write_text("mine")
    with Gallery(folder, db) as g:
        report = g.report
        assert isinstance(report, CheckReport)
        assert (report.temp_files, report.orphan_files, report.missing_files, report.missing_ids,
                report.unknown_files, report.items) == (1, 1, 1, [lose.id], 1, 1)
        assert not report.clean and "1 temp file" in str(report)
        assert not temp.exists() and not (folder / "images" / sha[:2] / f"{sha}.png").exists()
        assert notes.read_text() == "mine"  # not the store's: left alone
        assert g.get(lose.id) is None and g.get(keep.id) == keep
        assert files_in(folder) == sorted([g.path(keep), notes])
        again = g.check()
        assert (again.temp_files, again.orphan_files, again.missing_files, again.items) == (0, 0, 0, 1)


def test_rows_are_kept_when_the_folder_holds_none_of_their_files(folder, db):
    with Gallery(folder, db) as g:
        made = [add(g, "palm", i) for i in range(2)]
    for path in files_in(folder):
        path.unlink()
    with Gallery(folder, db) as g:  # the wrong (or an unmounted) folder: do not wipe the library
        assert g.report.missing_files == 2 and g.report.items == 2 and "kept" in g.report.note
        assert [i.id for i in everything(g)] == [made[1].id, made[0].id]


WRITER = """
import io, random, sys
from PIL import Image
from noisecraft.gallery import Gallery
g = Gallery(sys.argv[1], sys.argv[2] or None)
rng = random.Random(int(sys.argv[3]))
for i in range(100000):
    buffer = io.BytesIO()
    Image.frombytes("RGB", (128, 128), rng.randbytes(128 * 128 * 3)).save(buffer, "PNG", compress_level=0)
    item = g.add(buffer.getvalue(), prompt=f"picture {i}", width=128, height=128, seed=i)
    print(item.id, item.sha256, flush=True)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_kill_9_while_adding_loses_nothing(folder, db):
    rng = random.Random(1234)
    src = str(Path(noisecraft.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    promised: dict[int, str] = {}
    for round_ in range(3):
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(folder), db or "", str(round_)],
                                 stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(3 + round_):
            line = child.stdout.readline()
            assert line, "the writer stopped before it was killed"
            id_, sha = line.split()
            promised[int(id_)] = sha
        time.sleep(rng.uniform(0.0, 0.05))
        child.send_signal(signal.SIGKILL)
        rest, _ = child.communicate(timeout=10)
        promised.update({int(i): s for i, s in (line.split() for line in rest.splitlines())})
        assert child.returncode == -signal.SIGKILL
        with Gallery(folder, db) as g:
            items = everything(g)
            assert g.report.missing_files == 0 and g.report.unknown_files == 0
            rows = {item.id: item.sha256 for item in items}
            assert promised.items() <= rows.items()  # every add that returned is there
            for item in items:
                assert hashlib.sha256(g.path(item).read_bytes()).hexdigest() == item.sha256
            assert files_in(folder) == sorted({g.path(item) for item in items})  # no temp or stray files
            assert len(rows) - len(promised) <= 1  # at most the add the kill interrupted, committed unprinted
            promised = rows


# -- settings ------------------------------------------------------------------------------------

@pytest.mark.parametrize("url", ["nonsense://x", "postgresql+psycopg://someone:secretpw@127.0.0.1:1/nodb",
                                 "postgres://someone:secretpw@127.0.0.1:1/nodb", "mysql://someone:secretpw@h/db",
                                 "not a url", "sqlite://"])
def test_a_bad_database_url_is_one_sentence(tmp_path, url):
    with pytest.raises(UserError) as caught:
        Gallery(tmp_path / "library", url)
    message = str(caught.value)
    assert "secretpw" not in message and "\n" not in message and not message.endswith(".")
    assert "Traceback" not in message and len(message) < 300


def test_an_unwritable_place_is_a_user_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="gallery folder"):
        Gallery(tmp_path / "file" / "library")
    with pytest.raises(UserError, match="cannot open the gallery database"):
        Gallery(tmp_path / "library", f"sqlite:///{tmp_path / 'file' / 'gallery.db'}")


def test_default_folder(monkeypatch, tmp_path):
    if sys.platform in ("win32", "darwin"):
        assert default_folder().parts[-2:] == ("noisecraft", "gallery")
        return
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_folder() == tmp_path / "noisecraft" / "gallery"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
    assert default_folder() == Path.home() / ".local" / "share" / "noisecraft" / "gallery"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_folder() == Path.home() / ".local" / "share" / "noisecraft" / "gallery"
