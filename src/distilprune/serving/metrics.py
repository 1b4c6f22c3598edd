"""Server metrics in the Prometheus text exposition format (version 0.0.4), written by hand.

``prometheus_client`` is not a dependency; this covers the few families the server exports:
counters, gauges and cumulative histograms, with escaped label values.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from collections.abc import Callable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
PATHS = ("/predict", "/health", "/metrics")  # other paths are counted as "other"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs.items()) + "}" if pairs else ""


def _number(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Histogram:
    """Cumulative buckets with their sum and count (not thread-safe: the caller locks)."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.bounds = tuple(buckets)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum, self.count = 0.0, 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        cumulative, out = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            le = "+Inf" if bound == float("inf") else _number(bound)
            out.append(f'{name}_bucket{{le="{le}"}} {cumulative}')
        return [*out, f"{name}_sum {_number(self.sum)}", f"{name}_count {self.count}"]


class Metrics:
    """What ``/metrics`` reports: requests, latency, batches, queue depth, model load time."""

    def __init__(self, model_load_seconds: float = 0.0,
                 queue_depth: Callable[[], int] = lambda: 0) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.latency = Histogram(LATENCY_BUCKETS)
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.passes = 0
        self.inference_seconds = 0.0
        self.in_flight = 0
        self.model_load_seconds = model_load_seconds
        self.queue_depth = queue_depth

    def started(self) -> None:
        with self._lock:
            self.in_flight += 1

    def finished(self, path: str, status: int, seconds: float) -> None:
        """One answered (or abandoned: status 0) HTTP request."""
        with self._lock:
            self.in_flight -= 1
            self.requests[(path if path in PATHS else "other", status)] += 1
            if path == "/predict":
                self.latency.observe(seconds)

    def batch(self, texts: int, passes: int, seconds: float) -> None:
        """One batch taken from the queue: ``texts`` texts in ``passes`` forward passes."""
        with self._lock:
            self.batch_size.observe(texts)
            self.passes += passes
            self.inference_seconds += seconds

    def summary(self) -> dict[str, int]:
        """/predict requests received and those never answered (cancelled or still in flight)."""
        with self._lock:
            received = sum(n for (path, _), n in self.requests.items() if path == "/predict")
            lost = sum(n for (_, status), n in self.requests.items() if status == 0)
            return {"predict_requests": received, "unanswered": lost + self.in_flight}

    def render(self) -> str:
        """The exposition text."""
        with self._lock:
            blocks = [
                self._family("distilprune_requests_total", "counter",
                             "HTTP requests answered, by path and status (0: no answer sent)",
                             [f"distilprune_requests_total{_labels({'path': p, 'status': str(s)})} {n}"
                              for (p, s), n in sorted(self.requests.items())]),
                self._family("distilprune_request_duration_seconds", "histogram",
                             "time from receiving a /predict request to answering it",
                             self.latency.lines("distilprune_request_duration_seconds")),
                self._family("distilprune_batch_size", "histogram",
                             "texts per batch taken from the queue",
                             self.batch_size.lines("distilprune_batch_size")),
                self._gauge("distilprune_forward_passes_total", "counter",
                            "model forward passes (a batch is cut into passes of similar length)",
                            self.passes),
                self._gauge("distilprune_inference_seconds_total", "counter",
                            "seconds the inference thread spent in forward passes (its rate: how "
                            "busy the model is)", self.inference_seconds),
                self._gauge("distilprune_queue_depth", "gauge", "texts waiting for a batch",
                            self.queue_depth()),
                self._gauge("distilprune_requests_in_flight", "gauge",
                            "HTTP requests received and not yet answered", self.in_flight),
                self._gauge("distilprune_model_load_seconds", "gauge",
                            "seconds it took to load the model", self.model_load_seconds),
            ]
        return "".join(blocks)

    @staticmethod
    def _family(name: str, kind: str, help_text: str, samples: list[str]) -> str:
        return "\n".join([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]) + "\n"

    def _gauge(self, name: str, kind: str, help_text: str, value: float) -> str:
        return self._family(name, kind, help_text, [f"{name} {_number(value)}"])
