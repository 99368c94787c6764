#!/usr/bin/env bash
# Install (idempotently) the headless browser the dashboard's end-to-end tests drive: Debian's
# own `chromium` package, never a browser build downloaded by `playwright install` (nothing
# can be downloaded at run time). Prints the export the tests read to find the binary.
#
#   scripts/browser.sh install   install chromium if missing, print TRIFECTA_TEST_CHROMIUM
#   scripts/browser.sh env       print TRIFECTA_TEST_CHROMIUM for an installed chromium
set -euo pipefail

log() { echo "browser: $*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root to install Debian packages ($*)"; exit 1; fi
}

chromium_bin() {
  local b
  for b in chromium chromium-browser; do
    command -v "$b" >/dev/null && { command -v "$b"; return; }
  done
  return 1
}

install_chromium() {
  chromium_bin >/dev/null && return
  log "installing chromium (Debian package)"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || {
    as_root apt-get update -q >/dev/null
    as_root apt-get install -y -q --no-install-recommends chromium >/dev/null
  }
}

print_env() {
  local bin
  bin=$(chromium_bin) || { log "chromium is not installed: run $0 install"; exit 1; }
  echo "export TRIFECTA_TEST_CHROMIUM=$bin"
}

case "${1:-install}" in
  install) install_chromium; print_env ;;
  env) print_env ;;
  *) echo "usage: $0 install|env" >&2; exit 2 ;;
esac
