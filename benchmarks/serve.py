"""Load test of ``distilprune serve`` on 127.0.0.1: dynamic batching, overload, SIGTERM, workers.

Starts the real CLI (``python -m distilprune.cli serve``) on a free loopback port and drives it
with closed-loop clients (each sends its next request when the previous one is answered), one
real tweet per request from ../shared/data/disaster_tweets/test.csv:

* concurrency 1, 8, 32, 128 with dynamic batching (``--max-batch-size 32``) and without it
  (``--max-batch-size 1``: one request per forward pass), same model and threads;
* overload: concurrency 256 against ``--max-queue 32`` (only 503s beyond capacity expected);
* workers: concurrency 32 with ``--workers 2 --threads 1`` against 1 worker with 2 threads;
* SIGTERM during a concurrency-32 load: every accepted request must be answered, exit code 0.

The client is a minimal asyncio HTTP/1.1 keep-alive client (a few µs of CPU per request: client
and server share this machine's cores). Writes ``results/<name>.{json,md,png}``.

    python benchmarks/serve.py --model benchmarks/work/serve/onnx-int8 [--duration 15]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from common import DISASTER_TEST, RESULTS, ROOT, WORK, run_main, write_results

from distilprune.reporting.formatting import markdown_table

HOST = "127.0.0.1"  # never anything else: this only load-tests a local server
DEFAULT_MODELS = (ROOT / "runs" / "demo" / "export" / "onnx-int8", WORK / "serve" / "onnx-int8")
EXPORT_HINT = ("distilprune export --model benchmarks/work/prune609/dense "
               "--out benchmarks/work/serve/onnx-int8 --int8")
# The last commit whose server ran one request at a time behind a lock (no queue, no batching).
BEFORE_REV = "11c77ef1b5e5510c7e9424d0411b0c66c4d39a70"
BEFORE_CODE = """
import sys
sys.path.insert(0, sys.argv[1])
from distilprune_serve_before import serve
serve(sys.argv[2], host=sys.argv[3], port=int(sys.argv[4]), threads=int(sys.argv[5]))
"""
COLUMNS = ["mode", "concurrency", "ok", "req_per_s", "p50_ms", "p95_ms", "p99_ms", "mean_batch",
           "model_busy", "server_cpu", "errors"]


# ----------------------------------------------------------------------------- client
class Refused(Exception):
    """The connection could not be opened: the server accepted nothing."""


class Dropped(Exception):
    """The request was sent but the connection ended before a whole response."""

    def __init__(self, partial: bool) -> None:
        super().__init__("truncated response" if partial else "closed before any response")
        self.partial = partial


class Connection:
    """One keep-alive HTTP/1.1 connection speaking just enough of the protocol."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, dict, bytes]:
        if self.writer is None:
            try:
                self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
            except OSError as exc:
                raise Refused(str(exc)) from exc
        head = (f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        try:
            self.writer.write(head + body)
            await self.writer.drain()
            return await self._response()
        except asyncio.IncompleteReadError as exc:
            self.close()
            raise Dropped(bool(exc.partial)) from exc
        except (ConnectionError, OSError) as exc:
            self.close()
            raise Dropped(False) from exc

    async def _response(self) -> tuple[int, dict, bytes]:
        assert self.reader is not None
        lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
        body = await self.reader.readexactly(int(headers.get("content-length", 0)))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return int(lines[0].split()[1]), headers, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


@dataclass
class Load:
    """What the clients saw."""

    latencies: list[float] = field(default_factory=list)  # 200s
    status: Counter = field(default_factory=Counter)
    status_ms: dict[int, list[float]] = field(default_factory=dict)
    refused: int = 0
    closed: int = 0  # closed before any response byte (never accepted: see the md)
    truncated: int = 0
    elapsed: float = 0.0
    after_signal: Counter = field(default_factory=Counter)


async def drive(port: int, bodies: list[bytes], concurrency: int, seconds: float,
                stop: asyncio.Event | None = None, signalled: list[float] | None = None) -> Load:
    """``concurrency`` closed-loop clients for ``seconds`` (or until ``stop``)."""
    load, start = Load(), time.perf_counter()
    deadline = start + seconds

    async def client(k: int) -> None:
        connection, i = Connection(port), k * 7919
        while time.perf_counter() < deadline and not (stop and stop.is_set()):
            i += 1
            sent = time.perf_counter()
            try:
                status, _, body = await connection.request("POST", "/predict", bodies[i % len(bodies)])
            except Refused:
                load.refused += 1
                return  # nothing listens any more
            except Dropped as exc:
                load.truncated += exc.partial
                load.closed += not exc.partial
                continue
            took = time.perf_counter() - sent
            if status == 200 and body.count(b'"label"') != 1:
                status = -1  # a 200 without exactly one prediction: counted as an error
            load.status[status] += 1
            load.status_ms.setdefault(status, []).append(took * 1000)
            if status == 200:
                load.latencies.append(took)
            if signalled and time.perf_counter() >= signalled[0]:
                load.after_signal[status] += 1  # answered while draining
        connection.close()

    await asyncio.gather(*(client(k) for k in range(concurrency)))
    load.elapsed = time.perf_counter() - start
    return load


async def scrape(port: int) -> dict[str, float]:
    """The server's /metrics as ``{sample with labels: value}``."""
    connection = Connection(port)
    try:
        _, _, body = await connection.request("GET", "/metrics")
    finally:
        connection.close()
    samples = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, number = line.rpartition(" ")
            samples[name] = float(number)
    return samples


# ----------------------------------------------------------------------------- server
@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    log: Path
    options: list[str]

    def cpu_seconds(self) -> float:
        """User + system CPU of the server and its children so far (Linux)."""
        total = 0.0
        for pid in [self.proc.pid, *_children(self.proc.pid)]:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, IndexError):
                pass
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def start_server(model: str, threads: int, options: list[str], logs: Path,
                 before: Path | None = None, timeout: float = 180.0) -> Server:
    """``distilprune serve`` with ``options`` (or, with ``before``, the old server kept in that
    folder), once ``/health`` answers."""
    port = free_port()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT / "src")}
    env.pop("DISTILPRUNE_API_KEY", None)
    log = logs / f"server-{port}.log"
    if before is None:
        command = ["-m", "distilprune.cli", "serve", "--model", model, "--host", HOST, "--port",
                   str(port), "--threads", str(threads), *options]
    else:
        command = ["-c", BEFORE_CODE, str(before), model, HOST, str(port), str(threads)]
    with log.open("w") as handle:
        proc = subprocess.Popen([sys.executable, *command], env=env, stdout=handle,
                                stderr=subprocess.STDOUT)
    server = Server(proc, port, log, options)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited ({proc.returncode}): {log.read_text()[-2000:]}")
        if asyncio.run(healthy(port)):
            return server
        time.sleep(0.25)
    server.stop()
    raise SystemExit(f"server not ready after {timeout:.0f} s")


async def healthy(port: int) -> bool:
    connection = Connection(port)
    try:
        return (await connection.request("GET", "/health"))[0] == 200
    except (Refused, Dropped):
        return False
    finally:
        connection.close()


# ----------------------------------------------------------------------------- runs
METRIC_KEYS = ("distilprune_batch_size_sum", "distilprune_batch_size_count",
               "distilprune_forward_passes_total", "distilprune_inference_seconds_total")


@dataclass
class Measured:
    """A run's client view, the server's metric deltas (empty: no /metrics) and CPU seconds."""

    load: Load
    metrics: dict[str, float]
    cpu: float
    load_avg: float

    def add(self, other: Measured) -> Measured:
        a, b = self.load, other.load
        merged = Load(a.latencies + b.latencies, a.status + b.status,
                      {k: a.status_ms.get(k, []) + b.status_ms.get(k, [])
                       for k in {*a.status_ms, *b.status_ms}},
                      a.refused + b.refused, a.closed + b.closed, a.truncated + b.truncated,
                      a.elapsed + b.elapsed)
        metrics = {k: self.metrics.get(k, 0) + other.metrics.get(k, 0) for k in other.metrics}
        return Measured(merged, metrics, self.cpu + other.cpu, max(self.load_avg, other.load_avg))


def measure(server: Server, bodies: list[bytes], concurrency: int, seconds: float,
            warmup: float, metrics: bool = True) -> Measured:
    """One closed-loop run of ``seconds`` after ``warmup`` seconds of untimed load."""
    if warmup:
        asyncio.run(drive(server.port, bodies, concurrency, warmup))
    read = (lambda: asyncio.run(scrape(server.port))) if metrics else dict
    before, cpu, load_avg = read(), server.cpu_seconds(), os.getloadavg()[0]
    result = asyncio.run(drive(server.port, bodies, concurrency, seconds))
    after, cpu = read(), server.cpu_seconds() - cpu
    deltas = {k: after.get(k, 0) - before.get(k, 0) for k in METRIC_KEYS} if after else {}
    return Measured(result, deltas, cpu, load_avg)


def summarize(run: Measured, mode: str, concurrency: int) -> dict[str, Any]:
    load, delta = run.load, run.metrics
    lat = np.asarray(load.latencies) * 1000
    pct = (lambda q: float(np.percentile(lat, q))) if len(lat) else (lambda q: None)
    batches = delta.get("distilprune_batch_size_count")
    bad = sum(n for s, n in load.status.items() if s not in (200, 503, 504) and (s >= 500 or s < 0))
    elapsed = max(load.elapsed, 1e-9)
    return {
        "mode": mode, "concurrency": concurrency, "seconds": round(load.elapsed, 2),
        "ok": len(lat), "status": {str(k): v for k, v in sorted(load.status.items())},
        "req_per_s": len(lat) / elapsed, "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99),
        "mean_batch": delta["distilprune_batch_size_sum"] / batches if batches else None,
        "passes_per_batch": delta["distilprune_forward_passes_total"] / batches if batches else None,
        "server_cpu": run.cpu / elapsed,
        "model_busy": delta["distilprune_inference_seconds_total"] / elapsed if delta else None,
        "refused": load.refused, "closed_before_response": load.closed, "truncated": load.truncated,
        "errors": bad + load.refused + load.closed + load.truncated,
        "status_p50_ms": {str(s): float(np.percentile(v, 50)) for s, v in load.status_ms.items()},
        "status_p99_ms": {str(s): float(np.percentile(v, 99)) for s, v in load.status_ms.items()},
        "load_avg_1m_max": run.load_avg,
    }


def old_server(args: argparse.Namespace, logs: Path) -> Path | None:
    """A folder holding ``serve.py`` as of ``--before-rev`` (None when git cannot show it)."""
    try:
        code = subprocess.run(["git", "-C", str(ROOT), "show",
                               f"{args.before_rev}:src/distilprune/serve.py"],
                              capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    folder = logs / "before"
    folder.mkdir(exist_ok=True)
    (folder / "distilprune_serve_before.py").write_text(code)
    return folder


def mode_options(args: argparse.Namespace) -> dict[str, tuple[int, list[str], bool]]:
    """Every server compared: (threads, options, old server?) of batched, unbatched, 2 workers and
    the old one (when git can show it)."""
    batched = ["--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms)]
    per_worker = max(1, args.threads // 2)
    modes = {"batched": (args.threads, batched, False),
             "unbatched": (args.threads, ["--max-batch-size", "1"], False),
             f"batched, 2 workers x {per_worker} thread": (per_worker, [*batched, "--workers", "2"], False)}
    modes[f"before ({args.before_rev[:7]}: one request at a time, lock)"] = (args.threads, [], True)
    return modes


def start_modes(args: argparse.Namespace, logs: Path, order: list[str]) -> dict[str, Server]:
    """The servers of ``order``, started in that order (all up at once)."""
    options, before = mode_options(args), old_server(args, logs)
    servers = {}
    for mode in order:
        threads, flags, old = options[mode]
        if old and before is None:
            continue
        servers[mode] = start_server(args.model, threads, flags, logs, **({"before": before} if old else {}))
    return servers


def concurrency_runs(args: argparse.Namespace, bodies: list[bytes], logs: Path) -> list[dict]:
    """``--rounds`` rounds; each starts every server afresh, in an order rotated every round (the
    first server started measured ~10 % slower at concurrency 1 on this machine, whichever it
    was), and runs each concurrency's modes in that order, so that neither the start order nor a
    change in the machine's load favours a mode. Workers are measured at concurrency 32 only."""
    names = list(mode_options(args))
    runs: dict[tuple[int, str], Measured] = {}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        servers = start_modes(args, logs, order)
        try:
            for concurrency in args.concurrency:
                for mode in (m for m in servers if concurrency == 32 or "workers" not in m):
                    run = measure(servers[mode], bodies, concurrency, args.duration / args.rounds,
                                  args.warmup, metrics=mode in ("batched", "unbatched"))
                    key = (concurrency, mode)
                    runs[key] = runs[key].add(run) if key in runs else run
        finally:
            for server in servers.values():
                server.stop()
    rows = []
    for concurrency in args.concurrency:
        for mode in (m for m in names if (concurrency, m) in runs):
            rows.append(summarize(runs[(concurrency, mode)], mode, concurrency))
            print(json.dumps({k: rows[-1][k] for k in COLUMNS}, default=_round), flush=True)
    return rows


def overload_run(args: argparse.Namespace, bodies: list[bytes], logs: Path) -> dict:
    server = start_server(args.model, args.threads, ["--max-batch-size", str(args.max_batch_size),
                                                     "--max-queue", str(args.overload_queue)], logs)
    try:
        row = summarize(measure(server, bodies, args.overload_concurrency, args.duration, args.warmup),
                        f"overload (queue {args.overload_queue})", args.overload_concurrency)
    finally:
        server.stop()
    row["overload_503"] = row["status"].get("503", 0)
    return row


def shutdown_run(args: argparse.Namespace, bodies: list[bytes], logs: Path) -> dict:
    """SIGTERM after ``signal_after`` s of concurrency-32 load; clients go on until refused."""
    server = start_server(args.model, args.threads, ["--max-batch-size", str(args.max_batch_size)],
                          logs)
    signalled: list[float] = []

    async def scenario() -> tuple[Load, float | None]:
        loop_load = asyncio.ensure_future(drive(server.port, bodies, 32, 120.0, signalled=signalled))
        await asyncio.sleep(args.signal_after)
        signalled.append(time.perf_counter())
        server.proc.send_signal(signal.SIGTERM)
        while server.proc.poll() is None and time.perf_counter() - signalled[0] < 90:
            await asyncio.sleep(0.01)
        exited = time.perf_counter() - signalled[0] if server.proc.poll() is not None else None
        return await loop_load, exited

    try:
        load, exited = asyncio.run(scenario())
    finally:
        server.stop()
    drained = re.search(r"drained: (\{.*\})", server.log.read_text())
    summary = json.loads(drained[1]) if drained else None
    unanswered = summary["unanswered"] if summary else None  # no count: the server did not drain
    bad = sum(n for s, n in load.status.items() if s not in (200, 503, 504) and (s >= 500 or s < 0))
    return {
        "exit_code": server.proc.returncode, "exit_s": exited, "server": summary,
        "ok": len(load.latencies), "answered_after_sigterm": dict(load.after_signal),
        "refused_after_exit": load.refused, "closed_before_response": load.closed,
        "truncated": load.truncated, "errors": bad,
        "shutdown_lost": None if unanswered is None else unanswered + load.truncated,
    }


# ----------------------------------------------------------------------------- report
def _round(value: Any) -> Any:
    return round(value, 2) if isinstance(value, float) else value


def load_bodies() -> tuple[list[bytes], str]:
    """One JSON body per tweet of the Kaggle test file (built-in sentences when absent)."""
    texts: list[str] = []
    if DISASTER_TEST.is_file():
        with DISASTER_TEST.open(newline="", encoding="utf-8") as handle:
            texts = [row["text"] for row in csv.DictReader(handle) if row.get("text", "").strip()]
    source = str(DISASTER_TEST)
    if not texts:
        from distilprune.export.runtime import SAMPLE_TEXTS

        texts, source = list(SAMPLE_TEXTS), "built-in"
    return [json.dumps({"texts": [t]}).encode() for t in texts], source


def summary_of(rows: list[dict], overload: dict, shutdown: dict) -> dict[str, Any]:
    def row(mode: str, concurrency: int) -> dict:
        return next((r for r in rows if r["mode"] == mode and r["concurrency"] == concurrency), {})

    before = next((r for r in rows if r["mode"].startswith("before") and r["concurrency"] == 32), {})

    c32, c32u, c1, c1u = row("batched", 32), row("unbatched", 32), row("batched", 1), row("unbatched", 1)
    errors = sum(r["errors"] for r in rows) + overload["errors"] + shutdown["errors"]
    summary = {
        "c32_req_per_s": c32.get("req_per_s"), "c32_p99_ms": c32.get("p99_ms"),
        "c32_req_per_s_unbatched": c32u.get("req_per_s"), "c32_p99_ms_unbatched": c32u.get("p99_ms"),
        "c1_req_per_s": c1.get("req_per_s"), "c1_req_per_s_unbatched": c1u.get("req_per_s"),
        "errors": errors, "overload_503": overload["overload_503"],
        "shutdown_lost": shutdown["shutdown_lost"], "shutdown_exit_code": shutdown["exit_code"],
        "c32_req_per_s_before": before.get("req_per_s"), "c32_p99_ms_before": before.get("p99_ms"),
    }
    summary["targets_met"] = {
        "c32_req_per_s>=300": (summary["c32_req_per_s"] or 0) >= 300,
        "c32_p99_ms<=250": (summary["c32_p99_ms"] or 1e9) <= 250,
        "c1_no_worse_than_unbatched": (c1.get("req_per_s") or 0) >= 0.95 * (c1u.get("req_per_s") or 0),
        "errors==0": errors == 0, "shutdown_lost==0": summary["shutdown_lost"] == 0,
    }
    return summary


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    styles = ("o-", "s--", "^:")
    modes = [m for m in dict.fromkeys(r["mode"] for r in rows) if "workers" not in m]
    for mode, style in zip(modes, styles, strict=False):
        mine = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["concurrency"])
        xs = [r["concurrency"] for r in mine]
        label = mode.split(":")[0] + (" server)" if mode.startswith("before") else "")
        left.plot(xs, [r["req_per_s"] for r in mine], style, label=label)
        right.plot(xs, [r["p99_ms"] for r in mine], style, label=label)
    for axis, label in ((left, "throughput (req/s)"), (right, "p99 latency (ms)")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(sorted({r["concurrency"] for r in rows}), [str(c) for c in
                                                                  sorted({r["concurrency"] for r in rows})])
        axis.set_xlabel("concurrent clients (1 tweet per request)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend()
    right.set_yscale("log")
    fig.suptitle("distilprune serve: dynamic batching vs one request per forward pass")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(payload: dict) -> str:
    cfg, s, sd, ov = payload["config"], payload["summary"], payload["shutdown"], payload["overload"]
    met = ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in s["targets_met"].items())
    lines = [
        "# HTTP serving under load (`distilprune serve`)\n",
        f"Model `{cfg['model']}` ({cfg['model_note']}); server `--threads {cfg['threads']}`, "
        f"`--max-batch-size {cfg['max_batch_size']}` (batched) or `1` (unbatched: one request per "
        f"forward pass, like the server before dynamic batching), `--max-wait-ms {cfg['max_wait_ms']}`; "
        f"{cfg['cpus']} CPUs shared by server and client on 127.0.0.1; closed-loop clients, one real "
        f"tweet per request ({cfg['texts']}); {cfg['duration']} s per mode and concurrency, in "
        f"{cfg['rounds']} turns interleaved with the other modes (each after {cfg['warmup']} s of "
        f"warm-up), all servers up at once, so a change in the machine's load hits every mode alike; "
        f"every round restarts the servers in a rotated order (the first server started measured "
        f"~10 % slower at concurrency 1, whichever mode it served). "
        f"Conditions: {cfg['conditions']}.\n",
        f"Command: `{cfg['command']}`\n",
        f"Model: {cfg['model_origin']}\n",
        "## Summary\n",
        f"- concurrency 32: **{s['c32_req_per_s']:.0f} req/s, p99 {s['c32_p99_ms']:.0f} ms** batched vs "
        f"{s['c32_req_per_s_unbatched']:.0f} req/s, p99 {s['c32_p99_ms_unbatched']:.0f} ms unbatched",
        f"- concurrency 1: {s['c1_req_per_s']:.0f} req/s batched vs {s['c1_req_per_s_unbatched']:.0f} "
        "unbatched (a lone request does not wait for a batch)",
        *([f"- the server before this work ({cfg['before_rev'][:7]}), same conditions, concurrency "
           f"32: {s['c32_req_per_s_before']:.0f} req/s, p99 {s['c32_p99_ms_before']:.0f} ms; batched "
           f"serves {s['c32_req_per_s'] / s['c32_req_per_s_before']:.2f}x its throughput"]
          if s["c32_req_per_s_before"] else []),
        f"- {bottleneck(payload['runs'])}",
        f"- errors (5xx other than 503/504, dropped connections): {s['errors']}; overload 503s: "
        f"{s['overload_503']}; shutdown: lost {s['shutdown_lost']}, exit code {s['shutdown_exit_code']}",
        f"- targets: {met}\n",
        "## Concurrency\n",
        "`mean_batch`: texts per batch taken from the queue; `model_busy`: share of the time the "
        "inference thread spent in forward passes (both from the server's /metrics; not for the "
        "old server, which has none, nor for 2 workers, whose /metrics each describe one); "
        "`server_cpu`: CPU cores the server's processes used on average.\n",
        markdown_table(payload["runs"], COLUMNS),
        "![throughput and p99 vs concurrency](serve.png)\n",
        "## Overload\n",
        f"Concurrency {cfg['overload_concurrency']} against `--max-queue {cfg['overload_queue']}`; "
        "clients retry at once (no back-off). Status counts: "
        f"{ov['status']}; 503 answers p50 / p99: {ov['status_p50_ms'].get('503', 0):.1f} / "
        f"{ov['status_p99_ms'].get('503', 0):.1f} ms; "
        f"{ov['ok']} answered at {ov['req_per_s']:.0f} req/s, p99 {ov['p99_ms']:.0f} ms; errors "
        f"{ov['errors']}.\n",
        "## SIGTERM during load\n",
        f"SIGTERM after {cfg['signal_after']} s of concurrency-32 load; clients keep sending until "
        f"the port refuses. Exit code {sd['exit_code']} after {sd['exit_s'] or float('nan'):.2f} s; "
        f"server count {sd['server']} (`unanswered`: accepted by the app, never answered); answers "
        f"received while draining {sd['answered_after_sigterm']} (they say `Connection: close`); "
        f"connections refused once closed "
        f"{sd['refused_after_exit']}; connections closed before any response byte "
        f"{sd['closed_before_response']} (a request sent on a keep-alive connection the server was "
        "closing: never accepted, safe to retry); truncated responses "
        f"{sd['truncated']}. `shutdown_lost` = unanswered + truncated = {sd['shutdown_lost']}.\n",
        "## Workers\n",
        payload["workers_note"] + "\n",
    ]
    return "\n".join(lines)


def bottleneck(rows: list[dict]) -> str:
    c32 = next(r for r in rows if r["mode"] == "batched" and r["concurrency"] == 32)
    if (c32["model_busy"] or 0) < 0.9:
        return (f"at concurrency 32 the inference thread was busy {c32['model_busy']:.0%} of the "
                "time: the HTTP side, not the model, set the pace")
    return (f"at concurrency 32 the inference thread was busy {c32['model_busy']:.0%} of the time "
            f"while the whole server used {c32['server_cpu']:.2f} CPU cores: the model's forward "
            "passes set the pace, and they got less than the 2 cores their 2 threads ask for")


def model_origin(model: str) -> str:
    """How the served model was made."""
    if Path(model).resolve() == (WORK / "serve" / "onnx-int8").resolve():
        return (f"`{EXPORT_HINT}` (MiniLM-L6 fine-tuned on the disaster tweets, dense, ONNX Runtime "
                "dynamic int8), used because the `make demo` int8 model (runs/demo/export/onnx-int8) "
                "is not on this machine; same architecture and int8 path as the demo's")
    return f"`{model}`"


def workers_note(rows: list[dict]) -> str:
    one = next(r for r in rows if r["mode"] == "batched" and r["concurrency"] == 32)
    workers = next(r for r in rows if "workers" in r["mode"])
    better = workers["req_per_s"] > 1.05 * one["req_per_s"]
    return (f"At concurrency 32, 2 worker processes x 1 thread: {workers['req_per_s']:.0f} req/s, "
            f"p99 {workers['p99_ms']:.0f} ms; 1 process x 2 threads: {one['req_per_s']:.0f} req/s, "
            f"p99 {one['p99_ms']:.0f} ms. "
            + ("Here workers pay: the single event loop (HTTP parsing, JSON) was the bottleneck. "
               if better else
               "Here workers do not pay: the model's forward passes, not the event loop, bound "
               "throughput, and two processes halve each batch and double the memory. ")
            + "They pay when the server has more cores than one model's threads use well and the "
              "event loop saturates (server_cpu near the core count with small batches).")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="ONNX export (default: the demo's int8 model, "
                                                      "else benchmarks/work/serve/onnx-int8)")
    parser.add_argument("--threads", type=int, default=2, help="server inference threads")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per mode and concurrency")
    parser.add_argument("--rounds", type=int, default=4, help="the duration is split into this many "
                                                             "turns, the modes interleaved")
    parser.add_argument("--warmup", type=float, default=1.0, help="untimed seconds before each turn")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--overload-concurrency", type=int, default=256)
    parser.add_argument("--overload-queue", type=int, default=32)
    parser.add_argument("--signal-after", type=float, default=3.0, help="SIGTERM run: seconds of load")
    parser.add_argument("--conditions", default="a quiet machine", help="stated in the md")
    parser.add_argument("--before-rev", default=BEFORE_REV, help="git revision of the old server "
                                                                "for a concurrency-32 'before' row")
    parser.add_argument("--name", default="serve", help="results/<name>.{json,md,png}")
    args = parser.parse_args()
    if args.model is None:
        found = [m for m in DEFAULT_MODELS if (m / "model.onnx").is_file()]
        if not found:
            parser.error(f"no ONNX int8 model found; make one: {EXPORT_HINT}")
        args.model = str(found[0])
    return args


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(143)  # unwinds the `finally` blocks, which stop the servers


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    args = parse_args()
    bodies, source = load_bodies()
    export_json = Path(args.model) / "export.json"
    meta = json.loads(export_json.read_text()) if export_json.is_file() else {}
    with tempfile.TemporaryDirectory(prefix="distilprune-serve-bench-") as tmp:
        logs = Path(tmp)
        rows = concurrency_runs(args, bodies, logs)
        overload = overload_run(args, bodies, logs)
        shutdown = shutdown_run(args, bodies, logs)
    config = {
        "model": args.model, "model_note": f"{'int8 ' if meta.get('int8') else ''}ONNX export of "
        f"{meta.get('source', '?')}", "threads": args.threads, "max_batch_size": args.max_batch_size,
        "max_wait_ms": args.max_wait_ms, "cpus": os.cpu_count(), "texts": source,
        "duration": args.duration, "rounds": args.rounds, "warmup": args.warmup,
        "overload_concurrency": args.overload_concurrency,
        "overload_queue": args.overload_queue, "signal_after": args.signal_after,
        "conditions": args.conditions, "python": platform.python_version(),
        "model_origin": model_origin(args.model), "before_rev": args.before_rev,
        "command": shlex.join(["python", "benchmarks/serve.py", *sys.argv[1:]]),
    }
    payload = {"summary": summary_of(rows, overload, shutdown), "config": config, "runs": rows,
               "overload": overload, "workers_note": workers_note(rows), "shutdown": shutdown}
    write_results(args.name, payload, markdown(payload))
    plot(rows, RESULTS / f"{args.name}.png")
    print(json.dumps(payload["summary"], indent=2, default=_round))


if __name__ == "__main__":
    run_main(main)
