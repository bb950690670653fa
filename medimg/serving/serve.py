"""Serve the trained classifier over HTTP (FastAPI app of medimg.serving.service, run by
uvicorn).

    medimg serve [--model models] [--host 127.0.0.1] [--port 8000]
                 [--backend onnx|torch] [--max-batch 32] [--max-wait-ms 2] [--model-calls 2]
                 [--max-files 32] [--max-file-mb 20] [--max-request-mb 100]
                 [--max-in-flight 64] [--request-timeout-s 30] [--graceful-timeout-s 30]
                 [--loop asyncio|uvloop] [--http h11|httptools]

Then open http://127.0.0.1:8000/ for the page, /docs for the API, or
    curl -F file=@scan.png -F file=@slide.jpg 'http://127.0.0.1:8000/predict?gradcam=true'
/healthz says the process is up, /readyz that the model has answered its warm-up call,
/metrics is for Prometheus. It listens on the loopback interface only unless --host says
otherwise (e.g. --host 0.0.0.0 in a container). Concurrent requests are batched into one
model call of up to --max-batch images, waiting at most --max-wait-ms for more;
--max-batch 1 turns the batching off. Up to --model-calls model calls run at once, each
ONNX Runtime call on its share of the CPU cores. Past --max-in-flight requests at once, or after
--request-timeout-s, /predict answers 503 with Retry-After. On SIGTERM or Ctrl+C it stops
accepting connections and finishes the requests it has accepted (for up to
--graceful-timeout-s) before it exits.
"""

import argparse
import gc
import os
import sys
from pathlib import Path

import uvicorn
from threadpoolctl import threadpool_limits

from medimg.errors import UserError
from medimg.serving.predictor import load_predictor
from medimg.serving.service import Settings, create_app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="medimg serve", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models"),
                        help="model folder (model.json with model.onnx or model.safetensors), "
                             "or an ensemble folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--backend", choices=["onnx", "torch"], default="onnx")
    parser.add_argument("--max-batch", type=int, default=Settings.max_batch,
                        help="images per model call; 1 = no dynamic batching")
    parser.add_argument("--max-wait-ms", type=float, default=Settings.max_wait_ms,
                        help="how long a batch waits for more requests")
    parser.add_argument("--model-calls", type=int, default=Settings.model_calls,
                        help="model calls at once, each on its share of the cores")
    parser.add_argument("--max-files", type=int, default=Settings.max_files,
                        help="files per request")
    parser.add_argument("--max-file-mb", type=float, default=Settings.max_file_mb)
    parser.add_argument("--max-request-mb", type=float, default=Settings.max_request_mb)
    parser.add_argument("--max-in-flight", type=int, default=Settings.max_in_flight,
                        help="/predict requests at once; past it 503 with Retry-After")
    parser.add_argument("--request-timeout-s", type=float, default=Settings.request_timeout_s,
                        help="a /predict request not answered by then gets 503")
    parser.add_argument("--graceful-timeout-s", type=float, default=30.0,
                        help="on shutdown, how long accepted requests may take to finish")
    # uvloop and httptools did not serve more on 2 cores (benchmarks/serve_benchmark.py):
    # requirements.txt installs neither; they are here to measure again.
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio",
                        help="uvicorn's event loop (uvloop: install it first)")
    parser.add_argument("--http", choices=["h11", "httptools"], default="h11",
                        help="uvicorn's HTTP parser (httptools: install it first)")
    return parser.parse_args(argv)


def model_call_threads(model_calls: int) -> int:
    """ONNX Runtime threads per model call: the cores shared among the model calls."""
    return max(1, len(os.sched_getaffinity(0)) // model_calls)


def start_with_one_malloc_arena(argv: list[str]) -> None:
    """Start `medimg serve` again with MALLOC_ARENA_MAX=1 unless it is set. glibc gives each
    thread that allocates (uvicorn's, the decoding and model threads) an arena of its own,
    which keeps freed memory: resident memory grew by 70 to 150 MB over the first
    thousands of requests, and stays flat with one arena (benchmarks/serve_benchmark.py).
    glibc reads the variable only when a process starts."""
    if "MALLOC_ARENA_MAX" not in os.environ:
        os.execve(sys.executable, [sys.executable, "-m", "medimg", "serve", *argv],
                  {**os.environ, "MALLOC_ARENA_MAX": "1"})


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    for option in ("max_batch", "model_calls", "max_in_flight"):
        if getattr(args, option) < 1:
            raise UserError(f"--{option.replace('_', '-')} must be at least 1, "
                            f"not {getattr(args, option)}")
    settings = Settings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                        model_calls=args.model_calls,
                        max_files=args.max_files, max_file_mb=args.max_file_mb,
                        max_request_mb=args.max_request_mb, max_in_flight=args.max_in_flight,
                        request_timeout_s=args.request_timeout_s)
    # The detector's matrix products are small: BLAS threads would only spin against ONNX
    # Runtime's. Objects alive now (the model) live as long as the server: keeping them
    # out of the garbage collector's passes avoids pauses that stall a whole batch.
    threadpool_limits(1, user_api="blas")
    # Batches of every size from 1 to --max-batch, and cores shared with decoding and the
    # event loop: ONNX Runtime set up for that (medimg.inference.OnnxBackend).
    app = create_app(load_predictor(args.model, args.backend, serving=True,
                                    threads=model_call_threads(args.model_calls)), settings)
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host=args.host, port=args.port, loop=args.loop, http=args.http,
                timeout_graceful_shutdown=args.graceful_timeout_s)


def run(argv: list[str]) -> None:
    """`medimg serve`: the server, in a process with one malloc arena."""
    start_with_one_malloc_arena(argv)
    main(argv)
