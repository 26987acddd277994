"""The fleet service's SQLite database: one file in WAL mode, schema migrations, transactions.

Migrations are functions in :data:`MIGRATIONS`, applied in order; ``schema_version`` records the
last one applied.  Each runs in its own ``BEGIN IMMEDIATE`` transaction that re-reads the version
first, so two replicas starting at once apply each migration exactly once.  A database written by
a newer bitnet-edge (version above what this one knows) is refused, never modified.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bitnet_edge.fleet.errors import DatabaseError

__all__ = ["Database", "MIGRATIONS", "SCHEMA_VERSION"]


def _script(c: sqlite3.Connection, sql: str) -> None:
    """Run ``;``-separated statements inside the current transaction (executescript would COMMIT)."""
    for stmt in sql.split(";"):
        if stmt.strip():
            c.execute(stmt)


def _m1_initial(c: sqlite3.Connection) -> None:
    _script(c, """
    CREATE TABLE devices (
        id TEXT PRIMARY KEY,
        profile TEXT, target TEXT,
        capabilities TEXT,                    -- JSON Capabilities (birth)
        tags TEXT NOT NULL DEFAULT '[]',      -- JSON list
        online INTEGER NOT NULL DEFAULT 0,
        first_seen REAL NOT NULL, last_seen REAL NOT NULL,
        installed TEXT,                       -- JSON InstalledRelease
        installed_model TEXT, installed_release INTEGER, installed_sha TEXT,
        health TEXT NOT NULL DEFAULT 'unknown',
        last_outcome TEXT                     -- JSON Outcome
    );
    CREATE TABLE bundles (
        sha256 TEXT PRIMARY KEY, size INTEGER NOT NULL,
        model TEXT NOT NULL, version TEXT NOT NULL, release INTEGER NOT NULL, target TEXT NOT NULL,
        release_digest TEXT NOT NULL,          -- packagers.manifest.release_digest
        delta_base_digest TEXT,                -- set for delta bundles
        added_at REAL NOT NULL
    );
    CREATE TABLE releases (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        model TEXT NOT NULL, version TEXT NOT NULL, release INTEGER NOT NULL, created_at REAL NOT NULL,
        UNIQUE (model, release)
    );
    CREATE TABLE release_bundles (
        release_id INTEGER NOT NULL REFERENCES releases(id), target TEXT NOT NULL,
        sha256 TEXT NOT NULL REFERENCES bundles(sha256),
        PRIMARY KEY (release_id, target)
    );
    CREATE TABLE release_deltas (
        release_id INTEGER NOT NULL REFERENCES releases(id), target TEXT NOT NULL,
        sha256 TEXT NOT NULL REFERENCES bundles(sha256),      -- the delta file
        base_sha256 TEXT NOT NULL REFERENCES bundles(sha256), -- the full bundle it applies to
        PRIMARY KEY (release_id, target, base_sha256)
    );
    CREATE TABLE rollouts (
        id TEXT PRIMARY KEY, seq INTEGER NOT NULL,
        release_id INTEGER NOT NULL REFERENCES releases(id), previous_release_id INTEGER REFERENCES releases(id),
        spec TEXT NOT NULL,                    -- JSON RolloutSpec
        state TEXT NOT NULL, stage INTEGER NOT NULL, reason TEXT,
        ack_failed INTEGER NOT NULL DEFAULT 0, ack_assigned INTEGER NOT NULL DEFAULT 0,
        rev INTEGER NOT NULL DEFAULT 0,        -- bumped on every write: replicas update optimistically
        created_at REAL NOT NULL, updated_at REAL NOT NULL
    );
    CREATE TABLE rollout_members (
        rollout_id TEXT NOT NULL REFERENCES rollouts(id), device_id TEXT NOT NULL,
        status TEXT NOT NULL, wave INTEGER, assigned_at REAL, started_at REAL, finished_at REAL,
        from_release_id INTEGER, reason TEXT,
        PRIMARY KEY (rollout_id, device_id)
    );
    CREATE TABLE desired (
        device_id TEXT PRIMARY KEY, payload BLOB NOT NULL,   -- DesiredState JSON, empty: cleared
        rollout_id TEXT, updated_at REAL NOT NULL
    );
    """)


def _m2_indexes_and_leases(c: sqlite3.Connection) -> None:
    _script(c, """
    CREATE INDEX members_by_device ON rollout_members(device_id);
    CREATE INDEX bundles_by_digest ON bundles(release_digest, target);
    CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires REAL NOT NULL);
    """)


def _m3_history_and_detail(c: sqlite3.Connection) -> None:
    """The console's needs: a per-device history, the release in the other slot, the last metrics a
    device reported, and the human detail beside a rollout member's reason code.  Plain SQL (no
    rowid or AUTOINCREMENT): history rows are ordered by ``ts`` then ``kind``."""
    _script(c, """
    CREATE TABLE device_events (
        device_id TEXT NOT NULL, ts REAL NOT NULL,
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


#: Ordered; entry i takes the schema from version i to i + 1.  Append only.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_m1_initial, _m2_indexes_and_leases,
                                                          _m3_history_and_detail]
SCHEMA_VERSION = len(MIGRATIONS)


class Database:
    """One connection shared by the service's threads behind a lock (the load is small)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as exc:
            raise DatabaseError(str(self.path), "corrupt", str(exc)) from None
        self._lock = threading.RLock()
        self.migrate()

    def version(self) -> int:
        self._conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = self._conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return row[0] or 0

    def migrate(self) -> int:
        with self._lock:
            for target in range(1, SCHEMA_VERSION + 1):
                with self.tx() as c:
                    current = self.version()
                    if current > SCHEMA_VERSION:
                        raise DatabaseError(str(self.path), "newer-schema",
                                            f"schema version {current}, this bitnet-edge knows up to "
                                            f"{SCHEMA_VERSION}: upgrade bitnet-edge")
                    if current >= target:
                        continue
                    MIGRATIONS[target - 1](c)
                    c.execute("INSERT INTO schema_version(version) VALUES (?)", (target,))
            return self.version()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error)."""
        with self._lock:
            if self._conn.in_transaction:  # nested: join the outer one
                yield self._conn
                return
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    def one(self, sql: str, args: tuple = ()) -> sqlite3.Row | None:
        with self._lock:
            return self._conn.execute(sql, args).fetchone()

    def close(self) -> None:
        with self._lock:
            self._conn.close()
