"""The Ray Serve peer: a FastAPI ingress deployment with Ray Serve's request batching.

    .venv-peers/bin/python benchmarks/serve_peers/ray_serve_app.py --model models --port 8003

Starts a local Ray cluster of its own (2 CPUs, no dashboard, usage stats off), Serve's
HTTP proxy on 127.0.0.1:PORT and one replica. Ray's internal servers (GCS, raylet,
agents, actors' gRPC) listen on ports of their own on all interfaces, as Ray always does;
only this machine's processes talk to them. POST /predict
takes the multipart field `file` (repeatable, FastAPI's `UploadFile`), decodes the files
in a thread of the replica, then awaits one `@serve.batch` call per image: Serve gathers
up to 32 images, waiting at most 2 ms after the first, into one model call (run in a
thread, so the replica keeps taking requests meanwhile, as our service does). GET /readyz
answers 200 once the replica has made the warm-up call: its constructor makes it, so the
application is not RUNNING (and /readyz not routed) before. SIGTERM (or SIGINT) runs
serve.shutdown() and ray.shutdown(), which stop the replica, the proxy, the controller
and the daemons (raylet, GCS, agents) that ray.init started, then kills any of this
process's descendants still alive (about 4 s in all).
"""

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import numpy as np
import psutil
import ray
from fastapi import FastAPI, UploadFile
from fastapi.responses import JSONResponse
from peer_common import (
    HOST,
    MAX_BATCH,
    MAX_WAIT_MS,
    BatchSizes,
    answer,
    decode,
    load,
    parse_args,
    pixels,
    warm_up,
)
from ray import serve

HERE = Path(__file__).resolve().parent
app = FastAPI(title="medimg peer: Ray Serve")


@serve.deployment(num_replicas=1, max_ongoing_requests=2 * MAX_BATCH,
                  graceful_shutdown_wait_loop_s=0.5, graceful_shutdown_timeout_s=5)
@serve.ingress(app)
class Classifier:
    """One replica: the model, its batching, and the FastAPI routes that feed it.
    max_ongoing_requests is raised from Serve's default of 5, which would cap a batch at
    5 images; twice the batch lets the next batch fill while one runs. The shutdown
    settings (2 s and 20 s by default) only make SIGTERM quicker: the replica checks for
    requests still running every 0.5 s."""

    def __init__(self, model_dir: str) -> None:
        self.predictor = load(Path(model_dir))
        warm_up(self.predictor)  # the application is RUNNING only after this
        self.batches = BatchSizes("ray")

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=MAX_WAIT_MS / 1000)
    async def classify(self, images: list[np.ndarray]) -> list[dict]:
        """One model call on the images Serve batched together, in a thread."""
        self.batches.observe(len(images))
        return await asyncio.to_thread(self.predictor.predict, np.stack(images))

    @app.post("/predict")
    async def predict(self, file: list[UploadFile]) -> dict:
        """Classify the uploaded files, one result per file or frame."""
        uploads = [(await upload.read(), upload.filename or "upload") for upload in file]
        frames = await asyncio.to_thread(decode, self.predictor, uploads)
        images = pixels(frames)
        predictions = [] if images is None else list(
            await asyncio.gather(*(self.classify(image) for image in images)))
        return answer(self.predictor, frames, predictions)

    @app.get("/readyz")
    async def readyz(self) -> JSONResponse:
        return JSONResponse({"status": "ready", "model": self.predictor.identity})


def stop(signum: int, frame: object) -> None:
    """SIGTERM or SIGINT: unwind main() to its `finally`, wherever startup has got to."""
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    # Before ray.init, read by it and inherited by the processes it starts: no usage
    # report, and the replica (this class arrives pickled) imports peer_common from here.
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    try:
        ray.init(num_cpus=2, include_dashboard=False)
        signal.signal(signal.SIGTERM, stop)  # ray.init installs a handler of its own
        serve.start(http_options={"host": HOST, "port": args.port})
        serve.run(Classifier.bind(str(args.model)), route_prefix="/")
        print(f"Ray Serve peer ready on http://{HOST}:{args.port}", flush=True)
        while True:
            signal.pause()
    finally:
        # A second signal must not cut the shutdown short: that would orphan Ray's daemons.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)
        shut_down_ray()


def shut_down_ray() -> None:
    """Stop Serve and every process ray.init started. Ray's own shutdown is not always
    enough: stopped during ray.init, its dashboard and runtime-env agents outlived it,
    stuck reporting the raylet's death to a GCS already gone; whatever of this process's
    descendants is still there a few seconds after ray.shutdown() is killed."""
    ray_processes = psutil.Process().children(recursive=True)  # raylet, GCS, agents, actors
    if ray.is_initialized():  # serve.shutdown() would otherwise start a Ray of its own
        serve.shutdown()
    ray.shutdown(wait_for_processes=True)  # safe when ray.init never ran or failed
    _, alive = psutil.wait_procs(ray_processes, timeout=3)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


if __name__ == "__main__":
    main()
