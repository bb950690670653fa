"""The web service (`medimg serve`: medimg.serving.service and .batching) on a tiny model."""

import asyncio
import base64
import hashlib
import io
import json
import os
import shutil
import struct
import tempfile
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import starlette.formparsers
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from conftest import REPO, header_values, picture, png, serve_py, wait_ready
from medimg.data.synthetic_exports import (
    identifiers,
    patient_slices,
    patients,
    write_multiframe,
    write_series,
)
from medimg.inference import ONNX_NAME, export_onnx, load_classifier
from medimg.params import load_params
from medimg.serving.batching import DynamicBatcher
from medimg.serving.predictor import Predictor, load_predictor
from medimg.serving.service import STATIC, Settings, create_app


@pytest.fixture(scope="module")
def model_dir(tiny_model) -> Path:
    return tiny_model  # read only here: the ONNX test exports into a copy


@pytest.fixture(scope="module")
def predictor(model_dir) -> Predictor:
    return load_predictor(model_dir, "torch")


@contextmanager
def serving(predictor: Predictor, **settings) -> Iterator[TestClient]:
    """A started app (lifespan run, warmed up) with these Settings."""
    with TestClient(create_app(predictor, Settings(**settings))) as client:
        wait_ready(client)
        yield client


@pytest.fixture(scope="module")
def client(predictor) -> Iterator[TestClient]:
    with serving(predictor) as started:
        yield started


def png_claiming(width: int, height: int) -> bytes:
    """A few hundred bytes whose PNG header claims width x height greyscale pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(bytes(width + 1))) + chunk(b"IEND", b""))


def alone(predictor: Predictor, data: bytes, name: str = "x.png") -> dict:
    """What the predictor answers for this one file, with no batching around it."""
    [frame] = predictor.decode(data, name)
    return predictor.predict(frame.pixels[None])[0]


def uploads(*files: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes]]]:
    return [("file", (name, data)) for name, data in files]


def assert_healthy(client: TestClient) -> None:
    answer = client.get("/healthz")
    assert answer.status_code == 200 and answer.json() == {"status": "ok"}


def labels(**values: str) -> tuple:
    return tuple(sorted(values.items()))


def metric_samples(text: str) -> dict:
    """{(sample name, sorted labels): value} of a /metrics page."""
    return {(sample.name, labels(**sample.labels)): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_health_and_readiness_name_the_served_model_file(client, model_dir) -> None:
    assert_healthy(client)
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    identity = ready.json()["model"]
    answer = client.post("/predict", files=uploads(("r.png", png(picture(1, True)))))
    assert answer.json()["model"] == identity
    assert identity["file"] == "model.safetensors" and identity["backend"] == "torch"
    assert identity["sha256"] == hashlib.sha256((model_dir / identity["file"]).read_bytes()
                                                ).hexdigest()
    for response in (ready, answer, client.get("/healthz"), client.get("/metrics")):
        assert response.headers["X-Model-Sha256"] == identity["sha256"]


def test_readyz_and_predict_answer_503_until_the_warm_up_has_run(predictor) -> None:
    app = create_app(predictor)
    cold = TestClient(app)  # not entered: the lifespan (batcher, warm-up) has not run
    assert cold.get("/readyz").status_code == 503
    assert cold.get("/readyz").json()["status"] == "warming up"
    refused = cold.post("/predict", files=uploads(("r.png", png(picture(1, True)))))
    assert refused.status_code == 503 and "/readyz" in refused.json()["detail"]
    assert_healthy(cold)
    with TestClient(app) as started:
        assert wait_ready(started)["model"] == predictor.identity


def test_each_file_gets_an_answer_in_upload_order_and_bad_files_an_error(client,
                                                                         predictor) -> None:
    red, grey = png(picture(11, True)), png(picture(12, False))
    cut = png(picture(13, True, size=300))
    files = [("red.png", red), ("notes.txt", b"not a picture"), ("grey.png", grey),
             ("cut.png", cut[:len(cut) // 2]), ("bomb.png", png_claiming(20_000, 20_000)),
             ("empty.png", b"")]
    answer = client.post("/predict", files=uploads(*files))
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["file"] for r in results] == [name for name, _ in files]
    by_name = {r["file"]: r for r in results}
    assert by_name["red.png"]["predicted"] == "red" and by_name["grey.png"]["predicted"] == "grey"
    for name, data in (("red.png", red), ("grey.png", grey)):
        expected = alone(predictor, data)
        assert by_name[name]["probabilities"] == pytest.approx(expected["probabilities"],
                                                               abs=1e-6)
        assert by_name[name]["error"] is None and by_name[name]["frame"] is None
    assert by_name["notes.txt"]["error"] == "not a recognised image"
    assert by_name["cut.png"]["error"].startswith("unreadable image")
    limit = load_params(REPO / "params.yaml").dedup.max_pixels
    assert by_name["bomb.png"]["error"] == f"too many pixels (20000x20000 > {limit})"
    assert by_name["empty.png"]["error"] == "empty file"
    for name in ("notes.txt", "cut.png", "bomb.png", "empty.png"):
        assert by_name[name]["predicted"] is None and by_name[name]["probabilities"] is None
    assert_healthy(client)


@pytest.fixture(scope="module")
def strict(predictor) -> Iterator[TestClient]:
    """A service with small limits: 3 files, 50 KiB a file, 100 KiB a request."""
    with serving(predictor, max_files=3, max_file_mb=50 / 1024, max_request_mb=100 / 1024) as c:
        yield c


def test_a_file_over_the_file_limit_is_413_naming_the_file_and_the_limit(strict) -> None:
    answer = strict.post("/predict", files=uploads(("small.png", png(picture(1, True))),
                                                   ("big.bin", os.urandom(60 * 1024))))
    assert answer.status_code == 413
    assert answer.json()["detail"] == "big.bin: larger than the 0.0488281 MB limit per file"
    assert_healthy(strict)


def multipart(*files: tuple[str, bytes]) -> tuple[bytes, dict]:
    """A multipart body and its Content-Type header, as httpx would send them."""
    request = httpx.Request("POST", "http://x/predict", files=uploads(*files))
    return request.read(), {"Content-Type": request.headers["Content-Type"]}


def test_a_request_over_the_request_limit_is_413_declared_or_streamed(strict) -> None:
    files = [(f"f{index}.bin", os.urandom(40 * 1024)) for index in range(3)]
    declared = strict.post("/predict", files=uploads(*files))
    body, headers = multipart(*files)
    # A generator body goes out chunked, without Content-Length: caught while it streams.
    streamed = strict.post("/predict", headers=headers,
                           content=(body[start:start + 8192]
                                    for start in range(0, len(body), 8192)))
    for answer in (declared, streamed):
        assert answer.status_code == 413
        assert answer.json()["detail"] == ("request body larger than the 0.0976562 MB limit "
                                           "per request")
    assert_healthy(strict)


def test_too_many_files_no_file_or_no_multipart_is_400(strict) -> None:
    image = png(picture(1, True))
    too_many = strict.post("/predict", files=uploads(*[(f"{i}.png", image) for i in range(4)]))
    assert too_many.status_code == 400
    assert too_many.json()["detail"] == "too many files: at most 3 per request"
    other_field = strict.post("/predict", files={"image": ("r.png", image)})
    assert other_field.status_code == 400
    assert other_field.json()["detail"] == "no file: send the images in the multipart field 'file'"
    not_multipart = strict.post("/predict", json={"file": "r.png"})
    assert not_multipart.status_code == 400
    assert "multipart/form-data" in not_multipart.json()["detail"]
    body, headers = multipart(("r.png", image))
    cut = strict.post("/predict", headers=headers, content=body[:-40])
    assert cut.status_code == 400 and cut.json()["detail"].startswith("malformed multipart")
    assert_healthy(strict)


def test_uploads_are_never_written_to_disk(client, predictor, monkeypatch) -> None:
    def no_disk(*args, **kwargs):
        raise AssertionError("an upload went to a temporary file")

    for module, name in ((tempfile, "SpooledTemporaryFile"), (tempfile, "TemporaryFile"),
                         (tempfile, "NamedTemporaryFile"), (tempfile, "mkstemp"),
                         (starlette.formparsers, "SpooledTemporaryFile")):
        monkeypatch.setattr(module, name, no_disk)
    # 3 MiB: Starlette's form parser would spool anything over 1 MiB to disk.
    red = png(picture(21, True))
    answer = client.post("/predict", files=uploads(("noise.bin", os.urandom(3 * 2**20)),
                                                   ("red.png", red)))
    assert answer.status_code == 200, answer.text
    noise, classified = answer.json()["results"]
    assert noise["error"] == "not a recognised image"
    assert classified["probabilities"] == pytest.approx(alone(predictor, red)["probabilities"],
                                                        abs=1e-6)


def test_gradcam_true_adds_a_png_overlay_to_each_classified_image(client) -> None:
    files = uploads(("red.png", png(picture(31, True))), ("notes.txt", b"text"))
    plain = client.post("/predict", files=files).json()["results"]
    explained = client.post("/predict", params={"gradcam": "true"}, files=files).json()["results"]
    assert [r["gradcam"] for r in plain] == [None, None]
    assert explained[1]["gradcam"] is None
    overlay = Image.open(io.BytesIO(base64.b64decode(explained[0]["gradcam"])))
    assert overlay.format == "PNG" and overlay.size == (32, 32)
    assert explained[0]["probabilities"] == plain[0]["probabilities"]


async def post_concurrently(app, images: list[bytes]) -> tuple[list[dict], str]:
    """Every image in a request of its own, all at once; the answers and /metrics."""
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=transport, base_url="http://service") as client:
        while (await client.get("/readyz")).status_code == 503:
            await asyncio.sleep(0.05)
        answers = await asyncio.gather(*(
            client.post("/predict", files=uploads((f"{index}.png", data)))
            for index, data in enumerate(images)))
        return [answer.json() for answer in answers], (await client.get("/metrics")).text


def shades_of_red(count: int) -> list[bytes]:
    """Pictures from grey to red, which the tiny model gives distinct probabilities."""
    pictures = [picture(40 + index, False).astype(int) for index in range(count)]
    for index, pixels in enumerate(pictures):
        pixels[..., 0] += 64 + 3 * index
    return [png(pixels.clip(0, 255).astype(np.uint8)) for pixels in pictures]


@pytest.mark.parametrize("max_batch", [8, 1])
def test_concurrent_clients_get_their_own_answers(predictor, max_batch) -> None:
    images = shades_of_red(16)
    expected = [alone(predictor, data)["probabilities"]["red"] for data in images]
    tolerance = 2e-6  # a batch may change the 6th decimal; a mix-up changes far more
    assert np.diff(sorted(expected)).min() > 10 * tolerance  # each answer names its image
    app = create_app(predictor, Settings(max_batch=max_batch, max_wait_ms=200))
    answers, metrics = asyncio.run(post_concurrently(app, images))
    for index, answer in enumerate(answers):
        [entry] = answer["results"]
        assert entry["file"] == f"{index}.png"
        assert entry["probabilities"]["red"] == pytest.approx(expected[index], abs=tolerance)
    samples = metric_samples(metrics)
    calls = samples[("medimg_batch_size_count", ())]
    single = samples[("medimg_batch_size_bucket", labels(le="1.0"))]
    assert samples[("medimg_batch_size_sum", ())] == len(images)
    if max_batch == 1:
        assert calls == single == len(images)
    else:
        assert single < calls < len(images)  # some model calls served several requests
        assert samples[("medimg_batch_size_bucket", labels(le="8.0"))] == calls


def test_metrics_count_requests_errors_and_files(predictor) -> None:
    with serving(predictor) as client:
        client.post("/predict", files=uploads(("r.png", png(picture(1, True))),
                                              ("t.txt", b"text")))
        client.post("/predict", files={"other": ("r.png", b"x")})
        client.get("/no/such/page")
        samples = metric_samples(client.get("/metrics").text)
    assert samples[("medimg_http_requests_total", labels(endpoint="/predict", status="200"))] == 1
    assert samples[("medimg_http_requests_total", labels(endpoint="/predict", status="400"))] == 1
    assert samples[("medimg_http_errors_total", labels(endpoint="/predict", kind="client"))] == 1
    assert samples[("medimg_http_requests_total", labels(endpoint="other", status="404"))] == 1
    assert samples[("medimg_images_classified_total", ())] == 1
    assert samples[("medimg_file_errors_total", ())] == 1
    assert samples[("medimg_http_request_duration_seconds_count", labels(endpoint="/predict"))] == 2
    identity = {key: str(value) for key, value in predictor.identity.items()}
    assert samples[("medimg_model_info", labels(**identity))] == 1


def test_the_onnx_backend_serves_the_exported_model(model_dir, predictor, tmp_path) -> None:
    folder = Path(shutil.copytree(model_dir, tmp_path / "model"))
    export_onnx(load_classifier(folder), folder / ONNX_NAME, opset=18)
    red = png(picture(61, True))
    with serving(load_predictor(folder, "onnx")) as client:
        identity = client.get("/readyz").json()["model"]
        [entry] = client.post("/predict", files=uploads(("red.png", red))).json()["results"]
    assert identity["backend"] == "onnx" and identity["file"] == ONNX_NAME
    assert identity["sha256"] == hashlib.sha256((folder / ONNX_NAME).read_bytes()).hexdigest()
    assert entry["probabilities"] == pytest.approx(alone(predictor, red)["probabilities"],
                                                   abs=1e-4)


def test_an_ensemble_is_served_but_gradcam_on_it_is_a_400(model_dir, tmp_path) -> None:
    for member in ("a", "b"):
        shutil.copytree(model_dir, tmp_path / member)
    (tmp_path / "ensemble.json").write_text(json.dumps({"members": ["a", "b"], "tta": False}))
    red = png(picture(62, True))
    with serving(load_predictor(tmp_path, "torch")) as client:
        plain = client.post("/predict", files=uploads(("red.png", red)))
        explained = client.post("/predict", params={"gradcam": "true"},
                                files=uploads(("red.png", red)))
        assert_healthy(client)
    assert plain.status_code == 200 and plain.json()["results"][0]["predicted"] == "red"
    assert plain.json()["model"]["file"] == "ensemble.json"
    assert explained.status_code == 400
    assert explained.json()["detail"] == "gradcam: Grad-CAM explains one model, not an ensemble"


def test_docs_and_the_page_are_served(client) -> None:
    assert client.get("/docs").status_code == 200
    upload = client.get("/openapi.json").json()["paths"]["/predict"]["post"]["requestBody"]
    assert "file" in upload["content"]["multipart/form-data"]["schema"]["properties"]
    page = client.get("/")
    assert page.status_code == 200, f"{STATIC / 'index.html'}: {page.text}"
    assert page.headers["content-type"].startswith("text/html")
    assert page.content == (STATIC / "index.html").read_bytes()
    assert client.get("/static/index.html").content == page.content


def test_every_response_carries_the_browser_security_headers(client) -> None:
    answers = {path: client.get(path) for path in ("/", "/static/app.js", "/healthz",
                                                   "/readyz", "/metrics", "/openapi.json",
                                                   "/docs", "/no-such-page")}
    answers["/predict"] = client.post("/predict", files=uploads(("r.png", png(picture(1, True)))))
    for path, answer in answers.items():
        assert answer.headers["X-Content-Type-Options"] == "nosniff", path
        assert answer.headers["X-Frame-Options"] == "DENY", path
        assert answer.headers["Referrer-Policy"] == "no-referrer", path
        policy = answer.headers.get("Content-Security-Policy")
        if path == "/docs":  # Swagger UI comes from a CDN: no 'self' policy fits it
            assert policy is None
        else:
            assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy, path
        assert ("no-store" in answer.headers.get("Cache-Control", "")) == (path == "/predict")


def test_serve_py_answers_over_loopback(model_dir, tmp_path) -> None:
    with serve_py(model_dir, tmp_path / "serve.log", "--backend", "torch",
                  "--max-batch", "4") as served, httpx.Client(base_url=served.url,
                                                               timeout=10) as http:
        identity = wait_ready(http)["model"]
        answer = http.post("/predict", files=uploads(("r.png", png(picture(71, True)))))
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == identity
        assert answer.json()["results"][0]["predicted"] == "red"


def test_no_dicom_header_value_reaches_a_response_the_page_metrics_or_the_log(
        model_dir, tmp_path) -> None:
    people = patients(2, ("tumour", "normal"))
    single = write_series(tmp_path / "series", people[0], 0, patient_slices(people[0], 1))[0]
    multi = tmp_path / "volume.dcm"
    write_multiframe(multi, people[1], 0, patient_slices(people[1], 3))
    planted = header_values(tmp_path)
    assert len(planted) >= 2 * len(identifiers(0))
    log = tmp_path / "serve.log"
    with serve_py(model_dir, log, "--backend", "torch") as served, httpx.Client(
            base_url=served.url, timeout=30) as http:
        wait_ready(http)
        answer = http.post("/predict", files=uploads(("IM0000", single.read_bytes()),
                                                     ("volume.dcm", multi.read_bytes())))
        assert answer.status_code == 200, answer.text
        results = answer.json()["results"]
        assert [r["frame"] for r in results] == [None, 0, 1, 2]
        assert all(r["error"] is None for r in results)
        shown = answer.text + http.get("/").text + http.get("/metrics").text
    shown += log.read_text()
    assert [value for value in planted if value in shown] == []


class Echo:
    """A stand-in model that answers each image with its first pixel value and records
    the size of every call."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.calls: list[int] = []
        self.fail_on = fail_on

    def __call__(self, images: np.ndarray) -> list[int]:
        self.calls.append(len(images))
        values = [int(image.flat[0]) for image in images]
        if self.fail_on in values:
            raise RuntimeError(f"cannot classify {self.fail_on}")
        return values


def images_of(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.uint8).reshape(-1, 1, 1, 1) * np.ones((1, 2, 2, 3),
                                                                            np.uint8)


async def batched(model: Echo, requests: list[tuple[int, ...]], max_batch: int,
                  max_wait_s: float = 0.1) -> list:
    sizes: list[int] = []
    batcher = DynamicBatcher(model, max_batch, max_wait_s, sizes.append)
    batcher.start()
    try:
        return await asyncio.gather(*(batcher.predict(images_of(*values))
                                      for values in requests), return_exceptions=True)
    finally:
        await batcher.stop()
        assert sizes == model.calls


def test_batcher_answers_go_to_the_right_caller() -> None:
    requests = [(index, index + 100) for index in range(10)] + [(200, 201, 202, 203, 204)]
    model = Echo()
    answers = asyncio.run(batched(model, requests, max_batch=4))
    assert answers == [list(values) for values in requests]
    assert max(model.calls) == 4 and sum(model.calls) == 25  # five images: split over calls
    assert len(model.calls) < 25


def test_batcher_with_max_batch_1_calls_the_model_per_image() -> None:
    model = Echo()
    answers = asyncio.run(batched(model, [(1,), (2, 3), (4,)], max_batch=1))
    assert answers == [[1], [2, 3], [4]] and model.calls == [1, 1, 1, 1]


def test_a_failed_model_call_fails_only_the_requests_of_its_batch() -> None:
    model = Echo(fail_on=13)
    answers = asyncio.run(batched(model, [(13,), (1,), (2,), (3,)], max_batch=2))
    assert model.calls == [2, 2]
    assert all(isinstance(answer, RuntimeError) for answer in answers[:2])
    assert answers[2:] == [[2], [3]]  # the next batch, after the failure


def test_the_batcher_keeps_serving_after_a_failed_call() -> None:
    model = Echo(fail_on=13)
    answers = asyncio.run(batched(model, [(13,), (5,), (6,)], max_batch=1))
    assert isinstance(answers[0], RuntimeError) and answers[1:] == [[5], [6]]


class Meeting:
    """A stand-in model whose calls return only once `count` of them are running at once
    (or fail after `timeout` seconds)."""

    def __init__(self, count: int, timeout: float = 5.0) -> None:
        self.barrier = threading.Barrier(count, timeout=timeout)

    def __call__(self, images: np.ndarray) -> list[int]:
        self.barrier.wait()
        return [int(image.flat[0]) for image in images]


async def with_batcher(model, calls: int, work) -> list:
    batcher = DynamicBatcher(model, 1, 0.0, calls=calls)
    batcher.start()
    try:
        return await work(batcher)
    finally:
        await batcher.stop()


def test_two_model_calls_run_at_once_when_calls_allows_two() -> None:
    async def two(batcher: DynamicBatcher) -> list:
        return await asyncio.gather(batcher.predict(images_of(1)), batcher.predict(images_of(2)))

    assert asyncio.run(with_batcher(Meeting(2), 2, two)) == [[1], [2]]
    with pytest.raises(threading.BrokenBarrierError):  # one at a time: they never meet
        asyncio.run(with_batcher(Meeting(2, timeout=0.5), 1, two))


def test_stopping_fails_the_requests_of_a_running_model_call() -> None:
    release = threading.Event()

    def model(images: np.ndarray) -> list[int]:
        release.wait(5)
        return [0] * len(images)

    async def stopped(batcher: DynamicBatcher) -> None:
        waiting = asyncio.create_task(batcher.predict(images_of(7)))
        await asyncio.sleep(0.2)  # the call is running in its thread
        await batcher.stop()
        release.set()  # the abandoned call's thread may finish now
        await waiting

    with pytest.raises(RuntimeError, match="shutting down"):
        asyncio.run(with_batcher(model, 2, stopped))
