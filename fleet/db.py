"""The fleet registry's database: SQLite (the embedded default, one file in WAL mode) or PostgreSQL
(``postgresql://`` URL), one schema and one migration path for both (engine differences:
:mod:`bitnet_edge.fleet.dialect`).

Migrations are functions in :data:`MIGRATIONS`, applied in order; ``schema_version`` records the
last one applied.  Each runs in its own write transaction (SQLite ``BEGIN IMMEDIATE``, PostgreSQL
``BEGIN`` plus the fleet's advisory lock; DDL is transactional on both) that re-reads the version
first, so two replicas starting at once apply each migration exactly once, and a failed migration
leaves the schema where it was.  A database written by a newer bitnet-edge (version above what
this one knows) is refused, never modified.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from bitnet_edge.fleet.dialect import Dialect, engine_for
from bitnet_edge.fleet.errors import DatabaseError

__all__ = ["Database", "Tx", "MIGRATIONS", "SCHEMA_VERSION", "desired_model_of"]


class Tx:
    """What :meth:`Database.tx` yields: statements in the portable SQL (``?`` placeholders)."""

    def __init__(self, conn, dialect: Dialect, engine):
        self.conn, self.dialect, self._engine = conn, dialect, engine

    def execute(self, sql: str, args: Sequence = ()):
        return self.conn.execute(self.dialect.sql(sql), tuple(args))

    def executemany(self, sql: str, rows: Sequence[Sequence]) -> None:
        if rows:
            self._engine.executemany(self.conn, self.dialect.sql(sql), [tuple(r) for r in rows])

    def script(self, sql: str) -> None:
        """``;``-separated DDL with type tokens, inside the current transaction."""
        for stmt in self.dialect.ddl(sql).split(";"):
            if stmt.strip():
                self.conn.execute(stmt)


def _script(c: Tx, sql: str) -> None:
    c.script(sql)


def _m1_initial(c: Tx) -> None:
    _script(c, """
    CREATE TABLE devices (
        id TEXT PRIMARY KEY,
        profile TEXT, target TEXT,
        capabilities TEXT,                    -- JSON Capabilities (birth)
        tags TEXT NOT NULL DEFAULT '[]',      -- JSON list
        online {int} NOT NULL DEFAULT 0,
        first_seen {real} NOT NULL, last_seen {real} NOT NULL,
        installed TEXT,                       -- JSON InstalledRelease
        installed_model TEXT, installed_release {int}, installed_sha TEXT,
        health TEXT NOT NULL DEFAULT 'unknown',
        last_outcome TEXT                     -- JSON Outcome
    );
    CREATE TABLE bundles (
        sha256 TEXT PRIMARY KEY, size {int} NOT NULL,
        model TEXT NOT NULL, version TEXT NOT NULL, release {int} NOT NULL, target TEXT NOT NULL,
        release_digest TEXT NOT NULL,          -- sdk.bundle.manifest.release_digest
        delta_base_digest TEXT,                -- set for delta bundles
        added_at {real} NOT NULL
    );
    CREATE TABLE releases (
        id {id},
        model TEXT NOT NULL, version TEXT NOT NULL, release {int} NOT NULL, created_at {real} NOT NULL,
        UNIQUE (model, release)
    );
    CREATE TABLE release_bundles (
        release_id {int} NOT NULL REFERENCES releases(id), target TEXT NOT NULL,
        sha256 TEXT NOT NULL REFERENCES bundles(sha256),
        PRIMARY KEY (release_id, target)
    );
    CREATE TABLE release_deltas (
        release_id {int} NOT NULL REFERENCES releases(id), target TEXT NOT NULL,
        sha256 TEXT NOT NULL REFERENCES bundles(sha256),      -- the delta file
        base_sha256 TEXT NOT NULL REFERENCES bundles(sha256), -- the full bundle it applies to
        PRIMARY KEY (release_id, target, base_sha256)
    );
    CREATE TABLE rollouts (
        id TEXT PRIMARY KEY, seq {int} NOT NULL,
        release_id {int} NOT NULL REFERENCES releases(id), previous_release_id {int} REFERENCES releases(id),
        spec TEXT NOT NULL,                    -- JSON RolloutSpec
        state TEXT NOT NULL, stage {int} NOT NULL, reason TEXT,
        ack_failed {int} NOT NULL DEFAULT 0, ack_assigned {int} NOT NULL DEFAULT 0,
        rev {int} NOT NULL DEFAULT 0,        -- bumped on every write: replicas update optimistically
        created_at {real} NOT NULL, updated_at {real} NOT NULL
    );
    CREATE TABLE rollout_members (
        rollout_id TEXT NOT NULL REFERENCES rollouts(id), device_id TEXT NOT NULL,
        status TEXT NOT NULL, wave {int}, assigned_at {real}, started_at {real}, finished_at {real},
        from_release_id {int}, reason TEXT,
        PRIMARY KEY (rollout_id, device_id)
    );
    CREATE TABLE desired (
        device_id TEXT PRIMARY KEY, payload {blob} NOT NULL,   -- DesiredState JSON, empty: cleared
        rollout_id TEXT, updated_at {real} NOT NULL
    );
    """)


def _m2_indexes_and_leases(c: Tx) -> None:
    _script(c, """
    CREATE INDEX members_by_device ON rollout_members(device_id);
    CREATE INDEX bundles_by_digest ON bundles(release_digest, target);
    CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires {real} NOT NULL);
    """)


def _m3_history_and_detail(c: Tx) -> None:
    """The console's needs: a per-device history, the release in the other slot, the last metrics a
    device reported, and the human detail beside a rollout member's reason code.  History rows
    have no key of their own: they are ordered by ``ts`` then ``kind``."""
    _script(c, """
    CREATE TABLE device_events (
        device_id TEXT NOT NULL, ts {real} NOT NULL,
        kind TEXT NOT NULL,                   -- online | offline | install (an Outcome) | registered
        rollout_id TEXT, bundle_sha256 TEXT,
        result TEXT, reason TEXT,             -- install: Outcome.result and reason code
        message TEXT,                         -- install: Outcome.message, online: what it serves
        release TEXT                          -- JSON InstalledRelease serving after the event
    );
    CREATE INDEX device_events_by_device ON device_events(device_id, ts);
    ALTER TABLE devices ADD COLUMN previous TEXT;
    ALTER TABLE devices ADD COLUMN last_metrics TEXT;
    ALTER TABLE rollout_members ADD COLUMN detail TEXT
    """)  # devices.previous: JSON InstalledRelease in the other slot, last_metrics: JSON DeviceMetrics,
    # rollout_members.detail: the human text beside reason (Outcome.message).  No comments inside an
    # ALTER: SQLite copies them into the table's stored CREATE statement.


def desired_model_of(payload) -> str | None:
    """``release.model`` of a stored DesiredState payload (None: empty, unreadable or no valid model name)."""
    import json
    import re

    from bitnet_edge.sdk.wire.protocol import MODEL_NAME

    try:
        model = json.loads(bytes(payload))["release"]["model"]
    except (ValueError, TypeError, KeyError):
        return None
    return model if isinstance(model, str) and re.match(MODEL_NAME, model) else None


def _m4_models_per_device(c: Tx) -> None:
    """Several models per device (ADR 0021): a desired state per (device, model), retained on
    ``.../desired/{model}``, and one row per model a device reports (``ReportedState.models``).

    ``desired`` keeps its meaning: what is retained on the single-model ``.../desired`` topic.
    Each stored desired state is copied to ``desired_models`` under its release's model; the
    ``desired`` row stays while the device runs an agent that reads only ``.../desired`` (it
    reports no ``models``), and is cleared (empty retained message, then the row deleted) once
    the device reports ``models`` (the driver's ``clear_legacy``)."""
    _script(c, """
    CREATE TABLE desired_models (
        device_id TEXT NOT NULL, model TEXT NOT NULL,
        payload {blob} NOT NULL,               -- DesiredState JSON, empty: cleared
        rollout_id TEXT, updated_at {real} NOT NULL,
        PRIMARY KEY (device_id, model)
    );
    CREATE TABLE device_models (
        device_id TEXT NOT NULL, model TEXT NOT NULL,
        state TEXT NOT NULL,                   -- JSON ModelState as last reported
        installed_release {int}, installed_sha TEXT,
        updated_at {real} NOT NULL,
        PRIMARY KEY (device_id, model)
    );
    ALTER TABLE devices ADD COLUMN models_reported {int} NOT NULL DEFAULT 0
    """)  # devices.models_reported: 1 when the device's last state listed its models (ADR 0021 agent)
    rows = c.execute("SELECT device_id, payload, rollout_id, updated_at FROM desired").fetchall()
    copied = [(r["device_id"], m, bytes(r["payload"]), r["rollout_id"], r["updated_at"]) for r in rows
              if (m := desired_model_of(r["payload"])) is not None]
    c.executemany("INSERT INTO desired_models(device_id, model, payload, rollout_id, updated_at) VALUES (?,?,?,?,?)",
                  copied)


#: Ordered; entry i takes the schema from version i to i + 1.  Append only.
MIGRATIONS: list[Callable[[Tx], None]] = [_m1_initial, _m2_indexes_and_leases, _m3_history_and_detail,
                                          _m4_models_per_device]
SCHEMA_VERSION = len(MIGRATIONS)


class Database:
    """One connection shared by the service's threads behind a lock (the load is small).

    ``target``: a SQLite file path, or a ``postgresql://user:password@host:port/dbname`` URL.
    A PostgreSQL connection that broke (server restart, network) is opened again on next use.
    """

    def __init__(self, target: str | Path):
        self.engine = engine_for(target)
        self.dialect: Dialect = self.engine.dialect
        self.where = self.engine.where  # for messages: the path, or the URL without its password
        self._lock = threading.RLock()
        self._conn = self.engine.connect()
        self.migrate()

    @property
    def kind(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.dialect.name

    def _live(self):
        if self.engine.broken(self._conn):
            self._conn = self.engine.connect()
        return self._conn

    def _first(self, run):
        """``run(conn)`` as the first statement on the connection: when the server dropped the
        connection meanwhile (restart, idle timeout), reconnect and run it once more."""
        conn = self._live()
        try:
            return run(conn)
        except Exception:
            if not self.engine.broken(conn):
                raise
            return run(self._live())

    def _read(self, run):
        """A read: inside this thread's open transaction, or on its own (reconnecting once if needed)."""
        with self._lock:
            conn = self._live()
            return run(conn) if self.engine.in_transaction(conn) else self._first(run)

    def tables(self) -> set[str]:
        return self._read(self.engine.tables)

    def version(self) -> int:
        with self._lock:
            if "schema_version" not in self.tables():
                return 0
            row = self.one("SELECT MAX(version) FROM schema_version")
            return row[0] or 0

    def migrate(self) -> int:
        with self._lock:
            for target in range(1, SCHEMA_VERSION + 1):
                with self.tx() as c:
                    c.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                    current = self.version()
                    if current > SCHEMA_VERSION:
                        raise DatabaseError(self.where, "newer-schema",
                                            f"schema version {current}, this bitnet-edge knows up to "
                                            f"{SCHEMA_VERSION}: upgrade bitnet-edge")
                    if current >= target:
                        continue
                    MIGRATIONS[target - 1](c)
                    c.execute("INSERT INTO schema_version(version) VALUES (?)", (target,))
            return self.version()

    @contextmanager
    def tx(self) -> Iterator[Tx]:
        """A write transaction, serialized against every other writer of the database (COMMIT at the
        end, ROLLBACK on error); a nested call joins the outer transaction."""
        with self._lock:
            conn = self._live()
            if self.engine.in_transaction(conn):
                yield Tx(conn, self.dialect, self.engine)
                return

            def begin(conn):
                try:
                    for stmt in self.dialect.begin:
                        conn.execute(stmt)
                except BaseException:
                    if not self.engine.broken(conn) and self.engine.in_transaction(conn):
                        conn.execute("ROLLBACK")
                    raise
                return conn

            conn = self._first(begin)
            c = Tx(conn, self.dialect, self.engine)
            try:
                yield c
            except BaseException:
                if not self.engine.broken(conn):
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def now(self) -> float:
        """Seconds since the epoch by the database's clock (PostgreSQL: the server's, one clock for
        replicas on several hosts; SQLite: this host's)."""
        return self._read(self.engine.now)

    def query(self, sql: str, args: Sequence = ()) -> list:
        return self._read(lambda conn: conn.execute(self.dialect.sql(sql), tuple(args)).fetchall())

    def one(self, sql: str, args: Sequence = ()):
        rows = self.query(sql, args)
        return rows[0] if rows else None

    def close(self) -> None:
        with self._lock:
            self._conn.close()
