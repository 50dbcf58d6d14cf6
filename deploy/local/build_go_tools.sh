#!/usr/bin/env bash
# Build Agora's Go-based observability binaries from the Go module proxy:
#   <cache_dir>/bin/otelcol-agora   OpenTelemetry Collector built by ocb from
#                                   deploy/otelcol/builder-config.yaml
#   <cache_dir>/bin/jaeger          Jaeger v2 (itself a collector distribution)
#
# Usage: build_go_tools.sh <cache_dir>
#
# Idempotent: each binary has a stamp file (<cache_dir>/stamps/*.stamp) holding
# the manifest hash / version and the Go version; when the binary exists and
# the stamp matches, the step prints "cached" and does nothing.
# Verbose go output goes to <cache_dir>/logs/*.log; a heartbeat line is printed
# every ~15 s. GOMODCACHE / GOCACHE stay at Go's defaults (shared across clones).
# Env overrides: OCB_VERSION, JAEGER_VERSION, AGORA_GO_HEARTBEAT (seconds).
set -euo pipefail

OCB_VERSION="${OCB_VERSION:-v0.165.0}"        # must match the core modules in the manifest
JAEGER_VERSION="${JAEGER_VERSION:-v1.76.0}"
HEARTBEAT="${AGORA_GO_HEARTBEAT:-15}"

if [[ $# -ne 1 || -z "$1" ]]; then
  echo "usage: $0 <cache_dir>" >&2
  exit 2
fi

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"
MANIFEST="$REPO_ROOT/deploy/otelcol/builder-config.yaml"

mkdir -p "$1"
CACHE_DIR="$(cd "$1" && pwd)"
BIN_DIR="$CACHE_DIR/bin"
LOG_DIR="$CACHE_DIR/logs"
STAMP_DIR="$CACHE_DIR/stamps"
SRC_DIR="$CACHE_DIR/src"
GOTOOLS_DIR="$CACHE_DIR/gotools"
mkdir -p "$BIN_DIR" "$LOG_DIR" "$STAMP_DIR" "$SRC_DIR" "$GOTOOLS_DIR"

log() { printf '[build_go_tools %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# Another clone may be building into this shared cache: wait for it. The stamps are
# read only below, with the lock held, so what it finished is found cached.
mkdir -p "$CACHE_DIR/locks"
exec {CACHE_LOCK}>"$CACHE_DIR/locks/build_go_tools.lock"
flock -n "$CACHE_LOCK" || { log "waiting for another build into $CACHE_DIR"; flock "$CACHE_LOCK"; }

if ! command -v go >/dev/null 2>&1; then
  log "ERROR: 'go' is not on PATH. Install Go >= 1.24 (e.g. from the Go toolchain packages) and retry."
  exit 1
fi
[[ -f "$MANIFEST" ]] || { log "ERROR: manifest not found: $MANIFEST"; exit 1; }

GO_VERSION="$(go env GOVERSION)"
# Keep any GOFLAGS already configured (e.g. -buildvcs=false) and add -mod=mod.
BASE_GOFLAGS="$(go env GOFLAGS)"
export CGO_ENABLED="${CGO_ENABLED:-0}"

sha256() { sha256sum "$@" | awk '{print $1}'; }
# Hash of the manifest ignoring comment-only and blank lines, so editing
# comments does not trigger a rebuild.
manifest_hash() { grep -Ev '^[[:space:]]*(#|$)' "$1" | sha256sum | awk '{print $1}'; }

# shellcheck source=deploy/local/run_step.sh
. "$(dirname "${BASH_SOURCE[0]}")/run_step.sh"

# ---------------------------------------------------------------------------
# 1. OpenTelemetry Collector via ocb
# ---------------------------------------------------------------------------
build_otelcol() {
  local name=otelcol-agora
  local bin="$BIN_DIR/$name" stamp="$STAMP_DIR/$name.stamp" logfile="$LOG_DIR/$name.log"
  local want
  want="manifest=$(manifest_hash "$MANIFEST") ocb=$OCB_VERSION go=$GO_VERSION"
  if [[ -x "$bin" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    log "$name: cached ($bin)"
    return 0
  fi
  log "$name: building (log: $logfile)"
  : >"$logfile"
  local t0; t0=$(date +%s)

  local ocb="$GOTOOLS_DIR/builder" ocb_stamp="$STAMP_DIR/ocb.stamp"
  if [[ -x "$ocb" && -f "$ocb_stamp" && "$(cat "$ocb_stamp")" == "$OCB_VERSION" ]]; then
    log "$name: step 1/3 ocb $OCB_VERSION cached ($ocb)"
  else
    log "$name: step 1/3 installing ocb $OCB_VERSION into $GOTOOLS_DIR"
    (cd "$SRC_DIR" && GOBIN="$GOTOOLS_DIR" run_step ocb "$logfile" \
        go install -v "go.opentelemetry.io/collector/cmd/builder@$OCB_VERSION")
    echo "$OCB_VERSION" >"$ocb_stamp"
  fi

  # Rewrite output_path so generated sources live in the cache, not the repo.
  local out="$SRC_DIR/$name" gen_manifest="$SRC_DIR/$name.builder-config.yaml"
  sed -E "s#^([[:space:]]*output_path:).*#\1 $out#" "$MANIFEST" >"$gen_manifest"
  grep -q "output_path: $out" "$gen_manifest" || { log "ERROR: manifest has no dist.output_path line"; exit 1; }

  log "$name: step 2/3 generating sources + resolving modules (ocb --skip-compilation) into $out"
  GOFLAGS="$BASE_GOFLAGS" run_step "$name/ocb-generate" "$logfile" \
      "$ocb" --config="$gen_manifest" --skip-compilation --verbose

  log "$name: step 3/3 compiling (go build -v)"
  (cd "$out" && GOFLAGS="$BASE_GOFLAGS -mod=mod" run_step "$name/go-build" "$logfile" \
      go build -v -trimpath -ldflags="-s -w" -o "$bin.tmp" .)
  mv -f "$bin.tmp" "$bin"
  echo "$want" >"$stamp"
  log "$name: built $bin in $(( $(date +%s) - t0 ))s"
}

# ---------------------------------------------------------------------------
# 2. Jaeger v2. `go install ...@version` is refused because jaeger's go.mod has
#    a replace directive, so build it from a tiny wrapper module (go get -tool).
# ---------------------------------------------------------------------------
build_jaeger() {
  local name=jaeger
  local bin="$BIN_DIR/$name" stamp="$STAMP_DIR/$name.stamp" logfile="$LOG_DIR/$name.log"
  local want="jaeger=$JAEGER_VERSION go=$GO_VERSION"
  if [[ -x "$bin" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    log "$name: cached ($bin)"
    return 0
  fi
  log "$name: building $JAEGER_VERSION (log: $logfile)"
  : >"$logfile"
  local t0; t0=$(date +%s)
  local mod="$SRC_DIR/jaeger-$JAEGER_VERSION"
  mkdir -p "$mod"
  if [[ ! -f "$mod/go.mod" ]]; then
    (cd "$mod" && GOFLAGS="$BASE_GOFLAGS" run_step "$name/go-mod-init" "$logfile" \
        go mod init agora.local/jaeger-build)
  fi
  log "$name: step 1/2 resolving modules (go get -tool github.com/jaegertracing/jaeger/cmd/jaeger@$JAEGER_VERSION)"
  (cd "$mod" && GOFLAGS="$BASE_GOFLAGS" run_step "$name/go-get" "$logfile" \
      go get -tool "github.com/jaegertracing/jaeger/cmd/jaeger@$JAEGER_VERSION")
  log "$name: step 2/2 compiling (go build -v)"
  (cd "$mod" && GOFLAGS="$BASE_GOFLAGS -mod=mod" run_step "$name/go-build" "$logfile" \
      go build -v -trimpath -ldflags="-s -w" -o "$bin.tmp" github.com/jaegertracing/jaeger/cmd/jaeger)
  mv -f "$bin.tmp" "$bin"
  echo "$want" >"$stamp"
  log "$name: built $bin in $(( $(date +%s) - t0 ))s"
}

case "${AGORA_GO_TOOLS_ONLY:-all}" in
  otelcol) build_otelcol ;;
  jaeger) build_jaeger ;;
  all) build_otelcol; build_jaeger ;;
  *) log "ERROR: AGORA_GO_TOOLS_ONLY must be otelcol, jaeger or all"; exit 2 ;;
esac
log "all done: $BIN_DIR/otelcol-agora $BIN_DIR/jaeger"
