#!/usr/bin/env bash
# The report test (tests/test_report.py) opens the HTML report in a real headless browser.
# `make test` runs this first so that a fresh Debian / Ubuntu machine passes as it is:
# Debian's chromium is installed with apt-get when it is missing (as root, or with sudo).
# SEGQC_SKIP_BROWSER=1 skips the browser tests on purpose, and this script with them.
set -euo pipefail
if [ "${SEGQC_SKIP_BROWSER:-0}" = "1" ]; then
    exit 0
fi
for b in chromium chromium-browser; do
    if command -v "$b" > /dev/null; then
        exit 0
    fi
done
if [ "$(id -u)" = "0" ]; then
    SUDO=""
elif command -v sudo > /dev/null && sudo -n true 2> /dev/null; then
    SUDO="sudo -n"
else
    echo "segqc: the report test needs Debian's chromium; install it (sudo apt-get install chromium)" \
         "or run with SEGQC_SKIP_BROWSER=1 to skip the browser tests" >&2
    exit 1
fi
if ! command -v apt-get > /dev/null; then
    echo "segqc: no chromium and no apt-get here; install chromium with your package manager" \
         "or run with SEGQC_SKIP_BROWSER=1" >&2
    exit 1
fi
echo "segqc: installing chromium for the report test (apt-get, once)"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium > /dev/null
command -v chromium > /dev/null
