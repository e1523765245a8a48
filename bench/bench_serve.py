"""Throughput, latency and memory of ``icdcoder serve`` under concurrent clients.

Trains the TF-IDF coder of configs/tfidf-synth.yaml on the synthetic corpus (or takes --model),
starts ``icdcoder serve`` as a subprocess on loopback, and runs N client threads for a fixed time,
each posting synthetic test notes. Prints requests/s, notes/s, latency percentiles, errors and the
server's RSS before and after. Exits 1 if any request failed.

    python bench/bench_serve.py                                  # 8 clients, 20 s, one note a request
    python bench/bench_serve.py --clients 16 --seconds 60 --batch 8
    python bench/bench_serve.py --model runs/tfidf-synth/model --max-concurrency 2
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
           "--max-notes", str(max(64, args.batch))]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
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


def client(url: str, notes: list[str], batch: int, offset: int, stop: float, out: list, errors: Counter) -> None:
    import httpx

    i = offset
    with httpx.Client(timeout=120) as http:
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


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="a saved coder folder; default: train TF-IDF on the synthetic corpus")
    ap.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    ap.add_argument("--seconds", type=float, default=20.0, help="how long the clients post")
    ap.add_argument("--batch", type=int, default=1, help="notes per request")
    ap.add_argument("--max-concurrency", type=int, default=4, help="the server's --max-concurrency")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        model = args.model or Path(tmp) / "model"
        notes = synthetic_notes(None if args.model else model)
        port, log_path = free_port(), Path(tmp) / "server.log"
        t0 = time.perf_counter()
        proc = start_server(model, port, args, log_path)
        print(f"server up in {time.perf_counter() - t0:.1f} s (pid {proc.pid}, {os.cpu_count()} CPUs here)", flush=True)
        try:
            rss_before, _ = rss_mb(proc.pid)
            url, latencies, errors = f"http://127.0.0.1:{port}", [], Counter()
            stop = time.monotonic() + args.seconds
            threads = [threading.Thread(target=client, args=(url, notes, args.batch, k * 7, stop, latencies, errors))
                       for k in range(args.clients)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - t0
            rss_after, peak = rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)

    lat = sorted(latencies)
    n_err = sum(errors.values())
    print(f"{args.clients} clients x {args.seconds:g} s, {args.batch} note(s) a request, "
          f"server --max-concurrency {args.max_concurrency}")
    if lat:
        print(f"  requests   {len(lat):,} ok in {elapsed:.1f} s: {len(lat) / elapsed:.1f} req/s, "
              f"{len(lat) * args.batch / elapsed:.1f} notes/s")
        print(f"  latency    p50 {percentile(lat, 0.50) * 1000:.0f} ms, p90 {percentile(lat, 0.90) * 1000:.0f} ms, "
              f"p99 {percentile(lat, 0.99) * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms")
    print(f"  errors     {n_err}" + (f" ({dict(errors)})" if n_err else ""))
    print(f"  server RSS {rss_before:.0f} MiB before, {rss_after:.0f} MiB after"
          + (f", peak {peak:.0f} MiB" if peak else ""))
    if n_err or not lat:
        sys.exit(1)


if __name__ == "__main__":
    main()
