"""Load test of the HTTP server (``distilprune.serve``) on 127.0.0.1.

Starts ``serve()`` in a subprocess on a free loopback port, waits for ``/health``, then sends
``--requests`` POST /predict requests (``--batch`` texts each) from ``--concurrency`` async
clients, stopping at ``--time-limit`` seconds. Texts: ../shared/data/disaster_tweets/test.csv
(built-in sentences when absent). The default model is the packaged MiniLM with a seeded random
classifier head (fine for a load test). Writes ``results/<name>.{json,md}``.

    python benchmarks/serve.py [--model PATH] [--requests 2000] [--concurrency 16] [--batch 1]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import platform
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from common import DISASTER_TEST, ROOT, markdown_table, write_results

HOST = "127.0.0.1"  # never anything else: this only load-tests a local server
SERVER_CODE = """
import sys
from distilprune.errors import UserError
from distilprune.serve import serve
try:
    serve(sys.argv[1], host=sys.argv[2], port=int(sys.argv[3]), threads=int(sys.argv[4]),
          max_batch=int(sys.argv[5]))
except UserError as exc:
    sys.exit(f"error: {exc}")
"""
COLUMNS = ["backend", "requests", "ok", "errors", "concurrency", "batch", "req_per_s", "texts_per_s",
           "p50_ms", "p95_ms", "p99_ms", "server_peak_rss_mb"]


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    elapsed: float = 0.0
    timed_out: bool = False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def load_texts() -> tuple[list[str], str]:
    """Tweets from the Kaggle test file, else the built-in sample sentences."""
    if DISASTER_TEST.is_file():
        with DISASTER_TEST.open(newline="", encoding="utf-8") as handle:
            texts = [row["text"] for row in csv.DictReader(handle) if row.get("text", "").strip()]
        if texts:
            return texts, str(DISASTER_TEST)
    from distilprune.export.runtime import SAMPLE_TEXTS

    return list(SAMPLE_TEXTS), "built-in"


def start_server(model: str, port: int, threads: int, max_batch: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    args = [model, HOST, str(port), str(threads), str(max_batch)]
    return subprocess.Popen([sys.executable, "-c", SERVER_CODE, *args], env=env)


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for_health(proc: subprocess.Popen, url: str, timeout: float) -> dict:
    """``/health`` once the server answers; exits if it dies or does not start in time."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, timeout=2.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"server exited with code {proc.returncode} before it was ready")
            try:
                response = client.get("/health")
                if response.status_code == 200:
                    return response.json()
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
    raise SystemExit(f"server not ready after {timeout:.0f} s")


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident memory of a process (Linux ``VmHWM``), None elsewhere."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def run_load(url: str, texts: list[str], requests: int, concurrency: int, batch: int,
                   time_limit: float) -> LoadResult:
    """Send ``requests`` requests from ``concurrency`` workers; stop at ``time_limit`` seconds."""
    result, indices = LoadResult(), iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60.0, limits=limits,
                                 trust_env=False) as client:

        async def worker() -> None:
            for i in indices:
                payload = {"texts": [texts[(i * batch + j) % len(texts)] for j in range(batch)]}
                start = time.perf_counter()
                try:
                    response = await client.post("/predict", json=payload)
                except httpx.HTTPError as exc:
                    result.errors[type(exc).__name__] += 1
                    continue
                if response.status_code == 200 and len(response.json()["predictions"]) == batch:
                    result.latencies.append(time.perf_counter() - start)
                else:
                    result.errors[f"HTTP {response.status_code}"] += 1

        start = time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))),
                                   timeout=time_limit)
        except TimeoutError:
            result.timed_out = True
        result.elapsed = time.perf_counter() - start
    return result


def summarize(result: LoadResult, args: argparse.Namespace, health: dict,
              rss: float | None) -> dict:
    ok, lat_ms = len(result.latencies), np.asarray(result.latencies) * 1000
    pct = (lambda q: float(np.percentile(lat_ms, q))) if ok else (lambda q: None)
    elapsed = max(result.elapsed, 1e-9)
    return {
        "backend": health["backend"], "requests": args.requests, "ok": ok,
        "errors": sum(result.errors.values()), "error_kinds": dict(result.errors),
        "timed_out": result.timed_out, "concurrency": args.concurrency, "batch": args.batch,
        "elapsed_s": round(result.elapsed, 3), "req_per_s": ok / elapsed,
        "texts_per_s": ok * args.batch / elapsed, "p50_ms": pct(50), "p95_ms": pct(95),
        "p99_ms": pct(99), "mean_ms": float(lat_ms.mean()) if ok else None,
        "server_peak_rss_mb": rss,
    }


def markdown(row: dict, config: dict) -> str:
    lines = ["# HTTP serving load test\n",
             f"Model `{config['model']}` ({row['backend']}), server threads {config['threads']}, "
             f"{config['cpus']} CPUs, texts: {config['texts']}. Client and server on 127.0.0.1, "
             f"{config['warmup']} warm-up requests excluded. Time limit {config['time_limit']} s"
             f"{' (reached)' if row['timed_out'] else ''}.\n"]
    return "\n".join(lines) + "\n" + markdown_table([row], COLUMNS)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm-l6", help="model dir, ONNX export or alias")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1, help="texts per request")
    parser.add_argument("--threads", type=int, default=1, help="server inference threads")
    parser.add_argument("--warmup", type=int, default=10, help="untimed requests first")
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds for the load")
    parser.add_argument("--startup-timeout", type=float, default=180.0)
    parser.add_argument("--name", default="serve", help="results/<name>.{json,md}")
    args = parser.parse_args()
    if min(args.requests, args.concurrency, args.batch, args.threads) < 1 or args.warmup < 0:
        parser.error("--requests, --concurrency, --batch and --threads must be positive")
    return args


def main() -> None:
    args = parse_args()
    texts, source = load_texts()
    port = free_port()
    url = f"http://{HOST}:{port}"
    proc = start_server(args.model, port, args.threads, max(args.batch, 64))
    try:
        health = wait_for_health(proc, url, args.startup_timeout)
        if args.warmup:
            asyncio.run(run_load(url, texts, args.warmup, 1, args.batch, args.time_limit))
        result = asyncio.run(run_load(url, texts, args.requests, args.concurrency, args.batch,
                                      args.time_limit))
        rss = peak_rss_mb(proc.pid)
    finally:
        stop_server(proc)
    config = {"model": health["model"], "threads": args.threads, "cpus": os.cpu_count(),
              "texts": source, "warmup": args.warmup, "time_limit": args.time_limit,
              "python": platform.python_version()}
    row = summarize(result, args, health, rss)
    write_results(args.name, {"config": config, "result": row, "labels": health["labels"]},
                  markdown(row, config))
    print(markdown(row, config))


if __name__ == "__main__":
    main()
