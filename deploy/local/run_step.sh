# Sourced by the build scripts (build_go_tools.sh, build_helm.sh); needs `log`,
# HEARTBEAT and CACHE_LOCK (the descriptor of the cache's lock) from the caller.
#
# run_step <component> <logfile> <cmd...>
# Runs the command with its output appended to the log, printing a heartbeat every
# $HEARTBEAT seconds (Go builds run for minutes). On failure prints the component,
# the command, the log path and its last lines, and exits non-zero.
# (A shell function rather than a supervisor: it is one foreground command with a
# progress line; nothing needs restarting.)
run_step() {
  local component="$1" logfile="$2"; shift 2
  local start now pid rc last
  start=$(date +%s)
  echo "=== $(date -Is) [$component] \$ $*" >>"$logfile"
  # The cache lock's descriptor is not handed to the command: one left running would
  # hold the lock after this script ended.
  "$@" >>"$logfile" 2>&1 {CACHE_LOCK}>&- &
  pid=$!
  # A background job starts with SIGINT ignored (no job control in a script), and Go
  # and the JVM keep it ignored: on Ctrl-C or SIGTERM stop it here, or it runs on
  # after the script, and the next `make run` rebuilds beside it.
  trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; exit 130' INT
  trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; exit 143' TERM
  while kill -0 "$pid" 2>/dev/null; do
    local i=0
    while (( i < HEARTBEAT )) && kill -0 "$pid" 2>/dev/null; do sleep 1; i=$((i + 1)); done
    if kill -0 "$pid" 2>/dev/null; then
      now=$(date +%s)
      last="$(tail -n 1 "$logfile" 2>/dev/null | cut -c1-110)"
      log "  ... $component still running, $((now - start))s elapsed (last: $last)"
    fi
  done
  rc=0
  wait "$pid" || rc=$?
  trap - INT TERM
  now=$(date +%s)
  if (( rc != 0 )); then
    log "FAILED: component=$component exit=$rc after $((now - start))s"
    log "  command: $*"
    log "  log:     $logfile"
    echo "----- last 30 log lines -----" >&2
    tail -n 30 "$logfile" >&2 || true
    exit "$rc"
  fi
  log "  done in $((now - start))s: $*"
}
