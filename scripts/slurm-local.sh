#!/usr/bin/env bash
# A one-node SLURM on this machine, for tests and CI (Debian 12's SLURM 22.05, as root, no
# systemd, no cgroups, no accounting database).
#
#   scripts/slurm-local.sh install   apt packages (slurmctld slurmd munge slurm-client)
#   scripts/slurm-local.sh start     write a config under $SLURM_RUN (default /tmp/covflow-slurm)
#                                    and start munged, slurmctld, slurmd; waits for the node
#   scripts/slurm-local.sh stop      stop them
set -euo pipefail
run=${SLURM_RUN:-/tmp/covflow-slurm}
conf="$run/slurm.conf"

install() {
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd munge slurm-client >/dev/null
}

start() {
    mkdir -p "$run/state" "$run/spool" "$run/log"
    local host mem
    host=$(hostname -s)
    mem=$(awk '/MemTotal/ { printf "%d", $2 / 1024 * 0.9 }' /proc/meminfo)
    cat > "$conf" <<EOF
ClusterName=covflow
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
MinJobAge=300
SchedulerParameters=sched_interval=1,sched_min_interval=0,batch_sched_delay=0,bf_interval=1,defer_batch=0
StateSaveLocation=$run/state
SlurmdSpoolDir=$run/spool
SlurmctldPidFile=$run/slurmctld.pid
SlurmdPidFile=$run/slurmd.pid
SlurmctldLogFile=$run/log/slurmctld.log
SlurmdLogFile=$run/log/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    # A job that loses SLURM_CONF from its environment still finds the configuration.
    mkdir -p /etc/slurm
    ln -sf "$conf" /etc/slurm/slurm.conf
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
        chown munge:munge /etc/munge/munge.key 2>/dev/null || true
        chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
    pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
    pgrep -x slurmctld >/dev/null || slurmctld -f "$conf"
    pgrep -x slurmd >/dev/null || slurmd -f "$conf"
    for _ in $(seq 1 60); do
        if sinfo -h -o '%t' 2>/dev/null | grep -q idle; then
            echo "slurm: node $host idle (config $conf)"
            return 0
        fi
        sleep 0.5
    done
    echo "slurm: the node did not become idle; logs in $run/log" >&2
    sinfo >&2 || true
    return 1
}

stop() {
    pkill -x slurmd 2>/dev/null || true
    pkill -x slurmctld 2>/dev/null || true
    pkill -x munged 2>/dev/null || true
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
