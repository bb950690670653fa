"""The unbatched peer: what a user writes with FastAPI and no batching of their own.

    .venv-peers/bin/python benchmarks/serve_peers/fastapi_plain.py --model models --port 8001

POST /predict takes the multipart field `file` (repeatable, FastAPI's own `UploadFile`
parsing), decodes the files and calls the model once per request, in a worker thread
(FastAPI runs a plain `def` endpoint in its thread pool). GET /readyz answers 200 once
the model has answered its warm-up call. One uvicorn worker on 127.0.0.1; run with the
peers' python (environment.py), which has uvicorn's standard extras (uvloop, httptools:
Ray Serve requires uvicorn[standard]), so uvicorn takes them, as it would for a user who
installed `uvicorn[standard]`. SIGTERM stops it (uvicorn's own handler, which re-raises
the signal once shut down: exit status 143, as `medimg serve`).
"""

import asyncio
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, UploadFile
from fastapi.responses import JSONResponse
from peer_common import HOST, classify, load, parse_args, warm_up

from medimg.serving.predictor import Predictor


def create_app(predictor: Predictor) -> FastAPI:
    """The app: /predict per request, /readyz once warmed up."""
    state = {"status": "warming up"}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # In the background, as ours: /readyz answers 503 while the model warms up.
        async def warm() -> None:
            await asyncio.to_thread(warm_up, predictor)
            state["status"] = "ready"

        task = asyncio.create_task(warm())
        yield
        task.cancel()

    app = FastAPI(title="medimg peer: plain FastAPI", lifespan=lifespan)

    @app.post("/predict")
    def predict(file: list[UploadFile]) -> dict:
        """Decode the uploads and classify them in one model call."""
        return classify(predictor, [(upload.file.read(), upload.filename or "upload")
                                    for upload in file])

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        return JSONResponse({"status": state["status"], "model": predictor.identity},
                            status_code=200 if state["status"] == "ready" else 503)

    return app


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    uvicorn.run(create_app(load(args.model)), host=HOST, port=args.port, workers=1)


if __name__ == "__main__":
    main()
