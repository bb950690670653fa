#!/usr/bin/env bash
# The README's test command, set-up included, so that a fresh machine needs nothing else:
# Debian's chromium for the page's browser test (Playwright cannot download a browser of
# its own here), a virtual environment with the pinned requirements, then the fast tests
# and the end-to-end, DVC-feature and slow ones. `.ci/run` runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ]; then
  if ! command -v apt-get > /dev/null; then
    echo "scripts/test.sh: the page test needs Chromium at /usr/bin/chromium, and there is no apt-get to install it" >&2
    exit 1
  fi
  sudo=$([ "$(id -u)" -eq 0 ] || echo sudo)
  $sudo apt-get update -q
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
fi
python3 -m venv .venv
. .venv/bin/activate
pip install -r requirements.txt
python -m pytest
python -m pytest -m "e2e or dvc_features or slow"
