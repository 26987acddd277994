"""[hardening] (issue 18, security): bundle builder side."""

from __future__ import annotations

import json
import os

from click.testing import CliRunner
from tests.support.bundle_models import make_mlp_dir

from bitnet_edge.cli import main
from bitnet_edge.packagers.keys import generate_keypair


def test_package_refuses_a_signing_key_other_users_can_read(tmp_path):
    kp = generate_keypair(tmp_path / "keys")
    model = make_mlp_dir(tmp_path / "m", sizes=(8, 8, 2))
    for mode in (0o666, 0o644, 0o640):
        os.chmod(kp.private_path, mode)
        res = CliRunner().invoke(main, ["package", str(model), "--device", "x86-64-v3", "--version", "1.0.0",
                                        "--key", str(kp.private_path), "-o", str(tmp_path / "out"), "--json"])
        assert res.exit_code == 1, res.output
        err = json.loads(res.output)["error"]
        assert err["reason"] == "insecure-permissions" and f"{mode:04o}" in err["message"], err
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
