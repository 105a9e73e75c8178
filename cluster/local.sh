#!/usr/bin/env bash
# Start or stop a one-machine Ray cluster that `rlp` and `ray job submit` can use.
#
#   cluster/local.sh start [--cpus N] [--gpus N] [--port 6379] [--dashboard-port 8265] [--temp-dir DIR]
#   cluster/local.sh status
#   cluster/local.sh stop
#
# After `start`:  export RAY_ADDRESS=http://127.0.0.1:8265   (job submission)
#                 ray job submit --working-dir . -- rlp grpo recipes/grpo_tiny.yaml
# or run the driver here:  RAY_ADDRESS=127.0.0.1:6379 rlp grpo recipes/grpo_tiny.yaml
#
# `stop` runs `ray stop`, which stops every Ray process of this user on the machine.
set -euo pipefail

RAY=${RAY:-ray}
if [[ -x "$(dirname "$0")/../.venv/bin/ray" && "$RAY" == ray ]]; then
  RAY="$(dirname "$0")/../.venv/bin/ray"
fi

usage() {
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}

cmd=${1:-}
[[ -n "$cmd" ]] || usage
shift

cpus=""
gpus=""
port=6379
dashboard_port=8265
temp_dir=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cpus) cpus=$2; shift 2 ;;
    --gpus) gpus=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --dashboard-port) dashboard_port=$2; shift 2 ;;
    --temp-dir) temp_dir=$2; shift 2 ;;
    *) echo "unknown option: $1" >&2; usage ;;
  esac
done

case "$cmd" in
  start)
    args=(start --head --port="$port" --dashboard-host=127.0.0.1 --dashboard-port="$dashboard_port"
          --include-dashboard=true --disable-usage-stats)
    [[ -n "$cpus" ]] && args+=(--num-cpus="$cpus")
    [[ -n "$gpus" ]] && args+=(--num-gpus="$gpus")
    [[ -n "$temp_dir" ]] && args+=(--temp-dir="$temp_dir")
    "$RAY" "${args[@]}"
    echo "Ray is up. Jobs:   export RAY_ADDRESS=http://127.0.0.1:$dashboard_port"
    echo "        Driver:  RAY_ADDRESS=127.0.0.1:$port rlp grpo RECIPE"
    ;;
  status)
    "$RAY" status --address="127.0.0.1:$port"
    ;;
  stop)
    "$RAY" stop
    ;;
  *)
    usage
    ;;
esac
