"""The classifier as a web service (FastAPI): `create_app(predictor, settings)`.

POST /predict takes images in the multipart field `file` (repeatable; `?gradcam=true`
adds a Grad-CAM overlay per classified image) and answers one result per file, or per
frame of a multi-frame DICOM, in upload order; a file that cannot be used gets an
`error` and the others are still classified. GET /healthz (the process is up), /readyz
(the model answered its warm-up call), /metrics (Prometheus), /docs, / (the page in
static/). Every response names the model in X-Model-* headers; /predict and /readyz also
carry the model's identity in the body.

Uploads never touch the disk and stop at their size limits (medimg.serving.uploads).
Overload is answered, not queued without end: past `max_in_flight` requests at once,
/predict answers 503 with Retry-After at once, before reading the body; a request that
has not been answered after `request_timeout_s` gets the same 503 and its images leave
the batch queue. /healthz, /readyz and /metrics are never refused.
"""

import asyncio
import base64
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    generate_latest,
)
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medimg.errors import UserError
from medimg.serving.batching import Arrival, DynamicBatcher
from medimg.serving.predictor import Frame, Predictor
from medimg.serving.uploads import FIELD, Upload, UploadLimits, read_uploads

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("medimg.serving.service")


@dataclass(frozen=True)
class Settings(UploadLimits):
    """Limits and batching of the service; serve.py's command-line defaults."""
    max_batch: int = 32  # images per model call; 1 = no dynamic batching
    max_wait_ms: float = 2.0  # how long a batch waits for more requests after its first
    model_calls: int = 2  # model calls at once
    max_in_flight: int = 64  # /predict requests at once; the next one gets 503
    request_timeout_s: float = 30.0  # a /predict request not answered by then gets 503


RETRY_AFTER_S = 1  # what a refused client is told to wait before it tries again
# Browser security headers on every response. The page loads only its own script and style;
# its thumbnails are blob: URLs, Grad-CAM overlays and the empty favicon data: URLs.
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                           "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
                    "Referrer-Policy": "no-referrer"}
# FastAPI's API pages load Swagger UI and ReDoc from a CDN: no policy of 'self' fits them.
CDN_PAGES = ("/docs", "/redoc")
NOT_STORED = ("/predict",)  # answers about a patient's images: no cache may keep them


class FileResult(BaseModel):
    file: str
    frame: int | None = None
    predicted: str | None = None
    probabilities: dict[str, float] | None = None
    in_distribution: bool | None = None  # false: flagged, not the training domain at all
    ood_verdict: Literal["familiar", "unfamiliar", "outside"] | None = None
    ood_score: float | None = None  # cosine distance to the k-th nearest training image
    validation_scoring_higher: float | None = None  # share of validation images above it
    error: str | None = None
    gradcam: str | None = None  # base64 PNG


class Predictions(BaseModel):
    model: dict
    results: list[FileResult]


UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": [FIELD],
    "properties": {FIELD: {"type": "array", "items": {"type": "string", "format": "binary"}}},
}}}}}
ERRORS = {400: {"description": "no file, too many files or a malformed body"},
          413: {"description": "a file or the request is over its size limit"},
          503: {"description": "the model is still warming up, the server is full "
                                "(Retry-After) or the request timed out (Retry-After)"}}


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self, identity: dict) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter("medimg_http_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=registry)
        self.errors = Counter("medimg_http_errors", "Requests answered with an error status, "
                              "by kind: client (4xx) or server (5xx)", ["endpoint", "kind"],
                              registry=registry)
        self.latency = Histogram("medimg_http_request_duration_seconds", "Time to answer",
                                 ["endpoint"], registry=registry)
        self.classified = Counter("medimg_images_classified", "Images (DICOM frames) classified",
                                  registry=registry)
        self.file_errors = Counter("medimg_file_errors", "Uploaded files (DICOM frames) that "
                                   "could not be classified", registry=registry)
        self.batch_size = Histogram("medimg_batch_size", "Images per model call",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
                                    registry=registry)
        Info("medimg_model", "The served model", registry=registry).info(
            {key: str(value) for key, value in identity.items()})

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)
        if status >= 400:
            self.errors.labels(endpoint, "client" if status < 500 else "server").inc()


def busy(reason: str) -> HTTPException:
    """503 with Retry-After: the client may try again shortly."""
    return HTTPException(503, reason, headers={"Retry-After": str(RETRY_AFTER_S)})


def identity_headers(identity: dict) -> dict[str, str]:
    return {"X-Model-Sha256": identity["sha256"], "X-Model-File": identity["file"],
            "X-Model-Backend": identity["backend"]}


def result(frame: Frame, prediction: dict | None) -> FileResult:
    return FileResult(file=frame.name, frame=frame.frame, error=frame.error,
                      **(prediction or {}))


class Service:
    """What the endpoints share: the predictor, its batcher, metrics and readiness."""

    def __init__(self, predictor: Predictor, settings: Settings) -> None:
        self.predictor, self.settings = predictor, settings
        self.metrics = Metrics(predictor.identity)
        self.batcher = DynamicBatcher(predictor.predict, settings.max_batch,
                                      settings.max_wait_ms / 1000, self.metrics.batch_size.observe,
                                      settings.model_calls)
        self.status = "warming up"
        self.in_flight = 0  # /predict requests being answered

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    async def warm_up(self) -> None:
        """One model call on a full batch of blank images, so that no request pays for the
        first call or for the memory the largest batch needs."""
        size = self.predictor.config.image_size
        blank = np.zeros((self.settings.max_batch, size, size, 3), np.uint8)
        try:
            await asyncio.to_thread(self.predictor.predict, blank)
        except Exception as err:  # stay up and say so on /readyz
            log.exception("warm-up failed")
            self.status = f"warm-up failed: {err}"
            return
        self.status = "ready"

    def decode(self, uploads: list[Upload]) -> list[Frame]:
        return [frame for upload in uploads
                for frame in self.predictor.decode(upload.data, upload.name)]

    async def classify(self, uploads: list[Upload], gradcam: bool,
                       arrival: Arrival) -> list[FileResult]:
        frames = await asyncio.to_thread(self.decode, uploads)
        usable = [frame for frame in frames if frame.pixels is not None]
        predictions = iter(await self.batcher.predict(np.stack([f.pixels for f in usable]),
                                                      arrival) if usable else [])
        results = [result(frame, next(predictions) if frame.pixels is not None else None)
                   for frame in frames]
        self.metrics.classified.inc(len(usable))
        self.metrics.file_errors.inc(len(frames) - len(usable))
        if gradcam:
            await self.add_gradcams(frames, results)
        return results

    async def add_gradcams(self, frames: list[Frame], results: list[FileResult]) -> None:
        classes = self.predictor.config.classes
        for frame, entry in zip(frames, results, strict=True):
            if entry.predicted is None:
                continue
            try:
                png = await asyncio.to_thread(self.predictor.gradcam_png, frame.pixels,
                                              classes.index(entry.predicted))
            except UserError as err:  # e.g. an ensemble: no one model to explain
                raise HTTPException(400, f"gradcam: {err}") from err
            entry.gradcam = base64.b64encode(png).decode("ascii")


def create_app(predictor: Predictor, settings: Settings | None = None) -> FastAPI:
    """The FastAPI app serving `predictor` (already loaded) with `settings`' limits."""
    service = Service(predictor, settings or Settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.batcher.start()
        # In the background: /healthz and /readyz (503) answer while the model warms up.
        warming = asyncio.create_task(service.warm_up())
        try:
            yield
        finally:
            warming.cancel()
            await service.batcher.stop()

    app = FastAPI(title="medimg classifier", lifespan=lifespan,
                  description="Brain MRI vs breast histopathology; see /docs for the API.")
    app.state.service = service
    app.add_middleware(Observer, service=service)
    add_routes(app, service)
    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")
    return app


def encoded(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode(), value.encode()) for name, value in headers.items()]


class Observer:
    """Plain ASGI middleware (no per-request Request/Response objects around the app):
    each response counted and timed in the metrics, by the route's template, and stamped
    with the model's identity headers and the browser security headers."""

    def __init__(self, app: ASGIApp, service: Service) -> None:
        self.app, self.metrics = app, service.metrics
        self.headers = encoded({**identity_headers(service.predictor.identity),
                                **SECURITY_HEADERS})
        self.policy = encoded({"Content-Security-Policy": CONTENT_SECURITY_POLICY})
        self.not_stored = encoded({"Cache-Control": "no-store"})

    def stamps(self, path: str) -> list[tuple[bytes, bytes]]:
        """The headers a response to PATH gets."""
        policy = [] if path.startswith(CDN_PAGES) else self.policy
        return [*self.headers, *policy, *(self.not_stored if path in NOT_STORED else [])]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500
        stamps = self.stamps(scope["path"])

        async def stamped(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), *stamps]
            await send(message)

        try:
            await self.app(scope, receive, stamped)
        finally:
            # The route's template, not the raw path: unknown paths must not make new series.
            endpoint = getattr(scope.get("route"), "path", "other")
            self.metrics.observe(endpoint, status, time.perf_counter() - started)


def add_routes(app: FastAPI, service: Service) -> None:
    identity = service.predictor.identity

    @app.post("/predict", response_model=Predictions, openapi_extra=UPLOAD_BODY,
              responses=ERRORS)
    async def predict(request: Request, gradcam: bool = False) -> Predictions:
        """Classify the images of the multipart field `file`, one result per file/frame."""
        if not service.ready:
            raise HTTPException(503, "the model is not ready yet; poll /readyz")
        if service.in_flight >= service.settings.max_in_flight:
            raise busy(f"the server is full ({service.settings.max_in_flight} requests in "
                       "flight); try again shortly")
        service.in_flight += 1
        arrival = service.batcher.arrival()  # a batch may wait for this request's images
        try:
            async with asyncio.timeout(service.settings.request_timeout_s):
                uploads = await read_uploads(request, service.settings)
                results = await service.classify(uploads, gradcam, arrival)
        except HTTPException:
            raise
        except TimeoutError as err:
            raise busy(f"not answered within {service.settings.request_timeout_s:g} s; try "
                       "again shortly") from err
        except Exception as err:  # e.g. the model call failed: this request, not the server
            log.exception("predict failed")
            raise HTTPException(500, f"could not classify: {err}") from err
        finally:
            arrival.close()
            service.in_flight -= 1
        return Predictions(model=identity, results=results)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "not ready yet"}})
    async def readyz() -> JSONResponse:
        return JSONResponse({"status": service.status, "model": identity},
                            status_code=200 if service.ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        if not (STATIC / "index.html").is_file():
            raise HTTPException(404, f"the page is missing: {STATIC / 'index.html'}")
        return FileResponse(STATIC / "index.html")
