#!/usr/bin/env bash
# Prepare one cluster node for DIML: Python 3.11 venv (uv), torch from the given index, the project (editable,
# from the copy the cluster launcher synced to ~/diml) with Ray's dashboard/job server, and ~/.diml/env (sourced
# by ~/.bashrc, so every later command of the cluster launcher and every Ray process sees it).
#
#   node-setup.sh --role head|worker --torch-index URL [--pip PKG ...] [--env NAME=VALUE ...]
#                 [--env-optional NAME=VALUE ...] [--data-from URI]
#
# --env values come from the rendered cluster config (clusters/clusterconf.py render). An empty --env value means
# the config was not rendered: the script stops with the fix instead of starting a cluster that fails hours later.
# --env-optional values may be empty (e.g. DIML_MLFLOW_URI: empty = run the tracking server on the head).
# --data-from copies the datasets (s3://, gs:// or a folder) into $DIML_DATA once (skipped when already there).
set -euo pipefail

PROJECT="${DIML_PROJECT_DIR:-$HOME/diml}"
VENV="${DIML_VENV:-$HOME/diml-venv}"
UV_VERSION=0.13.9
role="" torch_index="" data_from=""
pip_extra=() envs=() optional=()
while [ $# -gt 0 ]; do
  case "$1" in
    --role) role="$2"; shift 2 ;;
    --torch-index) torch_index="$2"; shift 2 ;;
    --pip) pip_extra+=("$2"); shift 2 ;;
    --env) envs+=("$2"); shift 2 ;;
    --env-optional) optional+=("$2"); shift 2 ;;
    --data-from) data_from="$2"; shift 2 ;;
    *) echo "node-setup.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
die() { echo "node-setup.sh: $*" >&2; exit 1; }
[ "$role" = head ] || [ "$role" = worker ] || die "--role must be head or worker"
[ -n "$torch_index" ] || die "--torch-index is empty: render the config with clusters/clusterconf.py"
[ -f "$PROJECT/pyproject.toml" ] || die "$PROJECT/pyproject.toml missing: the file_mounts did not sync the project"
[ -s "$HOME/.ray/auth_token" ] || die "~/.ray/auth_token missing: run 'ray get-auth-token --generate' on your machine before 'ray up'"
for kv in ${envs[@]+"${envs[@]}"} ${optional[@]+"${optional[@]}"}; do
  [[ "$kv" =~ ^[A-Z_][A-Z0-9_]*= ]] || die "--env $kv: expected NAME=VALUE"
done
for kv in ${envs[@]+"${envs[@]}"}; do
  [ -n "${kv#*=}" ] || die "${kv%%=*} is empty: render the config first (python clusters/clusterconf.py render ...)"
done

# 1. uv and a Python 3.11 venv (the same minor version on every node, as Ray requires).
if [ ! -x "$HOME/.local/bin/uv" ]; then
  curl -LsSf "https://astral.sh/uv/$UV_VERSION/install.sh" | env UV_NO_MODIFY_PATH=1 sh
fi
UV="$HOME/.local/bin/uv"
[ -x "$VENV/bin/python" ] || "$UV" venv --python 3.11 "$VENV"
PY="$VENV/bin/python"

# 2. torch/torchvision from the chosen index, with the bounds pyproject.toml declares; then the project with
#    Ray's dashboard and job server (ray[default], same version as the project pins) and the extras asked for.
mapfile -t reqs < <("$PY" "$PROJECT/clusters/scripts/pinned.py" "$PROJECT/pyproject.toml" torch torchvision ray)
[ "${#reqs[@]}" -eq 3 ] || die "could not read the torch/torchvision/ray requirements from pyproject.toml"
"$UV" pip install --python "$PY" --index-url "$torch_index" "${reqs[0]}" "${reqs[1]}"
"$UV" pip install --python "$PY" -e "$PROJECT" "${reqs[2]}" ${pip_extra[@]+"${pip_extra[@]}"}

# 3. ~/.diml/env: PATH to the venv, token authentication on every node, the values of the rendered config.
mkdir -p "$HOME/.diml"
{
  echo "# written by clusters/scripts/node-setup.sh ($role)"
  echo "export PATH=\"$VENV/bin:\$PATH\""
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
