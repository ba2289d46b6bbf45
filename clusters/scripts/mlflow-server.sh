#!/usr/bin/env bash
# The MLflow tracking server of a DIML cluster, run on the head: a database backend on the head's disk (or the
# database DIML_MLFLOW_BACKEND names, e.g. postgresql://...), artifacts proxied to shared storage
# ($DIML_STORAGE/mlflow-artifacts: s3://, gs:// or an NFS folder), job execution off.
#
#   mlflow-server.sh start|stop|status
#
# Settings (environment; ~/.diml/env on a node set up by node-setup.sh):
#   DIML_STORAGE        shared storage root (required)
#   DIML_MLFLOW_URI     an existing tracking server: when set, nothing is started here
#   DIML_MLFLOW_HOME    state folder: database, log, pid (default ~/mlflow)
#   DIML_MLFLOW_BACKEND backend store URI (default sqlite:///$DIML_MLFLOW_HOME/mlflow.db)
#   DIML_MLFLOW_HOST    interface to bind (default 0.0.0.0: the trials on the workers must reach it; keep the port
#                       closed to the internet, reach the UI through an SSH tunnel)
#   DIML_MLFLOW_PORT    port (default 5000); DIML_MLFLOW_WORKERS: server processes (default 4)
# The server runs in its own session (setsid); stop signals exactly that process group.
set -euo pipefail
[ -f "$HOME/.diml/env" ] && . "$HOME/.diml/env"

HOME_DIR="${DIML_MLFLOW_HOME:-$HOME/mlflow}"
PORT="${DIML_MLFLOW_PORT:-5000}"
HOST="${DIML_MLFLOW_HOST:-0.0.0.0}"
PIDFILE="$HOME_DIR/server.pid"
LOG="$HOME_DIR/server.log"
health() {
  python3 - "$PORT" <<'PYEOF'
import sys, urllib.request
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=3) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
PYEOF
}
running_pgid() { [ -f "$PIDFILE" ] && kill -0 -- "-$(cat "$PIDFILE")" 2>/dev/null && cat "$PIDFILE"; }

stop() {
  local pgid
  if pgid="$(running_pgid)"; then
    kill -TERM -- "-$pgid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 -- "-$pgid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$pgid" 2>/dev/null || true
    echo "mlflow-server: stopped (process group $pgid)"
  fi
  rm -f "$PIDFILE"
}

start() {
  if [ -n "${DIML_MLFLOW_URI:-}" ]; then
    echo "mlflow-server: using the existing tracking server $DIML_MLFLOW_URI; nothing to start"
    return 0
  fi
  [ -n "${DIML_STORAGE:-}" ] || { echo "mlflow-server: DIML_STORAGE is not set" >&2; exit 1; }
  stop
  mkdir -p "$HOME_DIR"
  local artifacts="${DIML_STORAGE%/}/mlflow-artifacts"
  case "$artifacts" in *://*) ;; *) mkdir -p "$artifacts" ;; esac
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid mlflow server \
    --backend-store-uri "${DIML_MLFLOW_BACKEND:-sqlite:///$HOME_DIR/mlflow.db}" \
    --artifacts-destination "$artifacts" \
    --host "$HOST" --port "$PORT" --workers "${DIML_MLFLOW_WORKERS:-4}" \
    > "$LOG" 2>&1 < /dev/null &
  echo $! > "$PIDFILE"
  for _ in $(seq 1 120); do
    if health; then echo "mlflow-server: up on $HOST:$PORT, artifacts in $artifacts"; return 0; fi
    running_pgid > /dev/null || break
    sleep 1
  done
  echo "mlflow-server: did not answer /health; last lines of $LOG:" >&2
  tail -n 30 "$LOG" >&2 || true
  stop
  exit 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if health; then echo "mlflow-server: up on port $PORT"; else echo "mlflow-server: down"; exit 1; fi ;;
  *) echo "usage: mlflow-server.sh start|stop|status" >&2; exit 2 ;;
esac
