#!/usr/bin/env bash
# fetch_jvm_components.sh <cache_dir>
#
# Fetches, from Maven Central with the ordinary `mvn` client (default ~/.m2),
# the JVM-based services Agora runs as plain processes:
#   * Apache Kafka (KRaft)  -> <cache_dir>/kafka/<KAFKA_VERSION>/libs/*.jar
#   * Elasticsearch         -> <cache_dir>/elasticsearch/<ES_VERSION>/{bin,lib,modules,config,...}
#                              (the org.elasticsearch.distribution.integ-test-zip zip, unpacked)
# Idempotent: each component has a stamp file; a second run prints "cached" and
# downloads nothing. Each component is built in a temp dir next to its final
# place and renamed into place only when complete, so an interrupted run never
# leaves a half-fetched component that looks finished.
#
# Env overrides: KAFKA_VERSION (default 4.4.0), ES_VERSION (default 9.5.4),
#                ES_SHA512 (the zip's pinned SHA-512; required),
#                MVN (default mvn), FETCH_ONLY (kafka|elasticsearch).
# (`stack up` sets the versions it runs and the zip's digest, stack/kafka.py and
# stack/elasticsearch.py.)
# Kafka's jars: mvn runs with --strict-checksums, so a file whose checksum does not
# match what Maven Central publishes fails the fetch (Maven 3 only warns by default).
# The Elasticsearch zip: the registry this machine reaches serves it without any
# checksum file (.sha1/.sha512/.md5 all 404 since 2026-11-27), which strict mode
# refuses outright; so mvn fetches it with --lax-checksums and the zip must match
# the SHA-512 pinned in the repo (ES_SHA512) before it is unpacked.
set -euo pipefail

KAFKA_VERSION="${KAFKA_VERSION:-4.4.0}"
ES_VERSION="${ES_VERSION:-9.5.4}"
ES_SHA512="${ES_SHA512:-}"
MVN="${MVN:-mvn}"
DEP_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KAFKA_POM="$HERE/../kafka/pom.xml"

if [[ $# -ne 1 ]]; then
    echo "usage: $0 <cache_dir>" >&2
    exit 2
fi
CACHE="$1"
mkdir -p "$CACHE"
CACHE="$(cd "$CACHE" && pwd)"

log() { printf '[fetch-jvm] %s\n' "$*"; }

# Another clone may be fetching into this shared cache: wait for it. The stamps are
# read only below, with the lock held, so what it finished is found cached.
mkdir -p "$CACHE/locks"
exec {CACHE_LOCK}>"$CACHE/locks/fetch_jvm_components.lock"
flock -n "$CACHE_LOCK" || { log "waiting for another fetch into $CACHE"; flock "$CACHE_LOCK"; }

fail() { # component command logfile
    local comp="$1" cmd="$2" logf="$3"
    {
        echo "[fetch-jvm] FAILED: $comp"
        echo "[fetch-jvm]   command: $cmd"
        echo "[fetch-jvm]   log:     $logf"
        echo "[fetch-jvm]   last lines of the log:"
        tail -n 25 "$logf" 2>/dev/null | sed 's/^/[fetch-jvm]     /'
        echo "[fetch-jvm]   fix: check that Maven Central is reachable (mvn -v; ~/.m2/settings.xml),"
        echo "[fetch-jvm]        that the version exists, then re-run $0 $CACHE"
    } >&2
    exit 1
}

command -v "$MVN" >/dev/null 2>&1 || {
    echo "[fetch-jvm] FAILED: '$MVN' not found; install Maven (apt-get install -y maven)" >&2
    exit 1
}

# run_with_heartbeat <component> <logfile> <cmd...>
# Runs cmd with output to logfile, printing a progress line every 10 s.
run_with_heartbeat() {
    local comp="$1" logf="$2"
    shift 2
    local start=$SECONDS
    # As run_step (run_step.sh): the lock is not handed down, and Ctrl-C or SIGTERM
    # stops the command (started with SIGINT ignored, which Maven keeps).
    "$@" >"$logf" 2>&1 {CACHE_LOCK}>&- &
    local pid=$!
    trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; exit 130' INT
    trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; exit 143' TERM
    while kill -0 "$pid" 2>/dev/null; do
        sleep 2
        if (( (SECONDS - start) % 10 < 2 && SECONDS - start >= 2 )); then
            local n
            n=$(grep -c 'Downloaded from' "$logf" 2>/dev/null || true)
            log "$comp: still fetching ($((SECONDS - start))s, ${n:-0} files downloaded; log $logf)"
        fi
    done
    local rc=0
    wait "$pid" || rc=$?
    trap - INT TERM
    return "$rc"
}

fetch_kafka() {
    local dest="$CACHE/kafka/$KAFKA_VERSION"
    local stamp="$dest/.agora-complete"
    if [[ -f "$stamp" ]]; then
        log "kafka $KAFKA_VERSION: cached ($dest)"
        return 0
    fi
    mkdir -p "$CACHE/kafka"
    local tmp="$CACHE/kafka/.tmp-$KAFKA_VERSION-$$"
    local logf="$CACHE/kafka/fetch-$KAFKA_VERSION.log"
    # With the lock held no other fetch is running: an interrupted one's folder goes too.
    rm -rf "$CACHE/kafka/.tmp-$KAFKA_VERSION-"*
    mkdir -p "$tmp/libs"
    local cmd=("$MVN" -B --strict-checksums -Dstyle.color=never -f "$KAFKA_POM" "$DEP_PLUGIN:copy-dependencies"
        "-Dkafka.version=$KAFKA_VERSION" -DincludeScope=runtime
        "-DoutputDirectory=$tmp/libs")
    log "kafka $KAFKA_VERSION: fetching jars from Maven Central -> $dest/libs"
    local t0=$SECONDS
    run_with_heartbeat kafka "$logf" "${cmd[@]}" || { rm -rf "$tmp"; fail "kafka $KAFKA_VERSION" "${cmd[*]}" "$logf"; }
    ls "$tmp/libs"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null 2>&1 \
        || { rm -rf "$tmp"; fail "kafka $KAFKA_VERSION (kafka_2.13 jar missing after fetch)" "${cmd[*]}" "$logf"; }
    echo "$KAFKA_VERSION" >"$tmp/.agora-complete"
    rm -rf "$dest"          # a stale dir without a stamp is incomplete
    mv "$tmp" "$dest"
    log "kafka $KAFKA_VERSION: done in $((SECONDS - t0))s, $(ls "$dest/libs" | wc -l) jars, $(du -sh "$dest" | cut -f1)"
}

fetch_elasticsearch() {
    local dest="$CACHE/elasticsearch/$ES_VERSION"
    local stamp="$dest/.agora-complete"
    if [[ -f "$stamp" ]]; then
        log "elasticsearch $ES_VERSION: cached ($dest)"
        return 0
    fi
    command -v unzip >/dev/null 2>&1 || {
        echo "[fetch-jvm] FAILED: elasticsearch: 'unzip' not found; apt-get install -y unzip" >&2
        exit 1
    }
    mkdir -p "$CACHE/elasticsearch"
    local tmp="$CACHE/elasticsearch/.tmp-$ES_VERSION-$$"
    local logf="$CACHE/elasticsearch/fetch-$ES_VERSION.log"
    rm -rf "$CACHE/elasticsearch/.tmp-$ES_VERSION-"*  # an interrupted fetch's too (as kafka's)
    mkdir -p "$tmp/dl" "$tmp/unpack"
    [[ "$ES_SHA512" =~ ^[0-9a-f]{128}$ ]] || {
        echo "[fetch-jvm] FAILED: elasticsearch $ES_VERSION: ES_SHA512 must be the zip's pinned SHA-512" \
            "(128 hex digits; stack/elasticsearch.py sets it); got '${ES_SHA512}'" >&2
        exit 1
    }
    local cmd=("$MVN" -B --lax-checksums -Dstyle.color=never "$DEP_PLUGIN:copy"
        "-Dartifact=org.elasticsearch.distribution.integ-test-zip:elasticsearch:$ES_VERSION:zip"
        "-DoutputDirectory=$tmp/dl")
    log "elasticsearch $ES_VERSION: fetching integ-test-zip from Maven Central -> $dest"
    local t0=$SECONDS
    run_with_heartbeat elasticsearch "$logf" "${cmd[@]}" || { rm -rf "$tmp"; fail "elasticsearch $ES_VERSION" "${cmd[*]}" "$logf"; }
    local zip="$tmp/dl/elasticsearch-$ES_VERSION.zip"
    local got
    got="$(sha512sum "$zip" 2>>"$logf" | cut -d' ' -f1)" || got="none (no zip)"
    if [[ "$got" != "$ES_SHA512" ]]; then
        echo "[fetch-jvm] sha512 $got (expected $ES_SHA512)" >>"$logf"
        # The mismatching file stays out of ~/.m2 too: the next run fetches it afresh.
        rm -rf "$tmp" "$HOME/.m2/repository/org/elasticsearch/distribution/integ-test-zip/elasticsearch/$ES_VERSION"
        fail "elasticsearch $ES_VERSION (zip SHA-512 $got is not the pinned one)" "${cmd[*]}" "$logf"
    fi
    log "elasticsearch $ES_VERSION: zip matches the pinned SHA-512"
    unzip -q "$zip" -d "$tmp/unpack" >>"$logf" 2>&1 \
        || { rm -rf "$tmp"; fail "elasticsearch $ES_VERSION (unzip)" "unzip -q $zip -d $tmp/unpack" "$logf"; }
    local home="$tmp/unpack/elasticsearch-$ES_VERSION"
    [[ -x "$home/bin/elasticsearch" ]] \
        || { rm -rf "$tmp"; fail "elasticsearch $ES_VERSION (bin/elasticsearch missing in zip)" "${cmd[*]}" "$logf"; }
    echo "$ES_VERSION" >"$home/.agora-complete"
    rm -rf "$dest"
    mv "$home" "$dest"
    rm -rf "$tmp"
    log "elasticsearch $ES_VERSION: done in $((SECONDS - t0))s, $(du -sh "$dest" | cut -f1)"
}

case "${FETCH_ONLY:-}" in
    kafka) fetch_kafka ;;
    elasticsearch) fetch_elasticsearch ;;
    "") fetch_kafka; fetch_elasticsearch ;;
    *) echo "FETCH_ONLY must be kafka or elasticsearch" >&2; exit 2 ;;
esac
