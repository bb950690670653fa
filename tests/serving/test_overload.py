"""Overload: the cap on requests in flight, the per-request timeout and the graceful
shutdown of `medimg serve`, over loopback against a real server process."""

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import picture, png, serve_py
from medimg.serving.predictor import Predictor, load_predictor
from medimg.serving.service import RETRY_AFTER_S, Settings, create_app

CAP = 4
BOUNDARY = "overload-test-boundary"
HEADERS = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
# A burst carries 4 x CAP uploads of 3 MB. Were each burst to keep what it held until the
# garbage collector's next full pass (as a reference cycle once did: +60 MB over 8
# bursts), resident memory would climb past its idle level by more than this. The
# allocator's slack stays under it: it steps up and then stays (on an AMD EPYC, 30
# bursts after the first: 853 MB, then 857-863, then 869-876 from the 13th on), and a
# step after the idle reading reached +33 MB in 2 of 8 runs of tests/serving.
BURSTS = 16
MEMORY_SLACK_MB = 45


@pytest.fixture(scope="module")
def model_dir(tiny_model) -> Path:
    return tiny_model


def multipart(data: bytes, name: str = "burst.png") -> bytes:
    return (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{name}"\r\nContent-Type: image/png\r\n\r\n').encode() + data + \
        f"\r\n--{BOUNDARY}--\r\n".encode()


async def slowly(body: bytes, seconds: float) -> AsyncIterator[bytes]:
    """The body in two halves, `seconds` apart: a request that holds its slot that long."""
    yield body[:len(body) // 2]
    await asyncio.sleep(seconds)
    yield body[len(body) // 2:]


def resident_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def assert_answered_or_refused(answers: list[httpx.Response]) -> None:
    """Every request got a classification or a 503 that says when to come back."""
    for answer in answers:
        assert answer.status_code in (200, 503), answer.text
        if answer.status_code == 200:
            assert [entry["error"] for entry in answer.json()["results"]] == [None]
        else:
            assert answer.headers["retry-after"] == str(RETRY_AFTER_S)


async def burst(url: str, body: bytes, held: int, count: int) -> list[httpx.Response]:
    """`held` requests whose bodies take half a second (they hold their slots), then,
    while they do, `count - held` requests at once; every answer, in that order."""
    async with httpx.AsyncClient(base_url=url, timeout=30,
                                 limits=httpx.Limits(max_connections=count)) as http:
        holders = [asyncio.create_task(http.post("/predict", content=slowly(body, 0.5),
                                                 headers=HEADERS)) for _ in range(held)]
        await asyncio.sleep(0.2)
        rest = await asyncio.gather(*(http.post("/predict", content=body, headers=HEADERS)
                                      for _ in range(count - held)))
        return [*await asyncio.gather(*holders), *rest]


def test_a_burst_of_four_times_the_cap_is_answered_or_refused_and_memory_returns_to_idle(
        model_dir, tmp_path) -> None:
    big = multipart(png(np.random.default_rng(0).integers(0, 255, (1024, 1024, 3),
                                                          dtype=np.uint8)))
    with serve_py(model_dir, tmp_path / "serve.log", "--backend", "torch",
                  "--max-in-flight", str(CAP), "--max-batch", str(CAP)) as served:
        # Held slots: exactly CAP answers, and every request past them refused.
        answers = asyncio.run(burst(served.url, big, CAP, 4 * CAP))
        assert_answered_or_refused(answers)
        assert [answer.status_code for answer in answers] == [200] * CAP + [503] * 3 * CAP
        assert "server is full (4 requests in flight)" in answers[-1].json()["detail"]
        # Bursts as they come: all at once, each taken or refused by the server's timing.
        # Two fill the allocator's pools; the idle level is what is resident after them.
        for round in range(2 + BURSTS):
            if round == 2:
                idle = resident_mb(served.process.pid)
            answers = asyncio.run(burst(served.url, big, 0, 4 * CAP))
            assert_answered_or_refused(answers)
            assert any(answer.status_code == 200 for answer in answers)
        assert served.process.poll() is None
        assert httpx.get(f"{served.url}/healthz").status_code == 200
        assert resident_mb(served.process.pid) < idle + MEMORY_SLACK_MB


class SlowModel(Predictor):
    """The tiny model behind a model call that takes `seconds`."""

    def __init__(self, predictor: Predictor, seconds: float) -> None:
        super().__init__(predictor.model_dir, predictor.classifier, predictor.detector,
                         predictor.identity)
        self.seconds, self.calls = seconds, 0

    def predict(self, images: np.ndarray) -> list[dict]:
        self.calls += 1
        time.sleep(self.seconds)
        return super().predict(images)


async def post_after_warm_up(app, files: list[bytes]) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=transport, base_url="http://test", timeout=30) as http:
        while (await http.get("/readyz")).status_code != 200:
            await asyncio.sleep(0.05)
        return await asyncio.gather(*(http.post("/predict", files=[("file", ("x.png", data))])
                                      for data in files))


def test_a_request_not_answered_in_time_gets_503_and_its_images_leave_the_queue(
        model_dir) -> None:
    model = SlowModel(load_predictor(model_dir, "torch"), 1.0)
    app = create_app(model, Settings(max_batch=1, model_calls=1, request_timeout_s=0.5))
    answers = asyncio.run(post_after_warm_up(app, [png(picture(seed, True))
                                                   for seed in range(3)]))
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert answer.headers["retry-after"] == str(RETRY_AFTER_S)
        assert "not answered within 0.5 s" in answer.json()["detail"]
    # The warm-up, then the first request's call: the two queued behind it had timed out.
    assert model.calls == 2


def test_shutdown_finishes_the_requests_it_accepted(model_dir, tmp_path) -> None:
    body = multipart(png(picture(5, True)))

    async def interrupted(served) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:
            accepted = [asyncio.create_task(http.post("/predict", content=slowly(body, 1.0),
                                                      headers=HEADERS)) for _ in range(CAP)]
            await asyncio.sleep(0.3)
            served.process.send_signal(signal.SIGTERM)
            return await asyncio.gather(*accepted)

    with serve_py(model_dir, tmp_path / "serve.log", "--backend", "torch") as served:
        answers = asyncio.run(interrupted(served))
        assert [answer.status_code for answer in answers] == [200] * CAP
        assert all(answer.json()["results"][0]["predicted"] == "red" for answer in answers)
        # uvicorn raises the signal again once it has shut down: the exit status says who
        # stopped it.
        assert served.process.wait(timeout=30) == -signal.SIGTERM
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{served.url}/healthz")
