"""The load benchmark's own parts: its figures, its client against a real FastAPI app, the
process measurements, and the committed results file against itself."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse

from benchmarks import serve_benchmark as bench
from benchmarks.serve_benchmark import (
    SERVE_FILE,
    serve_goal_lines,
    serve_markdown,
    serve_table_markdown,
)
from conftest import noise_image, save

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks/results" / SERVE_FILE


def test_throughput_counts_only_successes_and_latency_counts_every_request() -> None:
    latencies = [i / 1000 for i in range(1, 101)]  # 1 to 100 ms
    figures = bench.summarise(latencies, Counter({"HTTP 500": 4}), seconds=2.0)
    assert figures["requests"] == 100 and figures["errors"] == 4
    assert figures["throughput"] == 48.0
    assert figures["p50_ms"] == 50.5 and figures["p95_ms"] == 95.05
    assert figures["p99_ms"] == 99.01
    assert figures["error_kinds"] == {"HTTP 500": 4}


def test_a_phase_without_requests_has_no_percentiles() -> None:
    figures = bench.summarise([], Counter(), seconds=1.0)
    assert figures["p50_ms"] is None and figures["throughput"] == 0.0


def test_a_load_stops_after_its_limit() -> None:
    load = bench.Load([b"a", b"b"], deadline=float("inf"), limit=3)
    assert [load.next_request() for _ in range(5)] == [b"a", b"b", b"a", None, None]


def test_a_load_stops_at_its_deadline() -> None:
    assert bench.Load([b"a"], deadline=time.perf_counter()).next_request() is None


def echo_app(received: list[tuple[str, bytes]]) -> FastAPI:
    """/predict as the service answers it: `bad*` files get a per-file error, `boom*`
    files a 500; every upload is recorded. /metrics counts one model call per request."""
    app = FastAPI()

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(f"{bench.BATCH_METRIC}_count {len(received)}.0\n"
                                 f"{bench.BATCH_METRIC}_sum {len(received)}.0\n")

    @app.post("/predict")
    async def predict(file: list[UploadFile]) -> JSONResponse:
        uploads = [(upload.filename, await upload.read()) for upload in file]
        received.extend(uploads)
        if uploads[0][0].startswith("boom"):
            return JSONResponse({"detail": "broken"}, status_code=500)
        return JSONResponse({"results": [
            {"file": name, "error": "not a recognised image" if name.startswith("bad") else None}
            for name, _ in uploads]})

    return app


@pytest.fixture
def echo_server() -> Iterator[tuple[int, list[tuple[str, bytes]]]]:
    received: list[tuple[str, bytes]] = []
    port = bench.free_port()
    server = uvicorn.Server(uvicorn.Config(echo_app(received), host=bench.HOST, port=port,
                                           log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the test server did not start within 10 s"
    yield port, received
    server.should_exit = True
    thread.join(timeout=10)


def test_the_client_uploads_each_file_as_field_file_and_counts_failures(
        tmp_path: Path, echo_server: tuple[int, list[tuple[str, bytes]]]) -> None:
    port, received = echo_server
    files = [save(tmp_path / name, noise_image(seed)) for seed, name in
             enumerate(["good.png", "bad.png", "boom.png", "fine.jpg"])]
    load = bench.Load([bench.multipart_request(path, port) for path in files],
                      deadline=float("inf"), limit=8)
    figures = bench.run_load(load, 2, port, os.getpid())
    assert figures["requests"] == 8 and figures["errors"] == 4
    assert figures["error_kinds"] == {"file error: not a recognised image": 2, "HTTP 500": 2}
    assert sorted(received) == sorted(2 * [(path.name, path.read_bytes()) for path in files])
    assert figures["mean_batch"] == 1.0
    assert figures["cpu_ms_per_request"]["client"] > 0


def test_resident_memory_includes_the_child_processes() -> None:
    before = bench.resident_mb(os.getpid())
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; b = b'x' * 80_000_000; print(1, flush=True); "
                               "sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        child.stdout.readline()
        assert bench.resident_mb(os.getpid()) - before > 70
        assert bench.cpu_seconds(os.getpid()) > 0
    finally:
        child.communicate()


def committed() -> dict:
    assert RESULTS.is_file(), f"{RESULTS} missing: run benchmarks/serve_benchmark.py"
    return json.loads(RESULTS.read_text())


def test_committed_goals_follow_from_the_committed_figures() -> None:
    results = committed()
    assert bench.goals(results["stacks"], results["offline"]) == results["goals"]


def test_every_stack_was_measured_at_every_concurrency_in_one_run() -> None:
    results = committed()
    assert [stack["name"] for stack in results["stacks"]] == [s.name for s in bench.STACKS]
    for stack in results["stacks"]:
        assert [cell["concurrency"] for cell in stack["cells"]] == list(bench.CONCURRENCY)
        for cell in stack["cells"]:
            assert len(cell["throughput_by_round"]) == results["settings"]["rounds"]
            assert min(cell["throughput_by_round"]) <= cell["throughput"]
            assert cell["throughput"] <= max(cell["throughput_by_round"])
            assert cell["p50_ms"] <= cell["p95_ms"] <= cell["p99_ms"]
            assert sum(cell["error_kinds"].values()) == cell["errors"]
            expected = (cell["requests"] - cell["errors"]) / cell["seconds"]
            assert cell["throughput"] == pytest.approx(expected, rel=0.01)
    ours = results["stacks"][0]
    memory = ours["memory"]
    assert memory["requests"] == results["settings"]["memory_requests"]
    assert memory["rss_mb_after"] == memory["rss_mb_after_each_tenth"][-1]
    assert memory["growth_mb"] == pytest.approx(
        memory["rss_mb_after"] - memory["rss_mb_before"], abs=0.11)


def test_the_goals_compare_ours_with_the_best_peer_and_offline() -> None:
    def stack(name: str, rate: float) -> dict:
        return {"name": name, "cells": [{"concurrency": 32, "throughput": rate, "errors": 0}],
                "memory": {"errors": 0, "growth_mb": 1.0}}

    stacks = [stack("medimg", 300.0), stack("medimg-no-batching", 900.0),
              stack("bentoml", 250.0), stack("ray-serve", 100.0)]
    goals = bench.goals(stacks, {"throughput": 400.0})
    assert goals["share_of_offline"] == {"goal": 0.7, "value": 0.75, "met": True}
    # Our own variants are not peers; the best peer is.
    assert goals["ahead_of_peers"] == {"goal": "more requests/s than every peer",
                                       "value": {"best_peer": "bentoml", "ratio": 1.2},
                                       "met": True}
    stacks[2]["cells"][0]["throughput"] = 301.0
    assert not bench.goals(stacks, {"throughput": 400.0})["ahead_of_peers"]["met"]


def test_the_process_tree_finds_grandchildren_started_by_any_thread() -> None:
    code = ("import subprocess, sys, threading\n"
            "def spawn():\n"
            "    subprocess.Popen([sys.executable, '-c', 'import sys; sys.stdin.read()'])\n"
            "thread = threading.Thread(target=spawn); thread.start(); thread.join()\n"
            "print(1, flush=True); sys.stdin.read()\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
    try:
        child.stdout.readline()
        tree = bench.process_tree(os.getpid())
        assert child.pid in tree
        assert len(tree) >= 3  # this process, the child and the child's child
    finally:
        tree = bench.process_tree(child.pid)
        child.communicate()
        for member in tree[1:]:
            with suppress(ProcessLookupError):  # it read the end of its input and left
                os.kill(member, signal.SIGKILL)


def test_the_generated_tables_show_every_cell_and_the_readme_every_peer() -> None:
    results, root = committed(), RESULTS.parents[2]
    table, full = serve_table_markdown(root), serve_markdown(root)
    for stack in results["stacks"]:
        rates = " | ".join(str(cell["throughput"]) for cell in stack["cells"])
        row = f"| {stack['label']} | {stack['batching']} | {rates} |"
        assert row in full
        assert (row in table) == (stack["name"] not in bench.VARIANTS)
        for cell in stack["cells"]:
            assert f"| {stack['label']} | {cell['concurrency']} | {cell['throughput']} |" in full
    assert serve_goal_lines(results)[0] in table


def test_rounds_pool_into_one_cell_and_keep_each_rounds_throughput() -> None:
    def phase(latencies: list[float], errors: int, seconds: float) -> bench.Phase:
        load = bench.Load([b"x"], deadline=0.0)
        load.latencies_s, load.errors = latencies, Counter({"HTTP 500": errors} if errors else {})
        used = {"client": 0.1, "server": 1.0, "server_event_loop": 0.2, "machine": 1.5,
                "model_calls": 2.0, "batched_images": float(len(latencies))}
        return bench.Phase(load, seconds, used)

    figures = bench.pooled(32, [phase([0.01] * 100, 0, 1.0), phase([0.03] * 50, 10, 1.0)])
    assert figures["requests"] == 150 and figures["errors"] == 10
    assert figures["throughput"] == 70.0  # 140 successes over 2 s, not the mean of 100 and 40
    assert figures["throughput_by_round"] == [100.0, 40.0]
    assert figures["p50_ms"] == 10.0 and figures["p99_ms"] == 30.0
    assert figures["mean_batch"] == 37.5
    assert figures["cores"]["other"] == 0.4  # machine minus client minus server, per second
    offline = bench.pooled_offline([
        {"throughput": 700.0, "seconds": 10.0, "batch_size": 32,
         "cores": {"benchmark": 2.0, "other": 0.0}, "cpu_ms_per_image": {"model": 2.0}},
        {"throughput": 800.0, "seconds": 10.0, "batch_size": 32,
         "cores": {"benchmark": 1.8, "other": 0.2}, "cpu_ms_per_image": {"model": 3.0}}])
    assert offline["throughput"] == 750.0 and offline["throughput_by_round"] == [700.0, 800.0]
    assert offline["cores"] == {"benchmark": 1.9, "other": 0.1} and offline["seconds"] == 20.0
