#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine for `make test-slurm` (tests/test_slurm.py). Debian/Ubuntu, root.
#
# Installs Debian's slurmctld, slurmd, slurm-client and munge when missing, writes /etc/slurm/slurm.conf (one node,
# partition `debug`, no accounting: the profile polls job states with squeue), starts munged, slurmctld and slurmd
# (no systemd needed), and waits until the node is idle. Idempotent: daemons already running are left alone.
#
# Two fake GPUs are configured by default (GRES gpu:2 backed by empty files) so that rules declaring `gpu=1` are really
# scheduled through `sbatch --gpus=1`, as on a GPU cluster; two run at once, each sees its own CUDA_VISIBLE_DEVICES,
# while torch still finds no CUDA device and uses the CPU. Environment:
#   BRUNO_SLURM_GPUS=N           number of fake GPUs (default 2); 0 = no GRES (GPU rules then need gpu=0)
#   BRUNO_SLURM_GPU_FILES=...    device files of real GPUs instead of the stand-ins, e.g. "/dev/nvidia0 /dev/nvidia1"
#   BRUNO_SLURM_RECORD=FILE      where to record "name pid" of every daemon this run started (stop.sh reads it);
#                                default /run/bruno-slurm/started
#   BRUNO_SLURM_FORCE=1          overwrite an /etc/slurm/slurm.conf that this script did not write
# Stop with tools/slurm/stop.sh (by PID, only the daemons recorded as started here).
set -euo pipefail

MARKER="# Written by bruno tools/slurm/start.sh"
RECORD=${BRUNO_SLURM_RECORD:-/run/bruno-slurm/started}
GPUS=${BRUNO_SLURM_GPUS:-2}
GPU_FILES=${BRUNO_SLURM_GPU_FILES:-}
CONF=/etc/slurm/slurm.conf
start_time=$(date +%s.%N)

say() { echo "[slurm-start] $*"; }
die() {
    echo "[slurm-start] ERROR: $*" >&2
    exit 1
}

[[ $(id -u) -eq 0 ]] || die "run as root (installs packages and starts system daemons)"

# --- packages -------------------------------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null ||
    ! command -v munged >/dev/null; then
    say "installing slurmctld slurmd slurm-client munge (apt-get)"
    packages=(slurmctld slurmd slurm-client munge)
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "${packages[@]}" >/tmp/bruno-slurm-apt.log 2>&1; then
        say "apt-get install failed; running apt-get update and retrying"
        apt-get update -q >>/tmp/bruno-slurm-apt.log 2>&1 || true
        apt-get install -y -q --no-install-recommends "${packages[@]}" >>/tmp/bruno-slurm-apt.log 2>&1 ||
            die "apt-get install failed; see /tmp/bruno-slurm-apt.log"
    fi
fi

mkdir -p "$(dirname "$RECORD")"
touch "$RECORD"

# alive NAME PIDFILE: the PID in PIDFILE if that process is running and is NAME, else nothing.
alive() {
    local name=$1 pidfile=$2 pid
    [[ -s $pidfile ]] || return 1
    pid=$(tr -dc '0-9' <"$pidfile")
    [[ -n $pid && -r /proc/$pid/comm && $(cat "/proc/$pid/comm") == "$name" ]] || return 1
    echo "$pid"
}

# wait_pidfile NAME PIDFILE: wait up to 10 s for the daemon to write its pidfile, then record it as started here.
wait_pidfile() {
    local name=$1 pidfile=$2 pid
    for _ in $(seq 100); do
        if pid=$(alive "$name" "$pidfile"); then
            echo "$name $pid" >>"$RECORD"
            say "$name started (pid $pid)"
            return 0
        fi
        sleep 0.1
    done
    die "$name did not start; see /var/log/slurm/ or /var/log/munge/"
}

# --- munge ----------------------------------------------------------------------------------------------------------
if [[ ! -s /etc/munge/munge.key ]]; then
    say "creating /etc/munge/munge.key"
    mungekey --create --keyfile /etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
install -d -o munge -g munge -m 755 /run/munge
install -d -o munge -g munge -m 700 /var/lib/munge /var/log/munge
if pid=$(alive munged /run/munge/munged.pid); then
    say "munged already running (pid $pid)"
else
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged || die "munged failed to start; see /var/log/munge/munged.log"
    wait_pidfile munged /run/munge/munged.pid
fi
munge -n | unmunge >/dev/null || die "munge does not work (munge -n | unmunge failed)"

# --- slurm.conf -----------------------------------------------------------------------------------------------------
host=$(hostname -s)
getent hosts "$host" >/dev/null || die "hostname '$host' does not resolve; add it to /etc/hosts"
cpus=$(nproc)
# RealMemory must not exceed what slurmd detects, or the node is marked INVALID: take 80 % of the total.
mem_mb=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)
gres_line=""
if [[ $GPUS != 0 ]]; then
    if [[ -n $GPU_FILES ]]; then
        read -r -a files <<<"$GPU_FILES"
    else
        # SLURM wants one distinct device file per GPU; empty files stand in for them.
        install -d /run/bruno-slurm
        files=()
        for i in $(seq 0 $((GPUS - 1))); do
            touch "/run/bruno-slurm/fake-gpu$i"
            files+=("/run/bruno-slurm/fake-gpu$i")
        done
    fi
    gres_line=" Gres=gpu:${#files[@]}"
fi

if [[ -e $CONF ]] && ! grep -qF "$MARKER" "$CONF" && [[ ${BRUNO_SLURM_FORCE:-0} != 1 ]]; then
    die "$CONF exists and was not written by this script; refusing to overwrite it (set BRUNO_SLURM_FORCE=1)"
fi
install -d -o slurm -g slurm /var/lib/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm
install -d /etc/slurm
new_conf=$(mktemp)
cat >"$new_conf" <<EOF
$MARKER: a one-node test cluster (no accounting; poll jobs with squeue).
ClusterName=ci
SlurmctldHost=$host
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Finished jobs stay visible to squeue this long; the Snakemake plugin needs >= 3 x its first status-check delay.
MinJobAge=300
KillWait=5
InactiveLimit=0
${gres_line:+GresTypes=gpu}
NodeName=$host CPUs=$cpus RealMemory=$mem_mb${gres_line} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
if [[ -n $gres_line ]]; then
    {
        echo "$MARKER"
        for f in "${files[@]}"; do echo "NodeName=$host Name=gpu File=$f"; done
    } >/etc/slurm/gres.conf
else
    rm -f /etc/slurm/gres.conf
fi
conf_changed=0
cmp -s "$new_conf" "$CONF" || conf_changed=1
install -m 644 "$new_conf" "$CONF"
rm -f "$new_conf"

# --- daemons --------------------------------------------------------------------------------------------------------
if pid=$(alive slurmctld /run/slurmctld.pid); then
    say "slurmctld already running (pid $pid)"
    if [[ $conf_changed == 1 ]]; then
        say "slurm.conf changed: scontrol reconfigure"
        scontrol reconfigure
    fi
else
    rm -f /run/slurmctld.pid
    slurmctld || die "slurmctld failed to start; see /var/log/slurm/slurmctld.log"
    wait_pidfile slurmctld /run/slurmctld.pid
fi
if pid=$(alive slurmd /run/slurmd.pid); then
    say "slurmd already running (pid $pid)"
else
    rm -f /run/slurmd.pid
    slurmd || die "slurmd failed to start; see /var/log/slurm/slurmd.log"
    wait_pidfile slurmd /run/slurmd.pid
fi

state=""
for _ in $(seq 300); do
    state=$(sinfo -h -n "$host" -o %t 2>/dev/null | head -n1 || true)
    case $state in
        idle | mix | alloc) break ;;
        down* | drain* | inval*) scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.1
done
case $state in
    idle | mix | alloc) ;;
    *) die "node $host is '${state:-unknown}', not idle, after 30 s; see /var/log/slurm/slurmctld.log and slurmd.log" ;;
esac
timeout 60 srun -N1 -t 1 true || die "smoke test 'srun true' failed"
say "cluster up: node $host ($cpus CPUs, ${mem_mb} MB${gres_line:+, gpu:${#files[@]}}), partition debug;" \
    "$(awk -v s="$start_time" -v e="$(date +%s.%N)" 'BEGIN {printf "%.1f", e - s}') s"
