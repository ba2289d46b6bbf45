#!/usr/bin/env bash
# Prepare one cluster node for DIML and write ~/.diml/env (sourced by ~/.bashrc, so every later command of the
# cluster launcher and every Ray process sees it).
#
#   node-setup.sh --role head|worker [--from-image] [--pip PKG ...] [--env NAME=VALUE ...]
#                 [--env-optional NAME=VALUE ...] [--data-from URI]
#
# --from-image: the node runs in the DIML image (clusters/kuberay/Dockerfile, the cluster configs' docker:
# section), which already holds every package of clusters/requirements.lock and the project: nothing is installed.
# Without it (machines without Docker): a Python 3.11 venv (uv) gets exactly the packages of
# clusters/requirements.lock, then the project (editable, from the copy the cluster launcher synced to ~/diml)
# with --no-deps, and clusters/scripts/lock.py check stops a node whose lock and pyproject.toml disagree.
#
# --env values come from the rendered cluster config (clusters/clusterconf.py render). An empty --env value means
# the config was not rendered: the script stops with the fix instead of starting a cluster that fails hours later.
# --env-optional values may be empty (e.g. DIML_MLFLOW_URI: empty = run the tracking server on the head).
# --data-from copies the datasets (s3://, gs:// or a folder) into $DIML_DATA once (skipped when already there).
set -euo pipefail

PROJECT="${DIML_PROJECT_DIR:-$HOME/diml}"
VENV="${DIML_VENV:-$HOME/diml-venv}"
UV_VERSION=0.13.9
role="" from_image="" data_from=""
pip_extra=() envs=() optional=()
while [ $# -gt 0 ]; do
  case "$1" in
    --role) role="$2"; shift 2 ;;
    --from-image) from_image=1; shift ;;
    --pip) pip_extra+=("$2"); shift 2 ;;
    --env) envs+=("$2"); shift 2 ;;
    --env-optional) optional+=("$2"); shift 2 ;;
    --data-from) data_from="$2"; shift 2 ;;
    *) echo "node-setup.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
die() { echo "node-setup.sh: $*" >&2; exit 1; }
[ "$role" = head ] || [ "$role" = worker ] || die "--role must be head or worker"
[ -f "$PROJECT/pyproject.toml" ] || die "$PROJECT/pyproject.toml missing: the file_mounts did not sync the project"
[ -s "$HOME/.ray/auth_token" ] || die "~/.ray/auth_token missing: run 'ray get-auth-token --generate' on your machine before 'ray up'"
for kv in ${envs[@]+"${envs[@]}"} ${optional[@]+"${optional[@]}"}; do
  [[ "$kv" =~ ^[A-Z_][A-Z0-9_]*= ]] || die "--env $kv: expected NAME=VALUE"
done
for kv in ${envs[@]+"${envs[@]}"}; do
  [ -n "${kv#*=}" ] || die "${kv%%=*} is empty: render the config first (python clusters/clusterconf.py render ...)"
done

if [ -n "$from_image" ]; then
  # 1-2. The image holds the locked packages and the project: check that it is the image it claims to be.
  PY="$(command -v python)"
  "$PY" -c 'import diml, pipeline, ray, torch' || die "--from-image: this container lacks the project: run the DIML image"
  VENV_PATH=""
  [ "${#pip_extra[@]}" -eq 0 ] || "$PY" -m pip install --no-cache-dir "${pip_extra[@]}"
else
  # 1. uv and a Python 3.11 venv (the same minor version on every node, as Ray requires).
  if [ ! -x "$HOME/.local/bin/uv" ]; then
    curl -LsSf "https://astral.sh/uv/$UV_VERSION/install.sh" | env UV_NO_MODIFY_PATH=1 sh
  fi
  UV="$HOME/.local/bin/uv"
  [ -x "$VENV/bin/python" ] || "$UV" venv --python 3.11 "$VENV"
  PY="$VENV/bin/python"
  VENV_PATH="$VENV/bin"
  # 2. Exactly the locked packages (the versions every other node and the image run), then the project itself.
  "$UV" pip install --python "$PY" -r "$PROJECT/clusters/requirements.lock" ${pip_extra[@]+"${pip_extra[@]}"}
  "$PY" "$PROJECT/clusters/scripts/lock.py" check || die "clusters/requirements.lock disagrees with pyproject.toml"
  "$UV" pip install --python "$PY" --no-deps -e "$PROJECT"
fi

# 3. ~/.diml/env: PATH to the venv, token authentication on every node, the values of the rendered config.
mkdir -p "$HOME/.diml"
{
  echo "# written by clusters/scripts/node-setup.sh ($role)"
  [ -z "$VENV_PATH" ] || echo "export PATH=\"$VENV_PATH:\$PATH\""
  echo "export RAY_AUTH_MODE=token"
  echo "export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false"
  for kv in ${envs[@]+"${envs[@]}"} ${optional[@]+"${optional[@]}"}; do
    printf 'export %s=%q\n' "${kv%%=*}" "${kv#*=}"
  done
} > "$HOME/.diml/env"
if [ "$role" = head ]; then
  # Trials reach the tracking server on the head's private address; an existing server wins when given.
  ip="$(hostname -I | awk '{print $1}')"
  echo 'export MLFLOW_TRACKING_URI="${DIML_MLFLOW_URI:-http://'"$ip"':5000}"' >> "$HOME/.diml/env"
fi
grep -qxF '. "$HOME/.diml/env"' "$HOME/.bashrc" 2>/dev/null || echo '. "$HOME/.diml/env"' >> "$HOME/.bashrc"
. "$HOME/.diml/env"

# 4. The datasets, where the specs look for them ($DIML_DATA).
if [ -n "$data_from" ]; then
  [ -n "${DIML_DATA:-}" ] || die "--data-from needs --env DIML_DATA=<folder>"
  "$PY" "$PROJECT/clusters/scripts/sync_data.py" "$data_from" "$DIML_DATA"
fi
echo "node-setup.sh: $role ready ($("$PY" -c 'import ray, torch; print("ray", ray.__version__, "torch", torch.__version__, "cuda", torch.cuda.is_available())'))"
