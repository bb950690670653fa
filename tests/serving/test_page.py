"""The page for people (issue #17) in a real browser: Debian's chromium, driven by Playwright,
talks to the real server (`medimg serve`) serving a tiny red-or-grey model with an
out-of-distribution detector built on its pictures."""

import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from unittest.mock import ANY

import numpy as np
import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright
from skimage import data

from conftest import CHROMIUM, TINY_CLASSES, Pictures, picture, png, serve_py
from medimg.data.prepared import resize_square
from medimg.evaluation.ood import build_detector
from medimg.inference import load_classifier
from medimg.params import OodParams

# Offline and quiet: no sandbox (CI runs as root), no GPU, no calls home.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MAX_FILES = 5


@pytest.fixture(scope="module")
def model_dir(tiny_model, tmp_path_factory) -> Path:
    """The tiny model with a detector built as the ood stage builds one (its pictures as the
    reference), its boundaries then moved between the uploads' distances, so that the page
    shows all three verdicts: the red and grey pictures familiar, the pinkish one
    unfamiliar, the photo outside."""
    folder = Path(shutil.copytree(tiny_model, tmp_path_factory.mktemp("page") / "model"))
    classifier = load_classifier(folder)
    pictures = Pictures(32)
    val = np.stack([picture(100 + index, bool(index % 2), 32) for index in range(16)])
    uploads = np.stack([resize_square(image, classifier.config.image_size,
                                      classifier.config.resize)
                        for image in (picture(7, True), tinted(9, 90), picture(8, False),
                                      PHOTO)])
    train, val, uploads = (classifier.predict_with_features(images, 64)[1]
                           for images in (pictures.images.numpy(), val, uploads))
    settings = OodParams(k_candidates=[1], accept_share=1.0, familiar_share=1.0,
                         domain="a red or grey picture", reference_size=4096, jitter_copies=0,
                         outlier_images=2, batch_size=64)
    detector = build_detector(train, val, {"val": val}, 1, settings, seed=0)
    red, pinkish, grey, photo = detector.score(uploads)
    assert max(red, grey) < pinkish < photo, "the tiny model no longer ranks the uploads"
    replace(detector, familiar=float(max(red, grey)) + 1e-6,
            threshold=float(pinkish + photo) / 2).save(folder)
    return folder


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("server") / "serve.log"
    with serve_py(model_dir, log, "--backend", "torch", "--max-files", str(MAX_FILES)) as served:
        yield served.url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium "
                    "(sudo apt-get install chromium)", pytrace=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server) -> Iterator[Page]:
    page = browser.new_page(viewport={"width": 900, "height": 700})
    script_errors: list[Exception] = []
    page.on("pageerror", lambda error: script_errors.append(error))
    # The server's Content-Security-Policy must not block anything the page does
    # (thumbnails from blob: URLs, Grad-CAM overlays from data: URLs).
    refused: list[str] = []
    page.on("console", lambda message: refused.append(message.text)
            if "Content Security Policy" in message.text else None)
    answer = page.goto(server)
    assert "default-src 'self'" in answer.headers["content-security-policy"]
    yield page
    page.close()
    assert script_errors == [], "the page's JavaScript failed"
    assert refused == [], "the page broke its own Content-Security-Policy"


def upload(name: str, content: bytes) -> dict:
    return {"name": name, "mimeType": "image/png", "buffer": content}


def tinted(seed: int, red: int) -> np.ndarray:
    """A grey picture with RED added to its red channel: about 90 leaves the tiny model unsure."""
    pixels = picture(seed, False).astype(np.int16)
    pixels[..., 0] += red
    return pixels.astype(np.uint8)


PHOTO = resize_square(data.astronaut(), 40, "squash")  # neither red nor grey noise
PICTURES_AND_A_BROKEN_FILE = [upload("red.png", png(picture(7, True))),
                              upload("pinkish.png", png(tinted(9, 90))),
                              upload("grey.png", png(picture(8, False))),
                              upload("astronaut.png", png(PHOTO)),
                              upload("broken.png", b"not an image")]


def choose_files(page: Page, files: list[dict]) -> dict:
    """Pick FILES in the page; return the server's JSON answer to the page's request."""
    with page.expect_response(lambda response: "/predict" in response.url) as answer:
        page.get_by_test_id("files").set_input_files(files)
    return answer.value.json()


def shown_fraction(bar: Locator) -> float:
    fill = bar.get_by_test_id("probability-fill").bounding_box()
    track = bar.locator(".track").bounding_box()
    return fill["width"] / track["width"]


def decoded_width(image: Locator) -> int:
    """The image's width in pixels once the browser has decoded it (fails if it cannot)."""
    return image.evaluate("image => image.decode().then(() => image.naturalWidth)")


def unusual(share: float) -> str:
    """How the warning ranks an image against the validation images."""
    if share == 0:
        return "none of its validation images looks less like them"
    return f"only {share:.1%} of its validation images look less like them"


def verdict_text(entry: dict, trained: str) -> str:
    """What the page says of an image, by the detector's verdict."""
    if entry["ood_verdict"] == "familiar":
        return f"Looks like {trained}."
    rank = unusual(entry["validation_scoring_higher"])
    if entry["ood_verdict"] == "unfamiliar":
        return f"Unlike {trained} ({rank}): check the image before trusting the prediction."
    return f"Not a red or grey picture at all ({rank}): its prediction means nothing."


def bar_opacity(card: Locator) -> float:
    """How opaque the card's probability bars are drawn (1: not greyed out)."""
    return float(card.get_by_test_id("probability").first.evaluate(
        "bar => getComputedStyle(bar).opacity"))


def assert_card_shows(card: Locator, entry: dict) -> None:
    expect(card.get_by_test_id("file-name")).to_have_text(entry["file"])
    expect(card.get_by_test_id("predicted")).to_have_text(entry["predicted"])
    expect(card.get_by_test_id("probability")).to_have_count(len(TINY_CLASSES))
    for name in TINY_CLASSES:
        bar = card.locator(f'[data-testid="probability"][data-class="{name}"]')
        probability = entry["probabilities"][name]
        expect(bar.get_by_test_id("probability-value")).to_have_text(f"{probability:.1%}")
        assert shown_fraction(bar) == pytest.approx(probability, abs=0.01), (entry["file"], name)
    thumbnail = card.locator("img[data-testid=thumb]")
    assert decoded_width(thumbnail) == 40  # drawn from the local file, not fetched


def test_each_picture_shows_its_class_and_bars_and_a_broken_file_its_error(page: Page) -> None:
    answer = choose_files(page, PICTURES_AND_A_BROKEN_FILE)
    *pictures, broken = answer["results"]
    assert [entry["predicted"] for entry in answer["results"]] == ["red", ANY, "grey", ANY, None]
    cards = page.get_by_test_id("result")
    expect(cards).to_have_count(len(PICTURES_AND_A_BROKEN_FILE))
    for index, entry in enumerate(pictures):
        assert_card_shows(cards.nth(index), entry)
    assert broken["error"]
    broken_card = cards.nth(len(pictures))
    expect(broken_card.get_by_test_id("file-error")).to_have_text(broken["error"])
    expect(broken_card.get_by_test_id("probability")).to_have_count(0)
    expect(broken_card.get_by_test_id("thumb")).to_have_text("no preview")
    # Every classified card says what the detector made of it, in words; the photo is
    # flagged, and only its probabilities are greyed out.
    verdicts = [entry["ood_verdict"] for entry in pictures]
    assert verdicts == ["familiar", "unfamiliar", "familiar", "outside"]
    assert [entry["in_distribution"] for entry in pictures] == [True, True, True, False]
    trained = "the grey and red images this model was trained on"
    for index, entry in enumerate(pictures):
        verdict = cards.nth(index).get_by_test_id("ood-verdict")
        expect(verdict).to_have_attribute("data-verdict", entry["ood_verdict"])
        expect(verdict).to_have_text(verdict_text(entry, trained))
        assert (bar_opacity(cards.nth(index)) < 1.0) == (entry["ood_verdict"] == "outside")
    expect(cards.nth(3).get_by_test_id("ood-verdict")).to_have_text(
        f"Not a red or grey picture at all ({unusual(pictures[3]['validation_scoring_higher'])}): "
        "its prediction means nothing.")
    expect(page.get_by_test_id("heading")).to_have_text("grey or red?")
    expect(page).to_have_title("grey or red?")
    expect(page.get_by_test_id("model-sha")).to_have_text(answer["model"]["sha256"][:12])
    expect(page.get_by_test_id("model")).to_contain_text(", ".join(TINY_CLASSES))


def test_ticking_grad_cam_adds_an_overlay_to_each_classified_picture(page: Page) -> None:
    choose_files(page, PICTURES_AND_A_BROKEN_FILE)
    expect(page.get_by_test_id("result")).to_have_count(len(PICTURES_AND_A_BROKEN_FILE))
    expect(page.get_by_test_id("gradcam")).to_have_count(0)
    with page.expect_response(lambda response: "gradcam=true" in response.url):
        page.get_by_label("Show Grad-CAM").check()
    overlays = page.get_by_test_id("gradcam")
    expect(overlays).to_have_count(4)
    assert all(decoded_width(overlays.nth(index)) > 0 for index in range(4))
    expect(page.get_by_test_id("file-error")).to_have_count(1)


def test_a_refused_request_shows_the_servers_reason_in_one_place(page: Page) -> None:
    too_many = [upload(f"grey{index}.png", png(picture(index, False)))
                for index in range(MAX_FILES + 1)]
    answer = choose_files(page, too_many)
    expect(page.get_by_test_id("request-error")).to_have_text(answer["detail"])
    expect(page.get_by_test_id("result")).to_have_count(0)
