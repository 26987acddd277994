"""Prometheus text metrics of the agent (requests, latency histogram, model versions, installs),
labelled by model (ADR 0021: a device serves several)."""

from __future__ import annotations

import threading
from collections import defaultdict

__all__ = ["Metrics", "BUCKETS"]

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)  # seconds


def _esc(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)  # (route, model, code)
        self.hist: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * (len(BUCKETS) + 1))
        self.sums: dict[tuple[str, str], float] = defaultdict(float)
        self.installs: dict[tuple[str, str, str], int] = defaultdict(int)  # (model, result, reason)
        self.models: dict[str, dict[str, str]] = {}

    def observe(self, route: str, code: int, seconds: float, model: str = "") -> None:
        with self._lock:
            self.requests[(route, model, code)] += 1
            h = self.hist[(route, model)]
            i = next((k for k, b in enumerate(BUCKETS) if seconds <= b), len(BUCKETS))
            h[i] += 1
            self.sums[(route, model)] += seconds

    def totals(self, routes) -> tuple[int, int, float]:
        """(requests, of them 5xx, seconds spent) over ``routes`` since start."""
        with self._lock:
            req = sum(n for (r, _, _), n in self.requests.items() if r in routes)
            err = sum(n for (r, _, code), n in self.requests.items() if r in routes and code >= 500)
            return req, err, sum(v for (r, _), v in self.sums.items() if r in routes)

    def install(self, result: str, reason: str, model: str = "") -> None:
        with self._lock:
            self.installs[(model, result, reason)] += 1

    def set_model(self, name: str, **labels: str) -> None:
        """The model ``name`` serves this release now (``model``, ``version``, ``release``, ``slot``)."""
        with self._lock:
            self.models[name] = {k: str(v) for k, v in labels.items()}

    def render(self) -> str:
        with self._lock:
            out = ["# HELP bne_requests_total Local API requests by route and status.",
                   "# TYPE bne_requests_total counter"]
            for (route, model, code), n in sorted(self.requests.items()):
                out.append(f'bne_requests_total{{route="{_esc(route)}",model="{_esc(model)}",code="{code}"}} {n}')
            out += ["# HELP bne_request_seconds Local API latency.", "# TYPE bne_request_seconds histogram"]
            for (route, model), h in sorted(self.hist.items()):
                lab = f'route="{_esc(route)}",model="{_esc(model)}"'
                cum = 0
                for b, n in zip(BUCKETS, h):
                    cum += n
                    out.append(f'bne_request_seconds_bucket{{{lab},le="{b}"}} {cum}')
                cum += h[-1]
                out.append(f'bne_request_seconds_bucket{{{lab},le="+Inf"}} {cum}')
                out.append(f'bne_request_seconds_sum{{{lab}}} {self.sums[(route, model)]}')
                out.append(f'bne_request_seconds_count{{{lab}}} {cum}')
            out += ["# HELP bne_model_info Each serving model's release (value 1).", "# TYPE bne_model_info gauge"]
            for name, labels in sorted(self.models.items()):
                text = ",".join(f'{k}="{_esc(v)}"' for k, v in sorted(labels.items()))
                out.append(f"bne_model_info{{{text}}} 1")
            out += ["# HELP bne_installs_total Install attempts by model, result and reason.",
                    "# TYPE bne_installs_total counter"]
            for (model, result, reason), n in sorted(self.installs.items()):
                out.append(f'bne_installs_total{{model="{_esc(model)}",result="{result}",reason="{reason}"}} {n}')
            return "\n".join(out) + "\n"
