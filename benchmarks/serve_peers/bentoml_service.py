"""The BentoML peer: a BentoML 1.4 service with its adaptive batching.

    .venv-peers/bin/python benchmarks/serve_peers/bentoml_service.py --model models --port 8002

The script runs `bentoml serve bentoml_service:Gateway` in its place (exec: same process
id, so SIGTERM reaches BentoML's process manager, which stops its workers) on 127.0.0.1,
usage tracking off; the model folder travels in MEDIMG_PEER_MODEL, since BentoML imports
this module in worker processes of its own.

POST /predict takes the multipart field `file` (repeatable): BentoML maps a multipart
field to the API parameter of the same name, and a `list[Path]` parameter takes each file,
written to a temporary file of the request. The upload service (Gateway, one worker)
decodes them in a thread, then awaits the batchable `classify_batch` (`batchable=True,
max_batch_size=32`) of the model service (Model, one worker), which it reaches through
`bentoml.depends`, BentoML's pattern for composing services: the images travel pickled
over a Unix socket, and BentoML's adaptive-batching dispatcher gathers the images of
concurrent requests into one model call. Two worker processes share the cores. The answer
is {"model": ..., "results": [...]}, as ours. (One service whose endpoint calls its own
batchable API through `self.to_async` sends the images as JSON lists of numbers: that
encoding took 95% of the worker's time in a py-spy profile, a layout no one would deploy
once measured.)

GET /readyz is BentoML's own: 200 (body "\\n", not JSON) once `__is_ready__` is true,
which is once the worker has built the service, warm-up call included (it also asks the
Model service); before that, connections are refused, or wait for the worker.
"""

import asyncio
import os
import sys
from pathlib import Path
from typing import Annotated

import bentoml
import numpy as np
from bentoml.validators import DType
from peer_common import (
    HOST,
    MAX_BATCH,
    MODEL_ENV,
    BatchSizes,
    answer,
    decode,
    load,
    model_dir_from_env,
    parse_args,
    pixels,
    warm_up,
)

from medimg.serving.predictor import Frame, Predictor

HERE = Path(__file__).resolve().parent
TEMP_PREFIX = len("tmp") + 8  # tempfile's "tmp" and 8 random characters before the suffix
# The longest a request may wait for its batch before BentoML answers 503: a ceiling, not
# the batch window (BentoML's dispatcher learns that from the model's timings); high, so
# that the load test measures batching rather than load shedding, as our service has none.
MAX_LATENCY_MS = 10_000
# Without the dtype, images that cross BentoML's JSON client as nested lists come back as
# int64, which the model's normalisation does not scale as uint8 (wrong probabilities, no
# error).
Images = Annotated[np.ndarray, DType("uint8")]


def upload_name(path: Path) -> str:
    """The uploaded file's own name: BentoML keeps it only as the suffix of the temporary
    file it writes (tempfile.NamedTemporaryFile(suffix=name))."""
    return path.name[TEMP_PREFIX:] or "upload"


# BentoML's client (the one behind `self.to_async` and `bentoml.depends`) replaces its
# session every 100 requests or 5 minutes and closes the old one while requests are still
# in flight on it: at concurrency 32 each refresh failed a dozen requests with 500
# ("Cannot write to closing transport"). Its `runner_connection` setting moves the refresh
# out of any benchmark's reach.
NO_SESSION_REFRESH = {"max_requests": 2**31 - 1, "max_age": 1e9}
SERVICE = {"workers": 1, "traffic": {"timeout": 60}, "runner_connection": NO_SESSION_REFRESH}


def warmed_up_model() -> Predictor:
    """The model from MEDIMG_PEER_MODEL after its warm-up call."""
    predictor = load(model_dir_from_env())
    warm_up(predictor)
    return predictor


def uploads(files: list[Path]) -> list[tuple[bytes, str]]:
    """(data, original name) of each uploaded file, as peer_common.decode takes them."""
    return [(path.read_bytes(), upload_name(path)) for path in files]


async def decoded(predictor: Predictor, files: list[Path]) -> list[Frame]:
    """The uploads' frames, read and decoded in a thread as our service does."""
    return await asyncio.to_thread(lambda: decode(predictor, uploads(files)))


@bentoml.service(name="medimg_peer_model", **SERVICE)
class Model:
    """The model behind an adaptive-batching API, a service of its own."""

    def __init__(self) -> None:
        self.predictor = warmed_up_model()
        self.batches = BatchSizes("bentoml")

    def __is_ready__(self) -> bool:
        return True

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=MAX_BATCH,
                 max_latency_ms=MAX_LATENCY_MS)
    def classify_batch(self, images: Images) -> list[dict]:
        """One model call on the images of the requests BentoML batched together."""
        self.batches.observe(len(images))
        return self.predictor.predict(images)


@bentoml.service(name="medimg_peer_gateway", **SERVICE)
class Gateway:
    """The upload endpoint, decoding in its own worker process and sending
    the images to Model (pickled, over a Unix socket)."""

    model = bentoml.depends(Model)

    def __init__(self) -> None:
        self.predictor = load(model_dir_from_env())  # for the decode rules and identity

    @bentoml.api(route="/predict")
    async def predict(self, file: list[Path]) -> dict:
        """Classify the uploaded files, one result per file or frame."""
        frames = await decoded(self.predictor, file)
        images = pixels(frames)
        predictions = [] if images is None else await self.model.to_async.classify_batch(images)
        return answer(self.predictor, frames, predictions)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    env = {**os.environ, MODEL_ENV: str(args.model), "BENTOML_DO_NOT_TRACK": "True"}
    os.execve(sys.executable, [sys.executable, "-m", "bentoml", "serve",
                               "bentoml_service:Gateway",
                               "--working-dir", str(HERE), "--host", HOST,
                               "--port", str(args.port)], env)


if __name__ == "__main__":
    main()
