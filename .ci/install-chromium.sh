#!/usr/bin/env bash
# Install headless Chromium (Debian packages chromium + chromium-driver) for the report-rendering test.
# Idempotent: does nothing when both are present. Never fails the CI: when it cannot install (no apt-get,
# not root, no network), it says why and exits 0, and the browser test skips with that reason.
set -u

have() { command -v "$1" >/dev/null 2>&1; }

if have chromium && have chromedriver; then
    echo "install-chromium: chromium and chromedriver already installed"
    exit 0
fi
if ! have apt-get; then
    echo "install-chromium: no apt-get on this machine; the browser test will be skipped"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if have sudo && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "install-chromium: not root and no password-less sudo; the browser test will be skipped"
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get update -qq >/dev/null 2>&1; then
    echo "install-chromium: apt-get update failed (offline?); trying the cached package lists"
fi
if $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null 2>&1; then
    echo "install-chromium: installed $(chromium --version 2>/dev/null || echo chromium)"
else
    echo "install-chromium: apt-get install chromium chromium-driver failed; the browser test will be skipped"
fi
exit 0
