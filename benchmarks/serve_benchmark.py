"""Load test of the web service beside the servers a user would deploy instead, on
loopback; writes benchmarks/results/serve_benchmark.json.

    python -m benchmarks.serve_benchmark [--model models] [--duration 20] [--warmup 2]
        [--max-wait-ms 2] [--memory-requests 10000] [--offline-seconds 10]
        [--stacks medimg,...]

Every stack serves the same ONNX model with the same decoding and the same answer (our
`Predictor`), one image per request in the multipart field `file`, one after the other in
the same run: `medimg serve` with dynamic batching (as shipped, on uvloop instead of
asyncio, on httptools instead of h11), without batching (--max-batch 1), and the peers of
benchmarks/serve_peers/ in their own environment (.venv-peers, made on first use): a plain
FastAPI + ONNX Runtime app without batching, BentoML with adaptive batching and Ray Serve
with @serve.batch. Closed-loop clients at concurrency 1, 8, 32 and 64 each send real images
from data/sample over their own keep-alive connection for a fixed time, after a warm-up;
the whole sequence of servers runs twice (--rounds), each cell pooling its rounds, so that
a slow spell of the shared machine does not fall on one server alone. Throughput counts
successful requests (status 200 and no per-file error) per second;
latencies cover every request. After its rows, 10,000 more requests to `medimg serve`
measure the growth of its resident memory. ONNX Runtime alone on the same images, decoded
once, gives the offline throughput in the same run.

The client is a few lines of asyncio over raw HTTP/1.1 with every request body built once,
so that it costs little CPU: client and server share the machine's cores, and the CPU each
used (a server's whole process tree; of `medimg serve` also its event loop, and what other
processes used) is recorded per cell, with the mean number of images per model call from
the service's /metrics.
"""

import argparse
import asyncio
import json
import mimetypes
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.error import URLError

import fastapi
import numpy as np
import onnxruntime
import uvicorn

from benchmarks.serve_peers.environment import peer_python
from medimg.data.images import is_image_name
from medimg.devices import SIMD_FLAGS, cpuinfo
from medimg.docs import blank, results_file
from medimg.io import write_json
from medimg.serving.predictor import load_predictor

REPO = Path(__file__).resolve().parents[1]
PEERS = REPO / "benchmarks/serve_peers"

SERVE_FILE = "serve_benchmark.json"
HOST = "127.0.0.1"
BOUNDARY = "serve-benchmark-boundary"
CONCURRENCY = (1, 8, 32, 64)
GOAL_CONCURRENCY = 32
BATCH = 32
MEMORY_STEPS = 10
BATCH_METRIC = "medimg_batch_size"  # the service's histogram of images per model call
REQUEST_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 180.0
GOALS = {"share_of_offline": 0.70, "errors": 0, "memory_growth_mb": 50.0}
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
    """PID and all its descendants, whichever thread started them (a server may run
    workers, and Ray its own daemons), from every process's parent in /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
        parents.setdefault(parent, []).append(int(stat.parent.name))
    tree, waiting = [], [pid]
    while waiting:
        member = waiting.pop()
        tree.append(member)
        waiting.extend(parents.get(member, []))
    return tree


def thread_cpu_seconds(stat: Path) -> float:
    """User plus system CPU time from a /proc .../stat file; 0 for a process gone
    meanwhile."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
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
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:  # gone meanwhile
            continue
        kib += int(status.split("VmRSS:")[1].split()[0]) if "VmRSS:" in status else 0
    return kib * 1024 / 1e6


def batch_totals(port: int) -> tuple[float, float]:
    """(model calls, images in them) so far, from the service's `medimg_batch_size`
    histogram on /metrics; (0, 0) when it has none (a peer)."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as answer:
            lines = answer.read().decode(errors="replace").splitlines()
    except URLError:  # no /metrics
        return 0.0, 0.0
    values = dict(line.rsplit(" ", 1) for line in lines if line.startswith(BATCH_METRIC))
    return (float(values.get(f"{BATCH_METRIC}_count", 0)),
            float(values.get(f"{BATCH_METRIC}_sum", 0)))


def totals(port: int, server_pid: int) -> dict[str, float]:
    """Running totals; a phase's figures are their differences over it."""
    calls, images = batch_totals(port)
    return {"client": time.process_time(), "server": cpu_seconds(server_pid),
            "server_event_loop": main_thread_cpu_seconds(server_pid),
            "machine": machine_busy_seconds(), "model_calls": calls, "batched_images": images}


@dataclass
class Phase:
    """One load against a server: its requests, how long it took and what each process
    used meanwhile (differences of `totals`)."""
    load: Load
    seconds: float
    used: dict[str, float]


def measure(load: Load, concurrency: int, port: int, server_pid: int) -> Phase:
    """Run CONCURRENCY clients over LOAD."""
    before, start = totals(port, server_pid), time.perf_counter()

    async def clients() -> None:
        await asyncio.gather(*(client(load, port) for _ in range(concurrency)))

    asyncio.run(clients())
    seconds = time.perf_counter() - start
    return Phase(load, seconds, {name: value - before[name]
                                 for name, value in totals(port, server_pid).items()})


def pooled(concurrency: int, phases: list[Phase]) -> dict:
    """The figures of one or more phases at one concurrency, pooled: throughput, latency
    percentiles, the mean batch of the model calls, and the CPU the client, the server
    (its event loop apart) and every other process used, in cores and per request; with
    several phases (rounds) also each one's throughput."""
    latencies = [latency for phase in phases for latency in phase.load.latencies_s]
    errors = sum((phase.load.errors for phase in phases), Counter())
    seconds = sum(phase.seconds for phase in phases)
    used = {name: sum(phase.used[name] for phase in phases) for name in phases[0].used}
    used["other"] = max(used.pop("machine") - used["client"] - used["server"], 0.0)
    calls, images = used.pop("model_calls"), used.pop("batched_images")
    done = max(len(latencies), 1)
    figures = {"concurrency": concurrency, **summarise(latencies, errors, seconds),
               "mean_batch": round(images / calls, 1) if calls else None,
               "cores": {name: round(value / seconds, 2) for name, value in used.items()},
               "cpu_ms_per_request": {name: round(used[name] / done * 1000, 3)
                                      for name in ("client", "server", "server_event_loop")}}
    if len(phases) > 1:
        figures["throughput_by_round"] = [
            summarise(phase.load.latencies_s, phase.load.errors, phase.seconds)["throughput"]
            for phase in phases]
    return figures


def run_load(load: Load, concurrency: int, port: int, server_pid: int) -> dict:
    """Run the clients over LOAD: its figures (`pooled`)."""
    return pooled(concurrency, [measure(load, concurrency, port, server_pid)])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_ready(process: subprocess.Popen, port: int, log: Path) -> dict:
    """The /readyz answer once the server is ready; exits naming the log if it dies first."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{shlex.join(process.args)} exited with {process.returncode} "
                             f"before /readyz; its log:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/readyz", timeout=5) as answer:
                body = answer.read()
                return json.loads(body) if body.startswith(b"{") else {}
        except OSError:  # refused while starting, or 503 until the model is warm
            pass
        time.sleep(0.5)
    raise SystemExit(f"{process.args[1]} not ready after {READY_TIMEOUT_S:.0f} s; log: {log}")


@dataclass(frozen=True)
class Stack:
    """A server under test: `medimg serve` with `options`, or `script` of
    benchmarks/serve_peers/; in the peers' environment when `script` or `peers_env`."""
    name: str
    label: str
    batching: str
    options: tuple[str, ...] = ()
    script: str | None = None
    peers_env: bool = False

    def command(self, args: argparse.Namespace, port: int) -> list[str]:
        python = str(peer_python()) if self.script or self.peers_env else sys.executable
        where = ["--model", str(args.model), "--port", str(port)]
        if self.script is None:
            return [python, "-m", "medimg", "serve", *where, "--backend", "onnx",
                    "--host", HOST, "--max-wait-ms", str(args.max_wait_ms), *self.options]
        return [python, str(PEERS / self.script), *where]


OURS = "medimg"  # the stack the goals are about: `medimg serve` as shipped
DYNAMIC = f"dynamic, up to {BATCH}"
STACKS = (
    Stack(OURS, "medimg serve", DYNAMIC),
    # Tried for issue 32, to be kept only if faster: uvloop and httptools (installed only
    # in the peers' environment).
    Stack("medimg-uvloop", "medimg serve --loop uvloop", DYNAMIC, ("--loop", "uvloop"),
          peers_env=True),
    Stack("medimg-httptools", "medimg serve --http httptools", DYNAMIC,
          ("--http", "httptools"), peers_env=True),
    Stack("medimg-no-batching", "medimg serve --max-batch 1", "none", ("--max-batch", "1")),
    Stack("fastapi-onnxruntime", "FastAPI + ONNX Runtime", "none",
          script="fastapi_plain.py"),
    Stack("bentoml", "BentoML", f"adaptive, up to {BATCH}", script="bentoml_service.py"),
    Stack("ray-serve", "Ray Serve", f"@serve.batch, up to {BATCH}",
          script="ray_serve_app.py"),
)


@contextmanager
def served(stack: Stack, args: argparse.Namespace) -> Iterator[tuple[int, int, dict]]:
    """(pid, port, /readyz answer) of STACK's server; stopped after (SIGTERM, as a
    container runtime stops it, then SIGKILL to whatever is left of its process tree)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as scratch:
        log = Path(scratch) / "server.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(stack.command(args, port), stdout=sink,
                                       stderr=subprocess.STDOUT, cwd=REPO,
                                       start_new_session=True)
        try:
            yield process.pid, port, wait_ready(process, port, log)
        finally:
            tree = process_tree(process.pid)
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            for member in tree[1:]:
                with suppress(ProcessLookupError):
                    os.kill(member, signal.SIGKILL)


def measure_round(stack: Stack, args: argparse.Namespace, images: list[Path],
                  memory: bool) -> dict:
    """One round of STACK: a fresh server, a phase per concurrency (after a warm-up), and
    the memory phase when asked."""
    with served(stack, args) as (pid, port, ready):
        requests = [multipart_request(path, port) for path in images]
        phases = {}
        for concurrency in CONCURRENCY:
            run_load(Load(requests, time.perf_counter() + args.warmup), concurrency, port, pid)
            phases[concurrency] = measure(Load(requests, time.perf_counter() + args.duration),
                                          concurrency, port, pid)
            print(json.dumps({"stack": stack.name, **pooled(concurrency, [phases[concurrency]])}),
                  flush=True)
        result = {"name": stack.name, "label": stack.label, "batching": stack.batching,
                  "command": shlex.join(["python", *stack.command(args, 0)[1:]]),
                  "model": ready.get("model"), "phases": phases}
        if memory:
            result["memory"] = memory_phase(args, requests, pid, port)
    return result


def measure_stacks(stacks: list[Stack], args: argparse.Namespace,
                   images: list[Path]) -> tuple[list[dict], dict]:
    """Offline ONNX Runtime, then every stack in turn, `args.rounds` times over, so that a
    slow spell of a shared machine falls on all of them rather than on one; each cell pools
    its rounds, and so does the offline figure. The memory phase runs once, after the
    first round of ours."""
    rounds, offline_runs = [], []
    for number in range(args.rounds):
        offline_runs.append(offline(args, images))
        rounds.append([measure_round(stack, args, images, number == 0 and stack.name == OURS)
                       for stack in stacks])
    results = []
    for runs in zip(*rounds, strict=True):
        result = {key: value for key, value in runs[0].items() if key != "phases"}
        result["cells"] = [pooled(concurrency, [run["phases"][concurrency] for run in runs])
                           for concurrency in CONCURRENCY]
        results.append(result)
    return results, pooled_offline(offline_runs)


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
              "rss_mb_after_each_tenth": samples,
              "growth_mb": round(samples[-1] - before, 1) or 0.0}  # not -0.0
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


def pooled_offline(runs: list[dict]) -> dict:
    """The offline figures of several runs of equal length: their mean throughput and
    costs, and each one's throughput."""
    def mean(values: list[float], digits: int) -> float:
        return round(sum(values) / len(values), digits)

    return {**runs[0], "seconds": round(sum(run["seconds"] for run in runs), 2),
            "throughput": mean([run["throughput"] for run in runs], 1),
            "throughput_by_round": [run["throughput"] for run in runs],
            "cores": {key: mean([run["cores"][key] for run in runs], 2)
                      for key in runs[0]["cores"]},
            "cpu_ms_per_image": {key: mean([run["cpu_ms_per_image"][key] for run in runs], 3)
                                 for key in runs[0]["cpu_ms_per_image"]}}


def cell_at(stack: dict, concurrency: int = GOAL_CONCURRENCY) -> dict:
    return next(cell for cell in stack["cells"] if cell["concurrency"] == concurrency)


def goals(stacks: list[dict], offline_figures: dict) -> dict:
    """Each goal of the issue, the measured value and whether it is met: at concurrency
    32, `medimg serve` ahead of every peer and at least 70% of offline ONNX Runtime; no
    errors; flat memory."""
    ours = next(stack for stack in stacks if stack["name"] == OURS)
    served = cell_at(ours)["throughput"]
    share = served / offline_figures["throughput"]
    peers = {stack["name"]: cell_at(stack)["throughput"] for stack in stacks
             if not stack["name"].startswith(OURS)}
    best_peer = max(peers, key=peers.get) if peers else None
    errors = sum(cell["errors"] for cell in ours["cells"]) + ours["memory"]["errors"]
    growth = ours["memory"]["growth_mb"]
    return {"share_of_offline": {"goal": GOALS["share_of_offline"], "value": round(share, 3),
                                 "met": share >= GOALS["share_of_offline"]},
            "ahead_of_peers": {"goal": "more requests/s than every peer",
                               "value": best_peer and {"best_peer": best_peer,
                                                       "ratio": round(served
                                                                      / peers[best_peer], 3)},
                               "met": bool(peers) and served > max(peers.values())},
            "errors": {"goal": GOALS["errors"], "value": errors,
                       "met": errors <= GOALS["errors"]},
            "memory_growth_mb": {"goal": GOALS["memory_growth_mb"], "value": growth,
                                 "met": growth < GOALS["memory_growth_mb"]}}


def machine() -> dict:
    info = cpuinfo()
    flags = set(info.get("flags", "").split())
    return {"cpus": os.cpu_count(), "cpu_model": info.get("model name", platform.processor()),
            "cpu_vendor": info.get("vendor_id", ""),
            "instruction_sets": [flag for flag in SIMD_FLAGS if flag in flags],
            "platform": platform.platform(), "python": platform.python_version(),
            "fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__,
            "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
            "peers": peer_versions()}


def cpu_name(versions: dict) -> str:
    """The CPU as the results name it: model, and whether it has AVX-512 (which decides
    how fast the model runs, and so the served share of it)."""
    wide = "AVX-512" if "avx512f" in versions["instruction_sets"] else "AVX2, no AVX-512"
    return f"{versions['cpu_model']} ({versions['cpu_vendor']}, {wide})"


def peer_versions() -> dict[str, str]:
    """The peers' package versions, as their environment has them."""
    script = ("import importlib.metadata as m, json; print(json.dumps({name: m.version(name) "
              "for name in ('bentoml', 'ray', 'uvicorn', 'uvloop', 'httptools')}))")
    answer = subprocess.run([str(peer_python()), "-c", script], capture_output=True,
                            text=True, check=True)
    return json.loads(answer.stdout)


def sample_images(folder: Path) -> list[Path]:
    images = sorted(path for path in folder.rglob("*") if path.is_file() and is_image_name(path))
    if not images:
        raise SystemExit(f"--images {folder}: no image files")
    return images


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models"))
    parser.add_argument("--images", type=Path, default=REPO / "data/sample")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds per cell and round")
    parser.add_argument("--rounds", type=int, default=2, help="times over every stack")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each cell")
    # At concurrency 32, 2, 5, 10 and 20 ms gave the same throughput (the batcher fills
    # one batch while the model runs the other); a shorter wait is less latency at 1.
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--memory-requests", type=int, default=10_000)
    parser.add_argument("--memory-concurrency", type=int, default=32)
    parser.add_argument("--offline-seconds", type=float, default=10.0)
    parser.add_argument("--stacks", default=",".join(stack.name for stack in STACKS),
                        help="which servers, comma-separated (medimg is always measured)")
    parser.add_argument("--out", type=Path,
                        default=REPO / "benchmarks/results" / SERVE_FILE)
    args = parser.parse_args()
    known = {stack.name for stack in STACKS}
    unknown = set(args.stacks.split(",")) - known
    if unknown:
        parser.error(f"--stacks: unknown {', '.join(sorted(unknown))}; known: "
                     f"{', '.join(sorted(known))}")
    return args


NO_SERVE = "No results file yet: run `python -m benchmarks.serve_benchmark`."


def met(goal: dict) -> str:
    return "met" if goal["met"] else "NOT met"


def serve_goal_lines(bench: dict) -> list[str]:
    goals, offline = bench["goals"], bench["offline"]
    share, ahead = goals["share_of_offline"], goals["ahead_of_peers"]
    peer = next(stack for stack in bench["stacks"]
                if stack["name"] == ahead["value"]["best_peer"])
    memory = next(stack for stack in bench["stacks"] if stack["name"] == OURS)["memory"]
    ours = next(stack for stack in bench["stacks"] if stack["name"] == OURS)
    rounds = ", ".join(map(str, cell_at(ours).get("throughput_by_round", [])))
    return [f"At c={GOAL_CONCURRENCY} `medimg serve` ({rounds} requests/s by round) served "
            f"{share['value']:.0%} of offline "
            f"ONNX Runtime's {offline['throughput']} images/s (batch {offline['batch_size']}, "
            f"{', '.join(map(str, offline['throughput_by_round']))} by round; "
            f"goal {share['goal']:.0%}: {met(share)}) and {ahead['value']['ratio']:.2f} times "
            f"the best peer, {peer['label']} (goal: ahead of every peer: {met(ahead)}). "
            f"Errors: {goals['errors']['value']} (goal {goals['errors']['goal']}: "
            f"{met(goals['errors'])}). Memory over {memory['requests']:,} requests: "
            f"{memory['growth_mb']:+} MB (goal under {goals['memory_growth_mb']['goal']:g}: "
            f"{met(goals['memory_growth_mb'])}). CPU: {cpu_name(bench['machine'])}."]


VARIANTS = ("medimg-uvloop", "medimg-httptools")  # tried and not kept: the full table only


def serve_table(bench: dict, variants: bool = True) -> list[str]:
    offline = bench["offline"]["throughput"]
    settings = bench["settings"]
    heads = " | ".join(f"c={concurrency}" for concurrency in settings["concurrency"])
    lines = [f"Requests/s at concurrency c (loopback, {bench['machine']['cpus']} cores shared "
             f"by client and server; {settings['rounds']} rounds over all servers, "
             f"{settings['duration_s']:g} s per cell each); at "
             f"c={GOAL_CONCURRENCY} also latency, server CPU per request, share of offline "
             "ONNX Runtime:", "",
             f"| server | batching | {heads} | p50 / p99 ms | server CPU ms | of offline |",
             "|---|---|" + "---|" * (len(bench["settings"]["concurrency"]) + 3)]
    for stack in bench["stacks"]:
        if stack["name"] in VARIANTS and not variants:
            continue
        at = cell_at(stack)
        rates = " | ".join(str(cell["throughput"]) for cell in stack["cells"])
        lines.append(f"| {stack['label']} | {stack['batching']} | {rates} | {at['p50_ms']} / "
                     f"{at['p99_ms']} | {at['cpu_ms_per_request']['server']} | "
                     f"{at['throughput'] / offline:.0%} |")
    return [*lines, "", *serve_goal_lines(bench)]


def serve_table_markdown(root: Path) -> str:
    """The load test in short: requests/s of ours and of every peer by concurrency."""
    if not (root / "benchmarks/results" / SERVE_FILE).is_file():
        return NO_SERVE
    return "\n".join(serve_table(results_file(root, SERVE_FILE), variants=False))


def serve_cells_table(bench: dict) -> list[str]:
    lines = ["| server | c | requests/s | by round | p50 ms | p95 ms | p99 ms | errors | images "
             "per model call | server cores | its event loop | other cores | server CPU ms per "
             "request |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for stack in bench["stacks"]:
        for cell in stack["cells"]:
            cores = cell["cores"]
            loop = cores["server_event_loop"] if stack["name"].startswith(OURS) else None
            lines.append(
                f"| {stack['label']} | {cell['concurrency']} | {cell['throughput']} | "
                f"{', '.join(map(str, cell.get('throughput_by_round', [])))} | "
                f"{cell['p50_ms']} | {cell['p95_ms']} | {cell['p99_ms']} | {cell['errors']} | "
                f"{blank(cell['mean_batch'])} | {cores['server']} | {blank(loop)} | "
                f"{cores['other']} | {cell['cpu_ms_per_request']['server']} |")
    return lines


def serve_cost_lines(bench: dict) -> list[str]:
    """Where the CPU goes, per request served and per image offline; the memory samples."""
    offline = bench["offline"]
    ours = next(stack for stack in bench["stacks"] if stack["name"] == OURS)
    memory, per_request = ours["memory"], cell_at(ours)["cpu_ms_per_request"]
    cost, loop = offline["cpu_ms_per_image"], per_request["server_event_loop"]
    return [f"CPU milliseconds per request of `medimg serve` at concurrency "
            f"{GOAL_CONCURRENCY}: server {per_request['server']}, of which its event loop "
            f"(HTTP, multipart parsing, FastAPI, batching, the JSON answer) {loop} and its "
            f"worker threads (decoding, the model) {per_request['server'] - loop:.3f}; client "
            f"{per_request['client']}. Offline, per image: decoding {cost['decode']}, the "
            f"model at batch {offline['batch_size']} {cost['model']} (other processes used "
            f"{offline['cores']['other']} cores meanwhile).", "",
            f"Resident memory of `medimg serve`: {memory['rss_mb_before']} MB after its rows, "
            f"then after each tenth of {memory['requests']:,} requests at concurrency "
            f"{memory['concurrency']}: "
            f"{', '.join(str(value) for value in memory['rss_mb_after_each_tenth'])} MB."]


def serve_markdown(root: Path) -> str:
    """The load test in full: every cell, the CPU each side used, where it goes, memory,
    and how each server was started."""
    if not (root / "benchmarks/results" / SERVE_FILE).is_file():
        return NO_SERVE
    bench = results_file(root, SERVE_FILE)
    settings, versions = bench["settings"], bench["machine"]
    peers = versions["peers"]
    return "\n".join([
        *serve_table(bench), "", "Every cell: CPU used meanwhile in cores, by the server's "
        "whole process tree (of `medimg serve` also its event loop, the main thread) and by "
        "every other process on the machine:", "", *serve_cells_table(bench), "",
        *serve_cost_lines(bench), "", "Servers as started (port left out):", "",
        *[f"- {stack['label']}: `{stack['command']}`" for stack in bench["stacks"]], "",
        f"Settings: {settings['images']} images from `data/sample`, one per request; warm-up "
        f"{settings['warmup_s']:g} s before each cell; `--max-wait-ms "
        f"{settings['max_wait_ms']:g}`; {cpu_name(versions)}; FastAPI "
        f"{versions['fastapi']}, uvicorn {versions['uvicorn']}, ONNX Runtime "
        f"{versions['onnxruntime']}; peers: BentoML {peers['bentoml']}, Ray {peers['ray']}, "
        f"uvicorn {peers['uvicorn']} with uvloop {peers['uvloop']} and httptools "
        f"{peers['httptools']}; whole run {bench['wall_seconds']:.0f} s. "
        f"`{bench['command']}`"])


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    images = sample_images(args.images)
    chosen = set(args.stacks.split(",")) | {OURS}
    if any(stack.script or stack.peers_env for stack in STACKS if stack.name in chosen):
        print(f"peers' environment: {peer_python()}", flush=True)
    stacks, offline_figures = measure_stacks([stack for stack in STACKS if stack.name in chosen],
                                             args, images)
    results = {
        "command": shlex.join(["python", "-m", "benchmarks.serve_benchmark", *sys.argv[1:]]),
        "machine": machine(),
        "settings": {"duration_s": args.duration, "rounds": args.rounds,
                     "warmup_s": args.warmup,
                     "max_batch": BATCH, "max_wait_ms": args.max_wait_ms,
                     "concurrency": list(CONCURRENCY), "images": len(images),
                     "backend": "onnx", "memory_requests": args.memory_requests,
                     "memory_concurrency": args.memory_concurrency,
                     "offline_seconds": args.offline_seconds},
        "stacks": stacks, "offline": offline_figures,
        "goals": goals(stacks, offline_figures),
        "wall_seconds": round(time.perf_counter() - started, 1)}
    write_json(args.out, results)
    print(json.dumps(results["goals"], indent=2))


if __name__ == "__main__":
    main()
