#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, from Debian's packages, for testing the
# SLURM profile (profiles/slurm) for real: munge + slurmctld + slurmd, no systemd, no
# accounting database, and one fake GPU (backed by /dev/null) so that rules asking for `gpu=1`
# schedule.
#
#   scripts/slurm-local.sh start    install if missing, configure, start, wait until the node is idle
#   scripts/slurm-local.sh status   print the daemons this script started and the node state
#   scripts/slurm-local.sh stop     cancel this cluster's jobs, stop the daemons this script started,
#                                   remove the slurm.conf and gres.conf it wrote
#
# Exit status: 0 ok; 3 SLURM cannot be set up here (not root, no apt-get, install failed, a
# slurm.conf of a real cluster present); 1 any other error (see the message and /var/log/slurm).
#
# `start` reuses a cluster that is already up (it is idempotent); `stop` kills only the
# processes whose pids `start` recorded, never anything found by name.
#
# Needs root (apt-get, daemons, /etc/slurm). It refuses to touch an /etc/slurm/slurm.conf it
# did not write itself. Knobs (environment variables):
#   SLURM_LOCAL_CPUS     CPUs the node advertises      (default: max(nproc, 8))
#   SLURM_LOCAL_MEM_MB   memory the node advertises    (default: 131072)
#   SLURM_LOCAL_GPUS     fake GPUs, 0 or 1             (default: 1)
#   SLURM_LOCAL_TIMEOUT  seconds to wait for the node  (default: 90)
# The node advertises what the slurm.conf says, not what the hardware has
# (SlurmdParameters=config_overrides), so the profile's site-sized requests (tens of GB for the
# caption and training jobs) schedule on a small machine. Nothing enforces those limits here
# (no cgroups): jobs simply share this machine's cores and memory.
set -euo pipefail

MARKER="# written by vlif-pipeline scripts/slurm-local.sh"
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
GRES_CONF="$CONF_DIR/gres.conf"
STATE_DIR=/run/vlif-slurm-local          # pids of the daemons this script started
PID_FILE="$STATE_DIR/pids"
RUN_DIR=/run/slurm
LOG_DIR=/var/log/slurm
SPOOL_CTLD=/var/spool/slurmctld
SPOOL_D=/var/spool/slurmd
TIMEOUT="${SLURM_LOCAL_TIMEOUT:-90}"

log() { printf '[slurm-local] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
# exit status 3: SLURM cannot be set up on this machine at all (not root, no apt, no packages);
# tests skip on it. Any other failure is a real error.
unavailable() { log "unavailable: $*"; exit 3; }

need_root() {
    [ "$(id -u)" -eq 0 ] || unavailable "must run as root (installs packages, starts daemons, writes $CONF_DIR)"
}

install_packages() {
    local missing=()
    command -v munged >/dev/null 2>&1 || [ -x /usr/sbin/munged ] || missing+=(munge)
    [ -x /usr/sbin/slurmctld ] || missing+=(slurmctld)
    [ -x /usr/sbin/slurmd ] || missing+=(slurmd)
    command -v sbatch >/dev/null 2>&1 || missing+=(slurm-client)
    [ "${#missing[@]}" -eq 0 ] && return 0
    command -v apt-get >/dev/null 2>&1 || unavailable "missing ${missing[*]} and no apt-get to install them"
    log "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || unavailable "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || unavailable "apt-get install ${missing[*]} failed"
}

node_name() { hostname -s; }

write_config() {
    local host cpus mem gpus
    host="$(node_name)"
    cpus="${SLURM_LOCAL_CPUS:-$(( $(nproc) > 8 ? $(nproc) : 8 ))}"
    mem="${SLURM_LOCAL_MEM_MB:-131072}"
    gpus="${SLURM_LOCAL_GPUS:-1}"
    case "$gpus" in 0|1) ;; *) die "SLURM_LOCAL_GPUS must be 0 or 1 (one fake device file), not '$gpus'" ;; esac
    if [ -e "$CONF" ] && ! head -n1 "$CONF" | grep -qxF "$MARKER"; then
        unavailable "$CONF exists and was not written by this script; refusing to overwrite a real cluster's configuration"
    fi
    install -d -m 0755 "$CONF_DIR" "$RUN_DIR" "$LOG_DIR" "$SPOOL_CTLD" "$SPOOL_D"
    local gres_line="" gres_types=""
    if [ "$gpus" -gt 0 ]; then
        gres_line="Gres=gpu:$gpus"
        gres_types="GresTypes=gpu"
    fi
    cat >"$CONF.tmp" <<EOF
$MARKER
# A single-node test cluster; see the script for what it is for. Regenerated on every start.
ClusterName=vlif-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
# One line per finished job (id, state, time limit, CPUs, memory, work dir), never purged.
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG_DIR/jobcomp.log
# squeue shows finished jobs (state, GPUs asked) for an hour: the Snakemake SLURM plugin's
# squeue status check needs MinJobAge >= 3 x its first status-check interval, and the test
# reads what each job asked for after the workflow ends.
MinJobAge=3600
ReturnToService=2
SlurmdParameters=config_overrides
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$SPOOL_CTLD
SlurmdSpoolDir=$SPOOL_D
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
KillWait=5
$gres_types
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem $gres_line State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
    {
        echo "$MARKER"
        # Fake GPUs backed by /dev/null: the scheduler counts them, nothing real is bound into the
        # job. (A Count= line without File= makes slurmd 22.05 report 0 GPUs and the node INVAL.)
        if [ "$gpus" -gt 0 ]; then echo "NodeName=$host Name=gpu Count=$gpus File=/dev/null"; fi
    } >"$GRES_CONF"
    log "wrote $CONF (node $host: CPUs=$cpus RealMemory=${mem}MB gpu=$gpus)"
}

# pid of a running process recorded in a pid file, if its command matches; else empty
pid_from_file() {
    local file="$1" name="$2" pid
    [ -r "$file" ] || return 0
    pid="$(tr -dc '0-9' <"$file")"
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$name" ] && echo "$pid"
    return 0
}

record() { install -d -m 0755 "$STATE_DIR"; echo "$1 $2" >>"$PID_FILE"; }

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
ctld_ok() { scontrol ping 2>/dev/null | grep -q 'is UP'; }
node_state() { sinfo -h -N -n "$(node_name)" -o '%T' 2>/dev/null | head -n1; }

start_munge() {
    if munge_ok; then log "munged already running"; return 0; fi
    [ -s /etc/munge/munge.key ] || {
        log "creating /etc/munge/munge.key"
        if command -v mungekey >/dev/null 2>&1; then mungekey --create --keyfile=/etc/munge/munge.key
        else dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
        chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
    }
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
    local pid="" i
    for i in $(seq 50); do
        pid="$(pid_from_file /run/munge/munged.pid munged)"
        [ -n "$pid" ] && munge_ok && break
        sleep 0.1
    done
    [ -n "$pid" ] || die "munged did not start (see /var/log/munge/munged.log)"
    record munged "$pid"
    log "started munged (pid $pid)"
}

start_daemon() {  # name, pid file, command...
    local name="$1" pidfile="$2"; shift 2
    local pid
    pid="$(pid_from_file "$pidfile" "$name")"
    if [ -n "$pid" ]; then log "$name already running (pid $pid)"; return 0; fi
    rm -f "$pidfile"
    "$@" || die "$name failed to start (see $LOG_DIR/$name.log)"
    local i
    for i in $(seq 100); do
        pid="$(pid_from_file "$pidfile" "$name")"
        [ -n "$pid" ] && break
        sleep 0.1
    done
    [ -n "$pid" ] || die "$name did not write $pidfile (see $LOG_DIR/$name.log)"
    record "$name" "$pid"
    log "started $name (pid $pid)"
}

wait_idle() {
    local deadline=$(( $(date +%s) + TIMEOUT )) state resumed=0
    while :; do
        state="$(node_state)"
        case "$state" in
            idle|mixed|allocated|completing) log "node $(node_name) is $state"; return 0 ;;
            down*|drain*|fail*)
                if [ "$resumed" -eq 0 ] && ctld_ok; then
                    log "node is $state; resuming it"
                    scontrol update NodeName="$(node_name)" State=RESUME || true
                    resumed=1
                fi ;;
        esac
        [ "$(date +%s)" -lt "$deadline" ] || {
            sinfo -N -l >&2 || true
            die "node not idle after ${TIMEOUT}s (state '${state:-unknown}'); see $LOG_DIR/slurmctld.log and slurmd.log"
        }
        sleep 0.5
    done
}

cmd_start() {
    need_root
    install_packages
    if munge_ok && ctld_ok && [ -r "$CONF" ] && head -n1 "$CONF" | grep -qxF "$MARKER"; then
        case "$(node_state)" in
            idle|mixed|allocated|completing) log "cluster already up; reusing it"; return 0 ;;
        esac
    fi
    write_config
    start_munge
    start_daemon slurmctld "$RUN_DIR/slurmctld.pid" /usr/sbin/slurmctld
    local i
    for i in $(seq 100); do ctld_ok && break; sleep 0.2; done
    ctld_ok || die "slurmctld does not answer (see $LOG_DIR/slurmctld.log)"
    start_daemon slurmd "$RUN_DIR/slurmd.pid" /usr/sbin/slurmd
    wait_idle
    log "ready: sbatch/squeue/sinfo talk to cluster vlif-local; logs in $LOG_DIR"
}

cmd_stop() {
    need_root
    if [ -s "$PID_FILE" ]; then stop_daemons; else log "nothing to stop (no daemons recorded in $PID_FILE)"; fi
    remove_config
}

stop_daemons() {
    if ctld_ok; then
        # The jobs belong to this test cluster; do not leave their processes behind.
        scancel --full --state=PENDING 2>/dev/null || true
        scancel --full 2>/dev/null || true
    fi
    # stop in reverse start order: slurmd, slurmctld, munged
    local name pid i
    tac "$PID_FILE" | while read -r name pid; do
        if [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$name" ]; then
            kill -TERM "$pid" 2>/dev/null || true
            for i in $(seq 100); do [ -e "/proc/$pid" ] || break; sleep 0.1; done
            if [ -e "/proc/$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
            log "stopped $name (pid $pid)"
        else
            log "$name (pid $pid) is not running any more"
        fi
    done
    rm -f "$PID_FILE"
}

# A slurm.conf whose controller is gone makes every SLURM client wait for it: `scontrol show
# config`, which the Snakemake SLURM plugin runs whenever snakemake starts, took 9 s here. Without
# a slurm.conf the clients fail at once, as on a machine that never had a cluster.
remove_config() {
    local file
    for file in "$CONF" "$GRES_CONF"; do
        if [ -e "$file" ] && head -n1 "$file" | grep -qxF "$MARKER"; then
            rm -f "$file"
            log "removed $file"
        fi
    done
}

cmd_status() {
    if [ -s "$PID_FILE" ]; then
        local name pid
        while read -r name pid; do
            if [ -e "/proc/$pid" ]; then echo "$name $pid running"; else echo "$name $pid gone"; fi
        done <"$PID_FILE"
    else
        echo "no daemons started by this script"
    fi
    echo "node $(node_name): $(node_state || true)"
    ctld_ok
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
