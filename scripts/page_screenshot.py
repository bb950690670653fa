"""Screenshot the service's page answering real images with the default model, for the
README: a brain MRI slice and a breast H&E patch from sources the pipeline never reads, and
a photograph.

    python -m scripts.page_screenshot [--data DIR] [--out docs/images/serve-page.png]

Needs `dvc repro`'s models/ and Debian's chromium. DIR holds brain-tumor-mri/ and
breast-idc/ (default $MEDIMG_REAL_DATA, else ../shared/datasets); the photograph is
scikit-image's `rocket.jpg`.
"""

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

from medimg.evaluation.references import package_file
from medimg.io import atomic_path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update"]
READY_TIMEOUT_S = 120
IMAGES = ("brain-tumor-mri/Testing/no_tumor/image(1).jpg",
          "breast-idc/10253/1/10253_idx5_x801_y451_class1.png")
PHOTO = "skimage/data/rocket.jpg"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_ready(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"medimg serve exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    sys.exit(f"medimg serve not ready after {READY_TIMEOUT_S} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(
        os.environ.get("MEDIMG_REAL_DATA") or REPO.parent / "shared/datasets"))
    parser.add_argument("--out", type=Path, default=REPO / "docs/images/serve-page.png")
    args = parser.parse_args()
    files = [*(args.data / name for name in IMAGES), package_file(PHOTO)]
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        sys.exit(f"missing: {', '.join(missing)}; pass --data DIR")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "medimg", "serve", "--model",
                               str(REPO / "models"), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(url, server)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 900, "height": 700})
            page.goto(url)
            with page.expect_response(lambda response: "/predict" in response.url):
                page.get_by_test_id("files").set_input_files([str(path) for path in files])
            page.get_by_test_id("result").nth(len(files) - 1).wait_for()
            with atomic_path(args.out) as tmp:
                tmp.write_bytes(page.screenshot(full_page=True))
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
