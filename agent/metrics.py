"""Prometheus text metrics of the agent (requests, latency histogram, model version, installs)."""

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
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.hist: dict[str, list[int]] = defaultdict(lambda: [0] * (len(BUCKETS) + 1))
        self.sums: dict[str, float] = defaultdict(float)
        self.installs: dict[tuple[str, str], int] = defaultdict(int)
        self.model: dict[str, str] = {}

    def observe(self, route: str, code: int, seconds: float) -> None:
        with self._lock:
            self.requests[(route, code)] += 1
            h = self.hist[route]
            i = next((k for k, b in enumerate(BUCKETS) if seconds <= b), len(BUCKETS))
            h[i] += 1
            self.sums[route] += seconds

    def totals(self, routes) -> tuple[int, int, float]:
        """(requests, of them 5xx, seconds spent) over ``routes`` since start."""
        with self._lock:
            req = sum(n for (r, _), n in self.requests.items() if r in routes)
            err = sum(n for (r, code), n in self.requests.items() if r in routes and code >= 500)
            return req, err, sum(v for r, v in self.sums.items() if r in routes)

    def install(self, result: str, reason: str) -> None:
        with self._lock:
            self.installs[(result, reason)] += 1

    def set_model(self, **labels: str) -> None:
        with self._lock:
            self.model = {k: str(v) for k, v in labels.items()}

    def render(self) -> str:
        with self._lock:
            out = ["# HELP bne_requests_total Local API requests by route and status.",
                   "# TYPE bne_requests_total counter"]
            for (route, code), n in sorted(self.requests.items()):
                out.append(f'bne_requests_total{{route="{_esc(route)}",code="{code}"}} {n}')
            out += ["# HELP bne_request_seconds Local API latency.", "# TYPE bne_request_seconds histogram"]
            for route, h in sorted(self.hist.items()):
                cum = 0
                for b, n in zip(BUCKETS, h):
                    cum += n
                    out.append(f'bne_request_seconds_bucket{{route="{_esc(route)}",le="{b}"}} {cum}')
                cum += h[-1]
                out.append(f'bne_request_seconds_bucket{{route="{_esc(route)}",le="+Inf"}} {cum}')
                out.append(f'bne_request_seconds_sum{{route="{_esc(route)}"}} {self.sums[route]}')
                out.append(f'bne_request_seconds_count{{route="{_esc(route)}"}} {cum}')
            out += ["# HELP bne_model_info The serving model (value 1).", "# TYPE bne_model_info gauge"]
            if self.model:
                labels = ",".join(f'{k}="{_esc(v)}"' for k, v in sorted(self.model.items()))
                out.append(f"bne_model_info{{{labels}}} 1")
            out += ["# HELP bne_installs_total Install attempts by result and reason.",
                    "# TYPE bne_installs_total counter"]
            for (result, reason), n in sorted(self.installs.items()):
                out.append(f'bne_installs_total{{result="{result}",reason="{reason}"}} {n}')
            return "\n".join(out) + "\n"
