#!/usr/bin/env bash
# Build Helm from the Go module proxy into <cache_dir>/bin/helm, for the offline
# chart validation in tests/deploy (helm lint / helm template).
#
# Usage: build_helm.sh <cache_dir>
#
# Idempotent: <cache_dir>/stamps/helm.stamp holds the Helm and Go versions; when
# the binary exists and the stamp matches, the script prints "cached" and does
# nothing. Verbose go output goes to <cache_dir>/logs/helm.log and a heartbeat
# line is printed every ~15 s while Go works. GOMODCACHE / GOCACHE stay at Go's
# defaults (shared across clones).
# Env overrides: HELM_VERSION, AGORA_GO_HEARTBEAT (seconds).
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
HEARTBEAT="${AGORA_GO_HEARTBEAT:-15}"

if [[ $# -ne 1 || -z "$1" ]]; then
  echo "usage: $0 <cache_dir>" >&2
  exit 2
fi

mkdir -p "$1"
CACHE_DIR="$(cd "$1" && pwd)"
BIN_DIR="$CACHE_DIR/bin"
LOG_DIR="$CACHE_DIR/logs"
STAMP_DIR="$CACHE_DIR/stamps"
SRC_DIR="$CACHE_DIR/src"
mkdir -p "$BIN_DIR" "$LOG_DIR" "$STAMP_DIR" "$SRC_DIR"

log() { printf '[build_helm %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# Another clone may be building into this shared cache: wait for it. The stamp is
# read only below, with the lock held, so what it finished is found cached.
mkdir -p "$CACHE_DIR/locks"
exec {CACHE_LOCK}>"$CACHE_DIR/locks/build_helm.lock"
flock -n "$CACHE_LOCK" || { log "waiting for another build into $CACHE_DIR"; flock "$CACHE_LOCK"; }

if ! command -v go >/dev/null 2>&1; then
  log "ERROR: 'go' is not on PATH. Install Go >= 1.24 and retry."
  exit 1
fi

GO_VERSION="$(go env GOVERSION)"
BASE_GOFLAGS="$(go env GOFLAGS)"
export CGO_ENABLED="${CGO_ENABLED:-0}"

BIN="$BIN_DIR/helm"
STAMP="$STAMP_DIR/helm.stamp"
LOGFILE="$LOG_DIR/helm.log"
# Bump BUILD_REV when the build recipe below changes, to rebuild cached binaries.
BUILD_REV=2
WANT="helm=$HELM_VERSION go=$GO_VERSION rev=$BUILD_REV"

if [[ -x "$BIN" && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  log "helm: cached ($BIN, $HELM_VERSION)"
  exit 0
fi

# shellcheck source=deploy/local/run_step.sh
. "$(dirname "${BASH_SOURCE[0]}")/run_step.sh"

log "helm: building $HELM_VERSION from the Go module proxy (log: $LOGFILE)"
: >"$LOGFILE"
t0=$(date +%s)
# A tiny wrapper module pins the version (go get -tool), like the Jaeger build.
MOD="$SRC_DIR/helm-$HELM_VERSION"
mkdir -p "$MOD"
if [[ ! -f "$MOD/go.mod" ]]; then
  (cd "$MOD" && GOFLAGS="$BASE_GOFLAGS" run_step helm/go-mod-init "$LOGFILE" go mod init agora.local/helm-build)
fi
log "helm: step 1/2 resolving modules (go get -tool helm.sh/helm/v3/cmd/helm@$HELM_VERSION)"
(cd "$MOD" && GOFLAGS="$BASE_GOFLAGS" run_step helm/go-get "$LOGFILE" \
    go get -tool "helm.sh/helm/v3/cmd/helm@$HELM_VERSION")
# Like Helm's own Makefile: the default Kubernetes version of `helm template` and
# `helm lint` is the one of the client-go it was built with (else v1.20).
K8S_MODULES_VER="$(cd "$MOD" && go list -f '{{.Version}}' -m k8s.io/client-go)"   # e.g. v0.37.0
K8S_MINOR="$(echo "$K8S_MODULES_VER" | cut -d. -f2)"
K8S_MAJOR=$(( $(echo "${K8S_MODULES_VER#v}" | cut -d. -f1) + 1 ))
LDFLAGS="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  LDFLAGS+=" -X $pkg.k8sVersionMajor=$K8S_MAJOR -X $pkg.k8sVersionMinor=$K8S_MINOR"
done
log "helm: step 2/2 compiling (go build -v; default Kubernetes version v$K8S_MAJOR.$K8S_MINOR)"
(cd "$MOD" && GOFLAGS="$BASE_GOFLAGS -mod=mod" run_step helm/go-build "$LOGFILE" \
    go build -v -trimpath -ldflags="$LDFLAGS" -o "$BIN.tmp" helm.sh/helm/v3/cmd/helm)
mv -f "$BIN.tmp" "$BIN"
echo "$WANT" >"$STAMP"
log "helm: built $BIN in $(( $(date +%s) - t0 ))s"
