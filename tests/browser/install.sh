#!/usr/bin/env bash
# Dependencies of the browser test (tests/integration/test_temporal_ui.py), idempotent:
#   * Debian's `chromium` package (never a browser downloaded by a tool),
#   * Node.js >= 20 with npm (Debian's nodejs/npm when absent),
#   * playwright-core pinned by package-lock.json, installed with `npm ci` only when
#     node_modules does not match the lock file.
# Run by `make browser-deps` (a prerequisite of `make test`) and by the test itself.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
say() { echo "  browser        [$(date +%H:%M:%S)] $*"; }

apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "FAILED browser: missing Debian packages: $*" >&2
    echo "  fix: sudo apt-get update && sudo apt-get install -y --no-install-recommends $*" >&2
    exit 1
  fi
  say "installing Debian packages: $* (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  # A fresh VM's apt-daily may hold the lock for a while: wait for it, not fail.
  apt-get -o DPkg::Lock::Timeout=300 update -q
  apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "$@"
}

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium fonts-liberation)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  apt_install "${missing[@]}"
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
  echo "FAILED browser: playwright-core needs Node.js >= 20, found $(node --version)" >&2
  echo "  fix: install Node.js 20 or newer (e.g. Debian trixie's nodejs)" >&2
  exit 1
fi
say "chromium $(/usr/bin/chromium --version 2>/dev/null | awk '{print $2}'), node $(node --version)"

# npm ci only when the lock file changed since the last install.
stamp="$here/node_modules/.agora-lock.sha256"
want="$(sha256sum "$here/package-lock.json" | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  say "playwright-core up to date"
else
  say "npm ci (playwright-core from package-lock.json)"
  # --ignore-scripts: nothing may download a browser of its own.
  (cd "$here" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
  echo "$want" > "$stamp"
  say "playwright-core installed"
fi
