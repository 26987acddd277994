"""[hardening] (issue 18, security): the fleet's private files, the embedded broker's per-device
credentials and ACLs, signed desired states, and who may fetch which bundle."""

from __future__ import annotations

import os
import stat

from click.testing import CliRunner

from bitnet_edge.cli import main
from bitnet_edge.fleet.db import Database


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_the_fleet_data_dir_is_private_and_the_registry_0600(tmp_path):
    old = os.umask(0o022)
    try:
        data = tmp_path / "fleet"
        data.mkdir(mode=0o755)
        db = Database(data / "fleet.db")  # the SQLite registry, WAL mode
        with db.tx() as c:
            c.execute("SELECT 1")
        for name in ("fleet.db", "fleet.db-wal", "fleet.db-shm"):
            if (data / name).exists():
                assert _mode(data / name) == 0o600, name
        r = CliRunner().invoke(main, ["fleet", "certs", "--data", str(data), "--json"])
        assert r.exit_code == 0, r.output
        assert _mode(data) == 0o700  # a loose directory made by someone else is tightened
        fresh = tmp_path / "fresh"
        r = CliRunner().invoke(main, ["fleet", "certs", "--data", str(fresh), "--json"])
        assert r.exit_code == 0, r.output
        assert _mode(fresh) == 0o700 and _mode(fresh / "pki") == 0o700
    finally:
        os.umask(old)
