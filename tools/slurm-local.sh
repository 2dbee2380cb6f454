#!/usr/bin/env bash
# tools/slurm-local.sh: a one-node Slurm cluster on THIS machine, to try (and test) the
# Slurm workflow of jobs/slurm.sbatch on a workstation or in CI.
#
# Usage:   tools/slurm-local.sh start|stop|status|env
#   tools/slurm-local.sh start        # install if needed, start, wait until the node is idle
#   eval "$(tools/slurm-local.sh env)"   # SLURM_CONF for sbatch / srun / squeue in this shell
#   sbatch --wait -N 1 --ntasks-per-node=2 --gpus-per-node=0 --cpus-per-task=1 \
#       jobs/slurm.sbatch hvd-stgnn train --data data/tiny.h5 --epochs 2
#   tools/slurm-local.sh stop         # ends only the daemons this script started
#
# Everything is private to a state directory ($HVD_STGNN_SLURM_DIR, default
# /tmp/hvd-stgnn-slurm-UID): its own munge key, munged socket, slurm.conf, spool, state,
# logs and pid files. Nothing in /etc is changed, and a site's Slurm or munge is never
# touched: the ports are not Slurm's defaults and the clients find this cluster only through
# SLURM_CONF. Idempotent: `start` on a running cluster only checks it.
#
# The cluster: one node (this host, 127.0.0.1), one partition `local`, Slurm's own settings
# for a box without cgroups (proctrack/linuxproc, task/affinity: CPU binding works, so srun's
# "cluster configuration lacks support for cpu binding" does not appear), SlurmdParameters=
# config_overrides (the node may declare more CPUs than the box has; CPU binding is then
# off: task/none), no accounting database (so `sacct` has nothing; `scontrol show job` and
# `squeue -t all` show a finished job's state and exit code for MinJobAge seconds).
# Environment:
#   HVD_STGNN_SLURM_DIR=dir        state directory (default /tmp/hvd-stgnn-slurm-$(id -u))
#   HVD_STGNN_SLURM_PORT=16817     slurmctld port; slurmd uses the next one
#   HVD_STGNN_SLURM_CPUS=N         CPUs the node declares (default: nproc)
#   HVD_STGNN_SLURM_TIMEOUT=60     seconds to wait for the node to become idle
set -euo pipefail

ME=tools/slurm-local.sh
DIR="${HVD_STGNN_SLURM_DIR:-/tmp/hvd-stgnn-slurm-$(id -u)}"
PORT="${HVD_STGNN_SLURM_PORT:-16817}"
TIMEOUT="${HVD_STGNN_SLURM_TIMEOUT:-60}"
CONF="$DIR/slurm.conf"
SOCKET="$DIR/munge/munge.socket.2"
NODE="$(hostname -s)"

say() { printf '%s: %s\n' "$ME" "$*" >&2; }
die() { printf '%s: error: %s\n' "$ME" "$*" >&2; exit 1; }

pid_alive() {  # PIDFILE: true when the file names a live process
    [ -f "$1" ] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
       && command -v sbatch >/dev/null; then
        return 0
    fi
    command -v apt-get >/dev/null || die "Slurm is not installed and there is no apt-get: install slurm-wlm and munge"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    say "installing Debian's slurm-wlm and munge (about a minute)"
    $sudo apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq slurm-wlm munge >/dev/null \
        || die "apt-get install slurm-wlm munge failed"
    # Debian starts its own daemons from the packages' units where systemd runs; they use the
    # default ports and /etc/munge, not ours, so they do not collide with this cluster.
}

write_config() {
    mkdir -p "$DIR"/{munge,log,spool,state}
    chmod 700 "$DIR/munge"
    if [ ! -s "$DIR/munge/munge.key" ]; then
        dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
        chmod 400 "$DIR/munge/munge.key"
    fi
    local cpus real_mem task=task/affinity
    cpus="${HVD_STGNN_SLURM_CPUS:-$(nproc)}"
    [[ "$cpus" =~ ^[1-9][0-9]*$ ]] || die "HVD_STGNN_SLURM_CPUS must be a positive integer (got '$cpus')"
    # Binding to CPUs the box does not have fails every task: declare more, bind none.
    [ "$cpus" -le "$(nproc)" ] || task=task/none
    real_mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
    cat > "$CONF.tmp" <<EOF
# Written by $ME; rewritten by every start.
ClusterName=hvd-stgnn-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=$(id -un)
SlurmdUser=$(id -un)
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=$task
SlurmdParameters=config_overrides
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# Short waits: a requeued job restarts after cred_expire (10 s, not 120), a killed step is
# gone in seconds, a finished job is shown for 10 min.
KillWait=10
MinJobAge=600
MessageTimeout=20
SlurmdTimeout=60
InactiveLimit=0
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus Boards=1 SocketsPerBoard=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$real_mem State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
}

wait_idle() {
    local t0=$SECONDS state=""
    while [ $((SECONDS - t0)) -lt "$TIMEOUT" ]; do
        state="$(SLURM_CONF="$CONF" sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n1 || true)"
        case "$state" in
            idle|mixed|allocated|completing) return 0 ;;
            down*|drain*|fail*)  # a node that was down when slurmctld last ran: bring it back
                SLURM_CONF="$CONF" scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    die "node $NODE not idle after ${TIMEOUT}s (state '${state:-unknown}'); logs: $DIR/log/slurmctld.log $DIR/log/slurmd.log"
}

start_daemon() {  # NAME PIDFILE LOG COMMAND...: start unless running; one line if it does not come up
    local name="$1" pidfile="$2" log="$3"
    shift 3
    pid_alive "$pidfile" && return 0
    rm -f "$pidfile"
    "$@" >>"$log" 2>&1 || die "$name did not start (exit $?); log: $log"
    local i
    for i in $(seq 1 40); do
        pid_alive "$pidfile" && return 0
        sleep 0.25
    done
    die "$name did not come up (no live pid in $pidfile after 10 s); log: $log"
}

cmd_start() {
    install_packages
    write_config
    start_daemon munged "$DIR/munge/munged.pid" "$DIR/log/munged.log" \
        munged --force --socket="$SOCKET" --key-file="$DIR/munge/munge.key" --pid-file="$DIR/munge/munged.pid" \
        --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"
    # -c: a cluster that was not running starts empty, without the jobs of an earlier life
    # (a machine reused by another checkout would otherwise run them again).
    start_daemon slurmctld "$DIR/slurmctld.pid" "$DIR/log/slurmctld.log" slurmctld -c -f "$CONF"
    start_daemon slurmd "$DIR/slurmd.pid" "$DIR/log/slurmd.log" slurmd -c -f "$CONF"
    wait_idle
    say "running: node $NODE idle, ports $PORT/$((PORT + 1)), state $DIR"
    say "use it with: export SLURM_CONF=$CONF"
}

cmd_stop() {
    local name pidfile pid stopped=()
    for name in slurmd slurmctld munged; do
        pidfile="$DIR/$name.pid"
        [ "$name" = munged ] && pidfile="$DIR/munge/munged.pid"
        if pid_alive "$pidfile"; then
            pid="$(cat "$pidfile")"
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
            kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
            stopped+=("$name")
        fi
        rm -f "$pidfile"
    done
    say "stopped: ${stopped[*]:-nothing was running}"
}

cmd_status() {
    local name pidfile rc=0
    for name in munged slurmctld slurmd; do
        pidfile="$DIR/$name.pid"
        [ "$name" = munged ] && pidfile="$DIR/munge/munged.pid"
        if pid_alive "$pidfile"; then echo "$name: running (pid $(cat "$pidfile"))"; else echo "$name: stopped"; rc=3; fi
    done
    if [ "$rc" -eq 0 ]; then
        SLURM_CONF="$CONF" sinfo -N -o '%N %T %c' 2>/dev/null | sed 's/^/  /' || rc=3
    fi
    echo "state: $DIR (SLURM_CONF=$CONF)"
    return "$rc"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $ME start|stop|status|env" >&2; exit 2 ;;
esac
