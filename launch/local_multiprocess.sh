#!/usr/bin/env bash
# N training processes on this machine (CPU), talking through a localhost coordinator.
#   launch/local_multiprocess.sh N [DEVICES_PER_PROCESS] -- --config configs/quickstart.py --workdir W [...]
# Every process runs `python -m evonas_jax.train` with --coordinator/--num_processes/--process_id;
# jax.distributed.initialize() is the first JAX call (evonas_jax/parallel.py). Logs of process i go
# to <workdir>/process_<i>.log; process 0 also prints to the terminal. Exits non-zero if any fails.
set -euo pipefail
N=${1:?usage: $0 N [DEVICES_PER_PROCESS] -- train args}
shift
DEV=1
if [[ "${1:-}" != "--" && -n "${1:-}" ]]; then DEV=$1; shift; fi
[[ "${1:-}" == "--" ]] && shift
PY=${PYTHON:-python}
PORT=${PORT:-$(( 20000 + RANDOM % 20000 ))}
WORKDIR=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --workdir) WORKDIR=${args[$((i + 1))]} ;;
    --workdir=*) WORKDIR=${args[$i]#--workdir=} ;;
  esac
done
[[ -n "$WORKDIR" ]] || { echo "pass --workdir" >&2; exit 2; }
mkdir -p "$WORKDIR"
pids=()
for ((p = N - 1; p >= 0; p--)); do
  cmd=(env JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$DEV"
       "$PY" -m evonas_jax.train "$@" --coordinator "127.0.0.1:$PORT" --num_processes "$N"
       --process_id "$p")
  if [[ $p -eq 0 ]]; then
    "${cmd[@]}" 2>&1 | tee "$WORKDIR/process_0.log" &
  else
    "${cmd[@]}" > "$WORKDIR/process_$p.log" 2>&1 &
  fi
  pids+=($!)
done
rc=0
for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done
exit $rc
