"""The SQLite file a mirror URL names: the one the driver opens; a new one is private."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from sqlalchemy import text

from mirror.database import (
    SQLITE_CACHE_KIB,
    DatabaseUnavailable,
    create_mirror_engine,
    sqlite_file,
    write_transaction,
)

# {dir} is the working directory. Each names the file mirror.db there, or a file of its own.
FILE_URLS = [
    "sqlite:///{dir}/mirror.db",
    "sqlite:///mirror.db",
    "sqlite:///file:{dir}/mirror.db?uri=true",
    "sqlite:///file:mirror.db?uri=true",
    "sqlite:///file://localhost{dir}/mirror.db?uri=true&cache=private",
    "sqlite:///file://{dir}/mirror.db?uri=true&mode=rwc",
    "sqlite:///mirror.db?uri=true",  # no scheme: an ordinary name, URIs enabled or not
    "sqlite:///file:{dir}/my%2520mirror.db?uri=true",  # SQLite decodes the URI's %20
]
NO_FILE_URLS = [
    "sqlite://",
    "sqlite:///:memory:",
    "sqlite:///file::memory:?uri=true&cache=shared",
    "sqlite:///file:{dir}/mirror.db?uri=true&mode=memory",
    "sqlite:///file:{dir}/mirror.db?uri=true&vfs=memdb",
    "sqlite:///file:?uri=true",  # SQLite's temporary database, gone when closed
]


def opened_file(database_url: str) -> str:
    """The file SQLite reports for the main database, after one write."""
    engine = create_mirror_engine(database_url)
    try:
        write_transaction(engine, lambda c: c.execute(text("CREATE TABLE IF NOT EXISTS t (x)")))
        with engine.connect() as connection:
            rows = connection.execute(text("PRAGMA database_list")).all()
        return str(rows[0][2])
    finally:
        engine.dispose()


@pytest.mark.parametrize("template", FILE_URLS)
def test_the_file_named_is_the_one_sqlite_opens(usual_umask: Path, template: str) -> None:
    url = template.format(dir=usual_umask)
    named = sqlite_file(url)
    assert named is not None
    assert named.parent == usual_umask
    assert Path(opened_file(url)) == named


@pytest.mark.parametrize("template", NO_FILE_URLS)
def test_in_memory_and_temporary_databases_name_no_file(usual_umask: Path, template: str) -> None:
    url = template.format(dir=usual_umask)
    assert sqlite_file(url) is None
    opened_file(url)
    assert list(usual_umask.iterdir()) == []  # nothing on disk to protect


def test_a_file_uri_without_uri_true_is_a_path_as_sqlalchemy_reads_it(usual_umask: Path) -> None:
    # Without uri=true the driver takes "file:..." for a relative path: a directory "file:".
    url = f"sqlite:///file:{usual_umask}/mirror.db"
    assert sqlite_file(url) == usual_umask / f"file:{usual_umask}" / "mirror.db"


def test_postgresql_names_no_file() -> None:
    assert sqlite_file("postgresql://mirror@db/mirror") is None


@pytest.mark.parametrize(
    "template",
    ["sqlite:///{dir}/mirror.db", "sqlite:///file:{dir}/mirror.db?uri=true", "sqlite:///mirror.db"],
)
def test_a_new_file_and_its_wal_and_shm_are_private_to_the_owner(
    usual_umask: Path, template: str
) -> None:
    engine = create_mirror_engine(template.format(dir=usual_umask))
    try:
        with engine.connect() as connection:
            connection.execute(text("CREATE TABLE t (x)"))
            connection.execute(text("INSERT INTO t VALUES (1)"))
            connection.commit()
            # While a connection is open, the write-ahead log and its index exist.
            files = sorted(path.name for path in usual_umask.iterdir())
            assert files == ["mirror.db", "mirror.db-shm", "mirror.db-wal"]
            for path in usual_umask.iterdir():
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    finally:
        engine.dispose()


def test_an_existing_file_keeps_the_mode_its_operator_gave(usual_umask: Path) -> None:
    database = usual_umask / "mirror.db"
    database.touch()
    database.chmod(0o640)  # analysts' group may read
    opened_file(f"sqlite:///file:{database}?uri=true")
    assert stat.S_IMODE(database.stat().st_mode) == 0o640


@pytest.mark.parametrize("mode", ["ro", "rw"])
def test_a_uri_that_may_not_create_the_file_creates_none(usual_umask: Path, mode: str) -> None:
    with pytest.raises(DatabaseUnavailable, match="unable to open"):
        opened_file(f"sqlite:///file:{usual_umask}/mirror.db?uri=true&mode={mode}")
    assert list(usual_umask.iterdir()) == []


def test_sqlite_connections_keep_a_bounded_page_cache_larger_than_the_default(
    tmp_path: Path,
) -> None:
    """The default 2 MiB cache made a large reconcile read its indexes back from the OS page
    by page; the bound keeps memory flat however large the mirror grows."""
    engine = create_mirror_engine(f"sqlite:///{tmp_path}/mirror.db")
    try:
        with engine.connect() as connection:
            size = connection.exec_driver_sql("PRAGMA cache_size").scalar()
        assert size == -SQLITE_CACHE_KIB
        assert 2048 < SQLITE_CACHE_KIB <= 65536
    finally:
        engine.dispose()


def test_postgresql_sessions_plan_each_statement_for_its_values(postgres_url: str) -> None:
    """A generic plan made while the mirror was small (a scan of patients) must not outlive
    the table's growth: every session plans for the values it runs with."""
    engine = create_mirror_engine(postgres_url)
    try:
        with engine.connect() as connection:
            mode = connection.exec_driver_sql("SHOW plan_cache_mode").scalar()
            scans = connection.exec_driver_sql("SHOW enable_seqscan").scalar()
        assert mode == "force_custom_plan"
        assert scans == "on"  # analysts' and FHIR searches may need a scan
    finally:
        engine.dispose()


def test_a_pooled_connection_that_died_while_idle_is_replaced(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connections idle past the threshold are tested at checkout: one whose server process
    is gone (a restart) is swapped for a new one, and the transaction never sees it."""
    import mirror.database

    monkeypatch.setattr(mirror.database, "_PING_AFTER_IDLE_SECONDS", 0.0)
    engine = create_mirror_engine(postgres_url)
    other = create_mirror_engine(postgres_url)
    try:
        first = write_transaction(
            engine, lambda c: c.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        )
        with other.begin() as connection:
            connection.exec_driver_sql(f"SELECT pg_terminate_backend({int(first)}, 5000)")
        second = write_transaction(
            engine, lambda c: c.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        )
        assert second != first
    finally:
        engine.dispose()
        other.dispose()


def test_the_committers_kept_plans_stay_index_scans_as_the_table_grows(postgres_url: str) -> None:
    """The committer's engine keeps generic plans (key_lookups_only): one made on an empty
    table must still be the primary key's index scan once the table has grown; on a session
    that may scan, the same statement kept the scan it chose while the table was empty."""
    from mirror.migrate import upgrade

    read = (
        "SELECT id, content_version, deleted_version FROM patients "
        "WHERE id = ANY(ARRAY(SELECT json_array_elements_text($1::json)))"
    )
    engine = create_mirror_engine(postgres_url, key_lookups_only=True)
    try:
        upgrade(engine)
        plans = {}
        for may_scan in (False, True):
            with engine.connect() as connection:
                if may_scan:
                    connection.exec_driver_sql("SET enable_seqscan = on")
                connection.exec_driver_sql("TRUNCATE patients")
                connection.exec_driver_sql(f"PREPARE states_read(text) AS {read}")
                for _ in range(6):  # PostgreSQL weighs a generic plan from the sixth on
                    connection.exec_driver_sql("EXECUTE states_read('[\"PAT1\"]')").all()
                connection.exec_driver_sql(
                    "INSERT INTO patients (id, content_version, raw, mirrored_at) "
                    "SELECT 'PAT' || n, 'v', '{}', now() FROM generate_series(1, 20000) n"
                )
                plan = connection.exec_driver_sql("EXPLAIN EXECUTE states_read('[\"PAT1\"]')")
                plans[may_scan] = "\n".join(row[0] for row in plan)
                connection.rollback()
        assert "pk_patients" in plans[False]  # an index scan, or a bitmap one, on the key
        assert "Seq Scan on patients" not in plans[False]
        assert "Seq Scan on patients" in plans[True]  # what the setting guards against
    finally:
        engine.dispose()
