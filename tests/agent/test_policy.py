"""The agent's install decision (agent/policy.py: decide): one table, and both callers follow it."""

from __future__ import annotations

import pytest

from bitnet_edge.agent import policy
from bitnet_edge.sdk.wire.protocol import InstalledRelease

X86, ARM = "linux-x86_64", "linux-aarch64"


def rel(release: int, sha: str = "", model: str = "m", target: str = X86) -> InstalledRelease:
    return InstalledRelease(model=model, version=f"{release}.0.0", release=release,
                            bundle_sha256=(sha or str(release % 10)) * 64, target=target)


#        candidate        installed  previous   allow  -> action, reason
CASES = [
    (rel(1), None, None, False, "install", "ok"),  # an empty device
    (rel(2), rel(1), None, False, "install", "ok"),  # an upgrade
    (rel(2), rel(2), None, False, "current", "ok"),  # the installed bundle itself
    (rel(2), rel(2), None, True, "current", "ok"),  # ... also when a downgrade is allowed
    (rel(2, "e"), rel(2), None, False, "current", "ok"),  # same model, release, target: other bytes (re-signed)
    (rel(2, "a", target=ARM), rel(2), None, False, "reject", "downgrade"),  # an equal counter, another bundle
    (rel(2, "a", target=ARM), rel(2), None, True, "install", "ok"),  # ... explicitly allowed
    (rel(1), rel(2), None, False, "reject", "downgrade"),  # a lower counter
    (rel(1), rel(2), None, True, "install", "ok"),  # ... explicitly allowed, not in the other slot
    (rel(1), rel(2), rel(1), True, "activate_previous", "ok"),  # a rollback: switch slots, no download
    (rel(1), rel(2), rel(1), False, "reject", "downgrade"),  # ... never without the downgrade flag
    (rel(1, "9"), rel(2), rel(1), True, "activate_previous", "ok"),  # the previous release, rebuilt bytes
    (rel(3), rel(2), rel(1), False, "install", "ok"),  # the previous slot does not matter for an upgrade
]


@pytest.mark.parametrize("candidate, installed, previous, allow, action, reason", CASES)
def test_decide(candidate, installed, previous, allow, action, reason):
    d = policy.decide(candidate, installed, allow_downgrade=allow, previous=previous)
    assert (d.action, d.reason) == (action, reason)
    if action == "reject":
        assert f"release {candidate.release}" in d.message and f"release {installed.release}" in d.message


def test_the_release_rule_is_written_once():
    """sync.py and daemon.py ask policy.decide; neither compares release counters itself."""
    import ast
    from pathlib import Path

    import bitnet_edge.agent as agent

    bad = []
    for p in sorted(Path(agent.__file__).parent.glob("*.py")):
        if p.name == "policy.py":
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Compare) and any(
                    isinstance(x, ast.Attribute) and x.attr == "release" for x in [node.left, *node.comparators]):
                bad.append(f"{p.name}:{node.lineno}")
    assert not bad, bad
