"""Throughput, latency and memory of ``icdcoder serve`` under concurrent clients.

Trains the TF-IDF coder of configs/tfidf-synth.yaml on the synthetic corpus (or takes --model),
starts ``icdcoder serve`` as a subprocess on loopback, and runs N client threads for a fixed time,
each posting synthetic test notes. Prints requests/s, notes/s, latency percentiles, errors and the
server's RSS before and after. Exits 1 if any request failed.

With ``--slow-clients N`` a separate process holds N hostile connections at the same time: each sends
a request one byte a second (``--slow-kind headers``, "slowloris"), or its headers and then its body
one byte a second (``body``), or nothing at all (``idle``), and reconnects a second after the server
drops it. ``--server-nofile`` sets the server's open-file limit (as ``ulimit -n`` would), and
``--fresh-connections`` makes the normal clients open a new connection per request, as curl or a
browser after an idle minute does. The slow clients' line says how long the server let them stay.

    python bench/bench_serve.py                                  # 8 clients, 20 s, one note a request
    python bench/bench_serve.py --clients 16 --seconds 60 --batch 8
    python bench/bench_serve.py --model runs/tfidf-synth/model --max-concurrency 2
    python bench/bench_serve.py --slow-clients 300 --server-nofile 256 --seconds 60   # issue 16
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def synthetic_notes(train_model_into: Path | None) -> list[str]:
    """Test-split texts of the default synthetic corpus; fits and saves the coder too when asked."""
    from icdcoder.data.synth import SynthConfig, generate_synthetic

    splits: dict[str, list] = {"train": [], "val": [], "test": []}
    for split, note in generate_synthetic(SynthConfig()):
        splits[split].append(note)
    if train_model_into is not None:
        from icdcoder.coders.tfidf import TfidfCoder

        t0 = time.perf_counter()
        coder = TfidfCoder(word_ngrams=(1, 2), classifier="logreg", C=10.0).fit(splits["train"], splits["val"])
        coder.save(train_model_into)
        print(f"trained TF-IDF on {len(splits['train']):,} notes in {time.perf_counter() - t0:.1f} s", flush=True)
    return [n.text for n in splits["test"]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, args: argparse.Namespace, log_path: Path) -> subprocess.Popen:
    import httpx

    cmd = [sys.executable, "-m", "icdcoder.cli", "serve", "--model", str(model), "--port", str(port),
           "--max-concurrency", str(args.max_concurrency), "--max-queue", str(max(16, args.clients)),
           "--max-notes", str(max(64, args.batch)), *args.server_arg]

    def limit_open_files() -> None:  # in the server process, before it starts: ``ulimit -n N``
        if args.server_nofile:
            import resource

            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (args.server_nofile, hard))

    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=limit_open_files)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    sys.exit(f"the server did not come up; its log:\n{log_path.read_text()[-3000:]}")


def rss_mb(pid: int) -> tuple[float, float | None]:
    """Current RSS and, on Linux, the peak (VmHWM) of the server process, in MiB."""
    import psutil

    rss = psutil.Process(pid).memory_info().rss / 2**20
    peak = None
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    return rss, peak


def client(url: str, notes: list[str], batch: int, offset: int, stop: float, out: list, errors: Counter,
           fresh: bool = False, timeout_s: float = 120.0) -> None:
    import httpx

    i = offset
    limits = httpx.Limits(max_keepalive_connections=0) if fresh else httpx.Limits()
    with httpx.Client(timeout=timeout_s, limits=limits) as http:
        while time.monotonic() < stop:
            body = ({"text": notes[i % len(notes)]} if batch == 1 else
                    {"notes": [{"text": notes[(i + k) % len(notes)]} for k in range(batch)]})
            i += batch
            t0 = time.perf_counter()
            try:
                r = http.post(f"{url}/v1/code", json=body)
                ok = r.status_code == 200 and len(r.json()["results"]) == batch
                if not ok:
                    errors[f"HTTP {r.status_code}"] += 1
            except httpx.HTTPError as e:
                ok = False
                errors[type(e).__name__] += 1
            if ok:
                out.append(time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------- slow clients
SLOW_HEAD = b"POST /v1/code HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"


async def _slow_connection(port: int, kind: str, stop: float, stats: dict) -> None:
    """One hostile client: connect, dribble (or say nothing), and reconnect a second after being dropped."""
    import asyncio

    loop = asyncio.get_running_loop()
    while loop.time() < stop:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            stats["connect_failed"] += 1
            await asyncio.sleep(1)
            continue
        stats["opened"] += 1
        opened, sent = loop.time(), 0
        if kind == "body":
            writer.write(SLOW_HEAD + b"Content-Length: 100000\r\n\r\n")
        payload = b'{"text": "' + b"x" * 100_000 if kind == "body" else SLOW_HEAD + b"X-Pad: " + b"a" * 100_000
        dropped = False
        try:
            while loop.time() < stop and not dropped:
                if kind != "idle":
                    writer.write(payload[sent:sent + 1])
                    sent += 1
                    await writer.drain()
                try:
                    dropped = not await asyncio.wait_for(reader.read(4096), 1.0) or dropped
                except asyncio.TimeoutError:
                    pass
        except OSError:
            dropped = True
        stats["lifetimes"].append(loop.time() - opened)
        stats["dropped"] += dropped
        writer.close()
        if dropped:
            await asyncio.sleep(1)


def slow_clients(port: int, n: int, kind: str, seconds: float, results) -> None:
    """N hostile connections for ``seconds``, in this (separate) process; puts a summary in ``results``."""
    import asyncio

    async def main() -> dict:
        stats = {"opened": 0, "dropped": 0, "connect_failed": 0, "lifetimes": []}
        stop = asyncio.get_running_loop().time() + seconds
        await asyncio.gather(*(_slow_connection(port, kind, stop, stats) for _ in range(n)))
        return stats

    results.put(asyncio.run(main()))


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def start_slow_clients(port: int, args: argparse.Namespace):
    """The slow clients' process (its own event loop and GIL, so it does not slow the normal clients down);
    the normal clients start once the slow ones have had two seconds to connect."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=slow_clients, args=(port, args.slow_clients, args.slow_kind, args.seconds + 2, results),
                       daemon=True)
    proc.start()
    time.sleep(2)
    return proc, results


def open_fds(pid: int) -> int:
    import psutil

    return psutil.Process(pid).num_fds()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="a saved coder folder; default: train TF-IDF on the synthetic corpus")
    ap.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    ap.add_argument("--seconds", type=float, default=20.0, help="how long the clients post")
    ap.add_argument("--batch", type=int, default=1, help="notes per request")
    ap.add_argument("--max-concurrency", type=int, default=4, help="the server's --max-concurrency")
    ap.add_argument("--slow-clients", type=int, default=0, help="hostile connections held open alongside")
    ap.add_argument("--slow-kind", choices=["headers", "body", "idle"], default="headers",
                    help="what each slow client sends, one byte a second (idle: nothing)")
    ap.add_argument("--server-nofile", type=int, help="the server's open-file limit (ulimit -n), e.g. 256")
    ap.add_argument("--fresh-connections", action="store_true", help="normal clients: a new connection per request")
    ap.add_argument("--client-timeout", type=float, default=120.0, help="seconds before a normal request counts "
                    "as failed")
    ap.add_argument("--server-arg", action="append", default=[], help="extra option for icdcoder serve "
                    "(repeat; e.g. --server-arg=--read-timeout --server-arg=5)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        model = args.model or Path(tmp) / "model"
        notes = synthetic_notes(None if args.model else model)
        port, log_path = free_port(), Path(tmp) / "server.log"
        t0 = time.perf_counter()
        proc = start_server(model, port, args, log_path)
        print(f"server up in {time.perf_counter() - t0:.1f} s (pid {proc.pid}, {os.cpu_count()} CPUs here)", flush=True)
        slow, slow_stats = None, None
        try:
            rss_before, _ = rss_mb(proc.pid)
            if args.slow_clients:
                slow, slow_results = start_slow_clients(port, args)
            url, latencies, errors = f"http://127.0.0.1:{port}", [], Counter()
            stop = time.monotonic() + args.seconds
            threads = [threading.Thread(target=client, args=(url, notes, args.batch, k * 7, stop, latencies, errors,
                                                             args.fresh_connections, args.client_timeout))
                       for k in range(args.clients)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - t0
            rss_after, peak = rss_mb(proc.pid)
            server_fds = open_fds(proc.pid)
            if slow is not None:
                slow_stats = slow_results.get(timeout=60)
                slow.join(10)
        finally:
            if slow is not None and slow.is_alive():
                slow.terminate()
            proc.terminate()
            proc.wait(30)
        log_text = log_path.read_text(errors="replace")

    lat = sorted(latencies)
    n_err = sum(errors.values())
    print(f"{args.clients} clients x {args.seconds:g} s, {args.batch} note(s) a request, "
          f"server --max-concurrency {args.max_concurrency}"
          + (f", ulimit -n {args.server_nofile}" if args.server_nofile else "")
          + (", a new connection per request" if args.fresh_connections else "")
          + (f", {' '.join(args.server_arg)}" if args.server_arg else ""))
    if slow_stats is not None:
        life = sorted(slow_stats["lifetimes"]) or [0.0]
        print(f"  slow       {args.slow_clients} {args.slow_kind} clients: {slow_stats['opened']:,} connections, "
              f"{slow_stats['dropped']:,} dropped by the server, {slow_stats['connect_failed']:,} connects failed; "
              f"a connection lived {percentile(life, 0.5):.1f} s median, {life[-1]:.1f} s max")
    if lat:
        print(f"  requests   {len(lat):,} ok in {elapsed:.1f} s: {len(lat) / elapsed:.1f} req/s, "
              f"{len(lat) * args.batch / elapsed:.1f} notes/s")
        print(f"  latency    p50 {percentile(lat, 0.50) * 1000:.0f} ms, p90 {percentile(lat, 0.90) * 1000:.0f} ms, "
              f"p99 {percentile(lat, 0.99) * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms")
    print(f"  errors     {n_err}" + (f" ({dict(errors)})" if n_err else ""))
    print(f"  server RSS {rss_before:.0f} MiB before, {rss_after:.0f} MiB after"
          + (f", peak {peak:.0f} MiB" if peak else "") + f"; {server_fds} open files at the end")
    print(f"  server log {len(log_text.encode()):,} bytes, {log_text.count(chr(10)):,} lines, "
          f"{log_text.count('Traceback')} tracebacks")
    if n_err or not lat:
        sys.exit(1)


if __name__ == "__main__":
    main()
