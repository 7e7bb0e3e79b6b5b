#!/usr/bin/env bash
# A headless browser for the tests that look at pages as a person does: Debian's chromium.
#
# Usage: chromium.sh
#   Prints the path of the chromium binary. Installs Debian's chromium (and the DejaVu fonts, so
#   text is measured with real glyphs) when missing: CI machines start fresh; installing needs root.
set -euo pipefail

PACKAGES=(chromium fonts-dejavu-core)

if ! command -v chromium > /dev/null || ! fc-list 2> /dev/null | grep -q DejaVuSans; then
  [[ $(id -u) -eq 0 ]] || { echo "chromium.sh: chromium is missing and installing it needs root" >&2; exit 1; }
  LOG=$(mktemp)
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" > "$LOG" 2>&1 \
    || { apt-get update -q >> "$LOG" 2>&1 && apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >> "$LOG" 2>&1; } \
    || { tail -20 "$LOG" >&2; echo "chromium.sh: could not install ${PACKAGES[*]}" >&2; exit 1; }
  rm -f "$LOG"
fi
command -v chromium
