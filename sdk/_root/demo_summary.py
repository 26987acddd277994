"""The demo's summary lines, computed from what it observed (never a fixed verdict).

Each function takes the facts the demo recorded (rollout status as the fleet reported it, install
outcomes as each agent answered, measured perplexities ...) and says what they show, including
when they show something went wrong.  Pure functions: tests feed them facts of every kind.
"""

from __future__ import annotations

from collections import Counter

__all__ = ["rollout_line", "tampered_line", "rollback_line", "llm_line", "llm_rollout_line", "fleet_models_line",
           "count_phrase"]


def count_phrase(ok: list[str], total: list[str], what: str) -> str:
    """'all 3 agents' / '2 of 3 agents (not edge-a)' / 'none of 3 agents'."""
    n, t = len(ok), len(total)
    if t and n == t:
        return f"all {t} {what}"
    if n == 0:
        return f"none of {t} {what}"
    missing = ", ".join(d for d in total if d not in ok)
    return f"{n} of {t} {what} (not {missing})"


def rollout_line(st: dict) -> str:
    """'completed: 3/3 devices' from a rollout's status as the fleet reported it, with its reason."""
    counts = ", ".join(f"{v} {k}" for k, v in sorted((st.get("counts") or {}).items()))
    line = f"{st['state']}: {st['done']}/{st['devices']} devices"
    if counts:
        line += f" ({counts})"
    if st.get("reason"):
        line += f"; {st['reason']}"
    return line


def _agent_verdicts(agents: dict[str, dict]) -> str:
    """Group the agents by what they answered: 'refused by all 3 agents (corrupt)' or a per-group list."""
    def key(o: dict) -> str:
        if o.get("result") == "installed":
            return "INSTALLED"
        if o.get("result") in ("rejected", "failed", "rolled_back"):
            return f"refused ({o.get('reason')})"
        return f"no outcome ({o.get('error') or o.get('result')})"

    groups: dict[str, list[str]] = {}
    for dev, o in agents.items():
        groups.setdefault(key(o), []).append(dev)
    if len(groups) == 1:
        (k, devs), = groups.items()
        if k.startswith("refused"):
            return f"refused by all {len(devs)} agents {k[len('refused '):]}"
        return f"{k} on all {len(devs)} agents"
    return "; ".join(f"{k} on {', '.join(devs)}" for k, devs in sorted(groups.items()))


def tampered_line(fleet: dict, agents: dict[str, dict]) -> str:
    """``fleet``: {"refused": bool, "reason": str|None}; ``agents``: each agent's install outcome
    (result, reason) or {"error": ...} when it gave none."""
    head = (f"refused by the fleet ({fleet.get('reason')})" if fleet.get("refused")
            else "ACCEPTED by the fleet")
    return f"{head}; {_agent_verdicts(agents)}" if agents else f"{head}; no agent was asked"


def rollback_line(state: str, serving: dict[str, str]) -> str:
    """After the operator's rollback: what each device serves, as each agent answered."""
    versions = Counter(serving.values())
    if len(versions) == 1:
        (v, n), = versions.items()
        return f"{state}: every device serves {v}" if n == len(serving) else f"{state}: {n} devices serve {v}"
    return f"{state}: " + ", ".join(f"{d} serves {v}" for d, v in sorted(serving.items()))


def llm_line(facts: dict) -> str:
    """Held-out perplexity ternary QAT vs float and the size ratio, from the training report."""
    m = facts["models"]
    t, f = m["ternary"], m["float32"]
    ratio = f["weights_bytes"] / t["weights_bytes"]
    return (f"held-out perplexity ternary QAT {t['heldout_ppl']:.1f} vs float32 {f['heldout_ppl']:.1f} "
            f"(post-training ternary {m['ternary-ptq']['heldout_ppl']:.1f}); weights "
            f"{t['weights_bytes']:,} vs {f['weights_bytes']:,} bytes ({ratio:.1f}x smaller)")


def llm_rollout_line(model: str, st: dict, listed: dict[str, list[str]], chats: dict[str, dict],
                     mlp: str, mlp_ok: dict[str, bool]) -> str:
    """The LLM's rollout as a second model: the rollout, which agents list both models, which
    streamed a chat reply (``chats``: ChatResult dicts), which kept serving the MLP (``mlp_ok``)."""
    devices = list(chats) or list(listed)
    both = [d for d in devices if model in listed.get(d, []) and mlp in listed.get(d, [])]
    replied = [d for d in devices if chats.get(d, {}).get("done") and not chats[d].get("error")
               and chats[d].get("pieces", 0) > 0]
    still = [d for d in devices if mlp_ok.get(d)]
    return (f"{rollout_line(st)}; {model} and {mlp} listed on {count_phrase(both, devices, 'agents')}; "
            f"streamed chat replies from {count_phrase(replied, devices, 'agents')}; "
            f"{mlp} kept serving on {count_phrase(still, devices, 'agents')}")


def fleet_models_line(view: dict[str, dict[str, str]], models: list[str]) -> str:
    """What the fleet reports the devices serve (``view``: {device: {model: version}, '-': none}):
    'digits 1.0.0 and stdlib-lm 1.0.0 on all 3 devices (fleet devices)'."""
    devices = sorted(view)
    both = [d for d in devices if all(view[d].get(m, "-") != "-" for m in models)]
    parts = [f"{m} {'/'.join(sorted({view[d].get(m, '-') for d in devices}))}" for m in models]
    return f"{' and '.join(parts)} on {count_phrase(both, devices, 'devices')} (fleet devices)"
