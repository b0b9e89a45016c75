#!/usr/bin/env bash
# A real SLURM cluster on this machine for the tests: munge, MariaDB + slurmdbd (accounting: sacct,
# which submitit polls), slurmctld, and two slurmd daemons for two nodes (mixexp-n1, mixexp-n2, both
# this host, CPUs=2 each), so multi-node jobs run for real. Debian's packages; as root; no systemd.
#
#   tests/slurm/cluster.sh up      install what is missing, write configs, start what is not running
#   tests/slurm/cluster.sh down    stop what `up` started (the daemons whose pid files it wrote)
#   tests/slurm/cluster.sh status  sinfo
#
# Idempotent: `up` twice starts nothing twice. Logs: /var/log/mixexp-slurm/.
set -euo pipefail

NODES=(mixexp-n1 mixexp-n2)
PORTS=(17001 17002)
CPUS=2
STATE=/run/mixexp-slurm          # pid files of what we started
LOGS=/var/log/mixexp-slurm
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
DB_PASS=mixexp-slurm-test        # a local test database reachable only through its socket

die() { echo "slurm-up: $*" >&2; exit 1; }

wait_for() {  # wait_for SECONDS WHAT CMD...
    local deadline=$((SECONDS + $1)) what=$2; shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "$what did not come up within the time limit (logs: $LOGS)"
        sleep 0.5
    done
}

running() {  # running NAME: its pid file names a live process
    [[ -f $STATE/$1.pid ]] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null
}

install_packages() {
    local missing=0
    for bin in munged slurmctld slurmd sbatch slurmdbd mariadbd; do command -v $bin >/dev/null || missing=1; done
    ((missing)) || return 0
    [[ $EUID -eq 0 ]] || die "installing ${PACKAGES[*]} needs root"
    echo "slurm-up: installing ${PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >"$LOGS/apt.log" 2>&1 \
        || die "apt-get install failed (see $LOGS/apt.log)"
}

hosts() {  # the node names resolve to this host (torchrun's rendezvous address is node 0's name)
    grep -q "mixexp-slurm" /etc/hosts || echo "127.0.0.1 ${NODES[*]}  # mixexp-slurm" >>/etc/hosts
}

start_munge() {
    running munged && return 0
    [[ -s /etc/munge/munge.key ]] || mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key && chmod 600 /etc/munge/munge.key
    install -d -o munge -g munge -m 755 /run/munge /var/log/munge
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid --log-file=/var/log/munge/munged.log --force
    wait_for 20 munged test -s /run/munge/munged.pid
    cp /run/munge/munged.pid "$STATE/munged.pid"
    wait_for 20 munge sh -c 'munge -n | unmunge'
}

start_db() {
    running mariadbd && return 0
    install -d -o mysql -g mysql -m 755 /run/mysqld
    [[ -d /var/lib/mysql/mysql ]] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >"$LOGS/db-init.log" 2>&1
    setsid /usr/sbin/mariadbd --user=mysql --datadir=/var/lib/mysql --socket=/run/mysqld/mysqld.sock \
        --pid-file="$STATE/mariadbd.pid" --skip-networking --innodb-buffer-pool-size=32M \
        --log-error="$LOGS/mariadb.log" </dev/null >/dev/null 2>&1 &
    wait_for 60 MariaDB mariadb -e 'select 1'
    mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
                GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
}

write_configs() {
    local host; host=$(hostname)
    install -d -o slurm -g slurm /var/spool/slurmctld /var/spool/slurmd
    cat >/etc/slurm/slurmdbd.conf.new <<EOF
# Written by mixexp's tests/slurm/cluster.sh
DbdHost=localhost
SlurmUser=slurm
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
PidFile=$STATE/slurmdbd.pid
LogFile=$LOGS/slurmdbd.log
EOF
    chown slurm:slurm /etc/slurm/slurmdbd.conf.new && chmod 600 /etc/slurm/slurmdbd.conf.new
    {
        cat <<EOF
# Written by mixexp's tests/slurm/cluster.sh: one host, two nodes (two slurmd), accounting through slurmdbd.
ClusterName=mixexp
SlurmctldHost=$host
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd-%n.log
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobRequeue=1
EnforcePartLimits=ALL
ReturnToService=2
MinJobAge=600
KillWait=10
AuthInfo=cred_expire=10
SchedulerParameters=sched_interval=2
EOF
        for i in "${!NODES[@]}"; do
            echo "NodeName=${NODES[$i]} NodeHostname=$host NodeAddr=127.0.0.1 Port=${PORTS[$i]} CPUs=$CPUS State=UNKNOWN"
        done
        echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
    } >/etc/slurm/slurm.conf.new
    CHANGED=0
    for f in slurm.conf slurmdbd.conf; do
        if cmp -s "/etc/slurm/$f.new" "/etc/slurm/$f"; then rm "/etc/slurm/$f.new"
        else mv "/etc/slurm/$f.new" "/etc/slurm/$f"; CHANGED=1; fi
    done
}

start_slurm() {
    if ((CHANGED)); then stop "${NODES[@]/#/slurmd-}" slurmctld slurmdbd; fi  # a new config: restart them
    if ! running slurmdbd; then
        slurmdbd
        wait_for 60 slurmdbd sacctmgr -n show cluster
    fi
    if ! running slurmctld; then
        slurmctld
        wait_for 60 slurmctld scontrol ping
    fi
    for node in "${NODES[@]}"; do
        running "slurmd-$node" || slurmd -N "$node"
    done
    wait_for 90 "the nodes (sinfo idle)" sh -c "[ \"\$(sinfo -h -N -o %T | sort -u)\" = idle ]"
}

up() {
    [[ $EUID -eq 0 ]] || die "run as root (it installs packages and starts daemons)"
    install -d -o slurm -g slurm -m 1777 "$STATE" "$LOGS" 2>/dev/null || install -d -m 1777 "$STATE" "$LOGS"
    install_packages
    hosts
    start_munge
    start_db
    write_configs
    start_slurm
    echo "slurm-up: $(sinfo --version) up: $(sinfo -h -N -o '%N %T %c' | paste -sd, -)"
}

stop() {  # stop NAME...: the daemons whose pid files `up` wrote, in this order
    local name pid
    for name in "$@"; do
        [[ -f $STATE/$name.pid ]] || continue
        pid=$(cat "$STATE/$name.pid")
        if kill "$pid" 2>/dev/null; then
            for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        fi
        rm -f "$STATE/$name.pid"
    done
}

down() {
    stop "${NODES[@]/#/slurmd-}" slurmctld slurmdbd mariadbd munged
    sed -i '/# mixexp-slurm$/d' /etc/hosts
    echo "slurm-down: stopped"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) sinfo -N ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
