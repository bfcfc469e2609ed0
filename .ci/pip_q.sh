# Sourced by .ci/setup and .ci/cuda-build. pip_q CMD...: runs a pip command, prints its output without pip's
# location warnings, and on failure prints pip's last lines and returns 1 (a failed install stops the script
# there, instead of surfacing later as a broken import).
pip_q() {
  local log rc=0
  log=$(mktemp)
  "$@" > "$log" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then
    grep -v "^WARNING: Location" "$log" | tail -30 >&2 || true
    echo "failed (exit $rc): $*" >&2
  else
    grep -v "^WARNING: Location" "$log" || true
  fi
  rm -f "$log"
  return "$rc"
}
