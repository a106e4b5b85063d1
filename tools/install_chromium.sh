#!/usr/bin/env bash
# Install Debian's headless Chromium and ChromeDriver for the report's browser test (tests/test_report_browser.py).
#
# Recommended packages are kept: they bring the fonts headless pages are drawn with.
# Idempotent: does nothing when /usr/bin/chromium and /usr/bin/chromedriver are already there. Needs root (or sudo) and
# apt; on a machine without apt it explains what to install and exits 1. Prints the installed version.
set -euo pipefail

say() { echo "[install-chromium] $*"; }

if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
    say "already installed: $(/usr/bin/chromium --version 2>/dev/null || echo chromium)"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    say "ERROR: apt-get not found. Install Chromium (a 'chromium' binary on PATH) by other means to run the browser test." >&2
    exit 1
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        say "ERROR: root or sudo is needed to install the Debian packages chromium and chromium-driver." >&2
        exit 1
    fi
fi

start=$(date +%s)
export DEBIAN_FRONTEND=noninteractive
# A stale package index makes the install fail with 404s; refresh it only when the packages are not found.
if ! apt-cache show chromium chromium-driver >/dev/null 2>&1; then
    $SUDO apt-get update -q
fi
if ! $SUDO apt-get install -y -q chromium chromium-driver; then
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q chromium chromium-driver
fi
say "installed $(/usr/bin/chromium --version 2>/dev/null) in $(( $(date +%s) - start )) s"
