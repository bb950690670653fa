"""Load test of the web service on loopback; writes benchmarks/results/serve_benchmark.json.

    python benchmarks/serve_benchmark.py [--model models] [--duration 20] [--warmup 2]
        [--max-wait-ms 2] [--memory-requests 10000] [--offline-seconds 10]

`medimg serve` runs as a subprocess twice: with dynamic batching (--max-batch 32) and
without (--max-batch 1). Closed-loop clients at concurrency 1, 8 and 32 each send one real
image from data/sample per request (multipart field `file`) over their own keep-alive
connection for a fixed time, after a warm-up. Throughput counts successful requests (status
200 and no per-file error) per second; latencies cover every request. With batching on,
10,000 more requests measure the growth of the server's resident memory. ONNX Runtime alone
on the same images, decoded once, gives the offline throughput in the same run.

The client is a few lines of asyncio over raw HTTP/1.1 with every request body built once,
so that it costs little CPU: client and server share the machine's cores, and the CPU each
used (the server's event loop apart, and what other processes used) is recorded per cell,
with the mean number of images per model call from the service's /metrics.
"""

import argparse
import asyncio
import json
import mimetypes
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import fastapi
import numpy as np
import onnxruntime
import uvicorn

from medimg.data.images import is_image_name
from medimg.docs import blank, results_file
from medimg.io import write_json
from medimg.serving.predictor import load_predictor

REPO = Path(__file__).resolve().parents[1]

SERVE_FILE = "serve_benchmark.json"
HOST = "127.0.0.1"
BOUNDARY = "serve-benchmark-boundary"
CONCURRENCY = (1, 8, 32)
BATCH = 32
MEMORY_STEPS = 10
BATCH_METRIC = "medimg_batch_size"  # the service's histogram of images per model call
REQUEST_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 180.0
GOALS = {"batched_share_of_offline": 0.70, "errors": 0, "memory_growth_mb": 50.0}
TICKS = os.sysconf("SC_CLK_TCK")


def percentile_ms(latencies_s: list[float], q: float) -> float | None:
    return round(float(np.percentile(latencies_s, q)) * 1000, 2) if latencies_s else None


def summarise(latencies_s: list[float], errors: Counter, seconds: float) -> dict:
    """One cell's figures: throughput of the successful requests, latency percentiles of
    all requests, and the errors by kind."""
    failed = sum(errors.values())
    return {"requests": len(latencies_s), "errors": failed, "error_kinds": dict(errors),
            "seconds": round(seconds, 2),
            "throughput": round((len(latencies_s) - failed) / seconds, 1),
            **{f"p{q}_ms": percentile_ms(latencies_s, q) for q in (50, 95, 99)}}


def multipart_request(path: Path, port: int) -> bytes:
    """The whole HTTP request that uploads PATH to /predict as field `file`."""
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    body = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{path.name}"\r\nContent-Type: {kind}\r\n\r\n').encode()
    body += path.read_bytes() + f"\r\n--{BOUNDARY}--\r\n".encode()
    head = (f"POST /predict HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, whether the server closes the connection) of one response."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    headers = dict(line.lower().split(":", 1) for line in head[1:] if ":" in line)
    if "content-length" not in headers:
        raise ValueError("response without Content-Length")
    body = await reader.readexactly(int(headers["content-length"]))
    return status, body, headers.get("connection", "").strip() == "close"


def failure(status: int, body: bytes) -> str | None:
    """Why a response is a failure (a status other than 200 or a per-file error), or None."""
    if status != 200:
        return f"HTTP {status}"
    errors = [entry["error"] for entry in json.loads(body)["results"] if entry["error"]]
    return f"file error: {errors[0]}" if errors else None


@dataclass
class Load:
    """Requests shared by the clients of one phase: they stop at the deadline or after
    `limit` requests, whichever comes first; every finished request is recorded."""
    requests: list[bytes]
    deadline: float
    limit: int | None = None
    latencies_s: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    started: int = 0

    def next_request(self) -> bytes | None:
        if time.perf_counter() >= self.deadline or self.started == self.limit:
            return None
        self.started += 1
        return self.requests[(self.started - 1) % len(self.requests)]


async def client(load: Load, port: int) -> None:
    """One closed-loop client: send, wait for the answer, send the next."""
    reader, writer = await asyncio.open_connection(HOST, port)
    while (request := load.next_request()) is not None:
        start = time.perf_counter()
        reopen, error = False, None
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                writer.write(request)
                status, body, reopen = await read_response(reader)
            error = failure(status, body)
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as err:
            reopen, error = True, type(err).__name__
        load.latencies_s.append(time.perf_counter() - start)
        if error:
            load.errors[error] += 1
        if reopen:
            writer.close()
            reader, writer = await asyncio.open_connection(HOST, port)
    writer.close()


def process_tree(pid: int) -> list[int]:
    """PID and all its descendants (a server may run workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(grandchild for child in children for grandchild in process_tree(int(child)))]


def thread_cpu_seconds(stat: Path) -> float:
    """User plus system CPU time from a /proc .../stat file."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def cpu_seconds(pid: int) -> float:
    """CPU time of PID and its descendants, all their threads."""
    return sum(thread_cpu_seconds(Path(f"/proc/{member}/stat")) for member in process_tree(pid))


def main_thread_cpu_seconds(pid: int) -> float:
    """CPU time of PID's main thread: in the service, the event loop (HTTP, multipart
    parsing, FastAPI, batching, the JSON answer); decoding and the model run in others."""
    return thread_cpu_seconds(Path(f"/proc/{pid}/task/{pid}/stat"))


def machine_busy_seconds() -> float:
    """CPU seconds every process on the machine has used (all cores), from /proc/stat."""
    ticks = [int(value) for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = ticks[3] + ticks[4]
    return (sum(ticks[:8]) - idle) / TICKS


def resident_mb(pid: int) -> float:
    """Resident memory of PID and its descendants, MB (10^6 bytes)."""
    kib = 0
    for member in process_tree(pid):
        status = Path(f"/proc/{member}/status").read_text()
        kib += int(status.split("VmRSS:")[1].split()[0])
    return kib * 1024 / 1e6


def batch_totals(port: int) -> tuple[float, float]:
    """(model calls, images in them) so far, from the service's `medimg_batch_size`
    histogram on /metrics; (0, 0) when it has none."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as answer:
        lines = answer.read().decode().splitlines()
    values = dict(line.rsplit(" ", 1) for line in lines if line.startswith(BATCH_METRIC))
    return (float(values.get(f"{BATCH_METRIC}_count", 0)),
            float(values.get(f"{BATCH_METRIC}_sum", 0)))


def totals(port: int, server_pid: int) -> dict[str, float]:
    """Running totals; a phase's figures are their differences over it."""
    calls, images = batch_totals(port)
    return {"client": time.process_time(), "server": cpu_seconds(server_pid),
            "server_event_loop": main_thread_cpu_seconds(server_pid),
            "machine": machine_busy_seconds(), "model_calls": calls, "batched_images": images}


def run_load(load: Load, concurrency: int, port: int, server_pid: int) -> dict:
    """Run the clients over LOAD: its figures, the mean batch of the model calls, and the
    CPU the client, the server (its event loop apart) and every other process used, in
    cores and per request."""
    before, start = totals(port, server_pid), time.perf_counter()

    async def clients() -> None:
        await asyncio.gather(*(client(load, port) for _ in range(concurrency)))

    asyncio.run(clients())
    seconds = time.perf_counter() - start
    used = {name: value - before[name] for name, value in totals(port, server_pid).items()}
    used["other"] = max(used.pop("machine") - used["client"] - used["server"], 0.0)
    calls, images = used.pop("model_calls"), used.pop("batched_images")
    done = max(len(load.latencies_s), 1)
    return {"concurrency": concurrency, **summarise(load.latencies_s, load.errors, seconds),
            "mean_batch": round(images / calls, 1) if calls else None,
            "cores": {name: round(value / seconds, 2) for name, value in used.items()},
            "cpu_ms_per_request": {name: round(used[name] / done * 1000, 3)
                                   for name in ("client", "server", "server_event_loop")}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_ready(process: subprocess.Popen, port: int, log: Path) -> dict:
    """The /readyz answer once the server is ready; exits naming the log if it dies first."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"medimg serve exited with {process.returncode} before "
                             f"/readyz; its log:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/readyz", timeout=5) as answer:
                return json.load(answer)
        except OSError:  # refused while starting, or 503 until the model is warm
            pass
        time.sleep(0.5)
    raise SystemExit(f"medimg serve not ready after {READY_TIMEOUT_S:.0f} s; log: {log}")


@contextmanager
def served(args: argparse.Namespace, max_batch: int) -> Iterator[tuple[int, int, dict]]:
    """(pid, port, /readyz answer) of `medimg serve` running with MAX_BATCH; stopped
    after."""
    port = free_port()
    command = [sys.executable, "-m", "medimg", "serve", "--model", str(args.model),
               "--backend", "onnx", "--host", HOST, "--port", str(port),
               "--max-batch", str(max_batch), "--max-wait-ms", str(args.max_wait_ms)]
    with tempfile.TemporaryDirectory() as scratch:
        log = Path(scratch) / "serve.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            yield process.pid, port, wait_ready(process, port, log)
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def measure_mode(args: argparse.Namespace, max_batch: int, images: list[Path]) -> dict:
    """Every concurrency against one server; with batching also the memory phase."""
    with served(args, max_batch) as (pid, port, ready):
        requests = [multipart_request(path, port) for path in images]
        cells = []
        for concurrency in CONCURRENCY:
            warm = Load(requests, time.perf_counter() + args.warmup)
            run_load(warm, concurrency, port, pid)
            cell = run_load(Load(requests, time.perf_counter() + args.duration),
                            concurrency, port, pid)
            print(json.dumps({"max_batch": max_batch, **cell}), flush=True)
            cells.append(cell)
        mode = {"max_batch": max_batch, "model": ready.get("model"), "cells": cells}
        if max_batch > 1:
            mode["memory"] = memory_phase(args, requests, pid, port)
    return mode


def memory_phase(args: argparse.Namespace, requests: list[bytes], pid: int,
                 port: int) -> dict:
    """Resident memory of the warmed-up server before MEMORY_REQUESTS requests and after
    each tenth of them (a leak grows steadily; allocator pools level off)."""
    before, samples, done, errors = resident_mb(pid), [], 0, 0
    for step in range(1, MEMORY_STEPS + 1):
        load = Load(requests, float("inf"), args.memory_requests * step // MEMORY_STEPS - done)
        figures = run_load(load, args.memory_concurrency, port, pid)
        done, errors = done + figures["requests"], errors + figures["errors"]
        samples.append(round(resident_mb(pid), 1))
    memory = {"requests": done, "errors": errors, "concurrency": args.memory_concurrency,
              "rss_mb_before": round(before, 1), "rss_mb_after": samples[-1],
              "rss_mb_after_each_tenth": samples, "growth_mb": round(samples[-1] - before, 1)}
    print(json.dumps(memory), flush=True)
    return memory


def offline(args: argparse.Namespace, images: list[Path]) -> dict:
    """ONNX Runtime alone: the images decoded once (timed), then predicted batch by batch
    for a fixed time; images per second, CPU per image, and what other processes used."""
    predictor = load_predictor(args.model, "onnx")
    blobs = [(path.read_bytes(), path.name) for path in images]
    cpu = time.process_time()
    frames = [frame for blob, name in blobs for frame in predictor.decode(blob, name)]
    decode_ms = (time.process_time() - cpu) / len(blobs) * 1000
    pixels = np.stack([frame.pixels for frame in frames])
    predictor.classifier.predict(pixels[:BATCH], BATCH)
    done, cpu, busy = 0, time.process_time(), machine_busy_seconds()
    start = time.perf_counter()
    while time.perf_counter() - start < args.offline_seconds:
        predictor.classifier.predict(pixels, BATCH)
        done += len(pixels)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    other = max(machine_busy_seconds() - busy - cpu, 0.0)
    figures = {"images": len(pixels), "batch_size": BATCH, "seconds": round(seconds, 2),
               "throughput": round(done / seconds, 1),
               "cores": {"benchmark": round(cpu / seconds, 2), "other": round(other / seconds, 2)},
               "cpu_ms_per_image": {"decode": round(decode_ms, 3),
                                    "model": round(cpu / done * 1000, 3)}}
    print(json.dumps({"offline": figures}), flush=True)
    return figures


def goals(batched: dict, unbatched: dict, offline_figures: dict) -> dict:
    """Each goal of the issue, the measured value and whether it is met."""
    at_32 = next(cell for cell in batched["cells"] if cell["concurrency"] == max(CONCURRENCY))
    share = at_32["throughput"] / offline_figures["throughput"]
    errors = sum(cell["errors"] for mode in (batched, unbatched) for cell in mode["cells"])
    errors += batched["memory"]["errors"]
    growth = batched["memory"]["growth_mb"]
    return {"batched_share_of_offline": {"goal": GOALS["batched_share_of_offline"],
                                         "value": round(share, 3),
                                         "met": share >= GOALS["batched_share_of_offline"]},
            "errors": {"goal": GOALS["errors"], "value": errors,
                       "met": errors <= GOALS["errors"]},
            "memory_growth_mb": {"goal": GOALS["memory_growth_mb"], "value": growth,
                                 "met": growth < GOALS["memory_growth_mb"]}}


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"cpus": os.cpu_count(), "cpu_model": model, "platform": platform.platform(),
            "python": platform.python_version(), "fastapi": fastapi.__version__,
            "uvicorn": uvicorn.__version__, "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__}


def sample_images(folder: Path) -> list[Path]:
    images = sorted(path for path in folder.rglob("*") if path.is_file() and is_image_name(path))
    if not images:
        raise SystemExit(f"--images {folder}: no image files")
    return images


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models"))
    parser.add_argument("--images", type=Path, default=REPO / "data/sample")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per cell")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each cell")
    # At concurrency 32, 2, 5, 10 and 20 ms gave the same throughput (the batcher fills
    # one batch while the model runs the other); a shorter wait is less latency at 1.
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--memory-requests", type=int, default=10_000)
    parser.add_argument("--memory-concurrency", type=int, default=32)
    parser.add_argument("--offline-seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path,
                        default=REPO / "benchmarks/results" / SERVE_FILE)
    return parser.parse_args()


NO_SERVE = "No results file yet: run `benchmarks/serve_benchmark.py`."


def serve_cells(bench: dict) -> list[tuple[str, dict]]:
    """(batching on/off, cell) for every cell, by concurrency, batching first."""
    modes = (("on", bench["batching"]), ("off", bench["no_batching"]))
    return sorted(((label, cell) for label, mode in modes for cell in mode["cells"]),
                  key=lambda item: (item[1]["concurrency"], item[0] == "off"))


def serve_goal_lines(bench: dict) -> list[str]:
    goals, offline = bench["goals"], bench["offline"]
    share, memory = goals["batched_share_of_offline"], bench["batching"]["memory"]

    def met(goal: dict) -> str:
        return "met" if goal["met"] else "NOT met"

    return [f"Offline ONNX Runtime in the same run: {offline['throughput']} images/s (batch "
            f"{offline['batch_size']}); served with batching at concurrency "
            f"{max(bench['settings']['concurrency'])}: {share['value']:.0%} of it (goal "
            f"{share['goal']:.0%}: {met(share)}). Errors: {goals['errors']['value']} (goal "
            f"{goals['errors']['goal']}: {met(goals['errors'])}). Resident memory over "
            f"{memory['requests']:,} requests: {memory['growth_mb']:+} MB (goal under "
            f"{goals['memory_growth_mb']['goal']:g}: {met(goals['memory_growth_mb'])})."]


def serve_table(bench: dict) -> list[str]:
    lines = [f"Loopback, {bench['machine']['cpus']} CPU cores shared by client and server, "
             f"{bench['settings']['duration_s']:g} s per row:", "",
             "| concurrency | batching | requests/s | p50 ms | p95 ms | p99 ms | errors |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {cell['concurrency']} | {label} | {cell['throughput']} | {cell['p50_ms']} | "
              f"{cell['p95_ms']} | {cell['p99_ms']} | {cell['errors']} |"
              for label, cell in serve_cells(bench)]
    return [*lines, "", *serve_goal_lines(bench)]


def serve_table_markdown(root: Path) -> str:
    """The load test in short: requests/s and latency by concurrency and batching."""
    if not (root / "benchmarks/results" / SERVE_FILE).is_file():
        return NO_SERVE
    return "\n".join(serve_table(results_file(root, SERVE_FILE)))


def serve_cpu_table(bench: dict) -> list[str]:
    lines = ["| concurrency | batching | images per model call | client | server | its event "
             "loop | other | server ms per request |", "|---|---|---|---|---|---|---|---|"]
    for label, cell in serve_cells(bench):
        cores = cell["cores"]
        lines.append(f"| {cell['concurrency']} | {label} | {blank(cell['mean_batch'])} | "
                     f"{cores['client']} | {cores['server']} | {cores['server_event_loop']} | "
                     f"{cores['other']} | {cell['cpu_ms_per_request']['server']} |")
    return lines


def serve_cost_lines(bench: dict) -> list[str]:
    """Where the CPU goes, per request served and per image offline; the memory samples."""
    offline, memory = bench["offline"], bench["batching"]["memory"]
    top = max(bench["batching"]["cells"], key=lambda cell: cell["concurrency"])
    per_request, cost = top["cpu_ms_per_request"], offline["cpu_ms_per_image"]
    loop = per_request["server_event_loop"]
    return [f"CPU milliseconds per request at concurrency {top['concurrency']} with batching: "
            f"server {per_request['server']}, of which its event loop (HTTP, multipart "
            f"parsing, FastAPI, batching, the JSON answer) {loop} and its worker threads "
            f"(decoding, the model) {per_request['server'] - loop:.3f}; client "
            f"{per_request['client']}. Offline, per image: decoding {cost['decode']}, the "
            f"model at batch {offline['batch_size']} {cost['model']} (other processes used "
            f"{offline['cores']['other']} cores meanwhile).", "",
            f"Resident memory of the server: {memory['rss_mb_before']} MB after the rows "
            f"above, then after each tenth of {memory['requests']:,} requests at concurrency "
            f"{memory['concurrency']}: "
            f"{', '.join(str(value) for value in memory['rss_mb_after_each_tenth'])} MB."]


def serve_markdown(root: Path) -> str:
    """The load test in full: the table, the CPU each side used, where it goes, memory."""
    if not (root / "benchmarks/results" / SERVE_FILE).is_file():
        return NO_SERVE
    bench = results_file(root, SERVE_FILE)
    settings = bench["settings"]
    return "\n".join([
        *serve_table(bench), "", "CPU used during each row, in cores: the client, the server "
        "(and of that its event loop, the main thread), every other process on the machine:",
        "", *serve_cpu_table(bench), "", *serve_cost_lines(bench), "",
        f"Settings: {settings['images']} images from `data/sample`, one per request; warm-up "
        f"{settings['warmup_s']:g} s before each row; `--max-wait-ms "
        f"{settings['max_wait_ms']:g}`; {bench['machine']['cpu_model']}; whole run "
        f"{bench['wall_seconds']:.0f} s. `{bench['command']}`"])


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    images = sample_images(args.images)
    offline_figures = offline(args, images)
    batched = measure_mode(args, BATCH, images)
    unbatched = measure_mode(args, 1, images)
    results = {
        "command": shlex.join(["python", "benchmarks/serve_benchmark.py", *sys.argv[1:]]),
        "machine": machine(),
        "settings": {"duration_s": args.duration, "warmup_s": args.warmup,
                     "max_batch": BATCH, "max_wait_ms": args.max_wait_ms,
                     "concurrency": list(CONCURRENCY), "images": len(images),
                     "backend": "onnx", "memory_requests": args.memory_requests,
                     "memory_concurrency": args.memory_concurrency,
                     "offline_seconds": args.offline_seconds},
        "batching": batched, "no_batching": unbatched, "offline": offline_figures,
        "goals": goals(batched, unbatched, offline_figures),
        "wall_seconds": round(time.perf_counter() - started, 1)}
    write_json(args.out, results)
    print(json.dumps(results["goals"], indent=2))


if __name__ == "__main__":
    main()
