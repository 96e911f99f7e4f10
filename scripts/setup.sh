#!/usr/bin/env bash
# Install everything hdlm needs on a fresh Debian/Ubuntu machine with Python >= 3.10:
# the Python documentation sources (the default `pydocs` corpus), headless Chromium and its
# driver (the browser test of `hdlm serve`; it skips without them) and the package itself.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d /usr/share/doc/python3.11-doc/html/_sources ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq python3.11-doc >/dev/null \
      || echo "setup: could not install python3.11-doc; pydocs falls back to a small corpus" >&2
  else
    echo "setup: run 'sudo apt-get install python3.11-doc' for the full pydocs corpus" >&2
  fi
fi

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null \
      || echo "setup: could not install chromium; the browser test of hdlm serve skips" >&2
  else
    echo "setup: run 'sudo apt-get install chromium chromium-driver' for the browser test" >&2
  fi
fi

PYTHON=${PYTHON:-python3}
# torch first and pinned: an unpinned torch would pull gigabytes of CUDA wheels
"$PYTHON" -m pip install -q --disable-pip-version-check "torch==2.13.0"
"$PYTHON" -m pip install -q --disable-pip-version-check -e ".[dev]"
