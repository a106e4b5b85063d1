#!/usr/bin/env bash
# Stop the daemons that tools/slurm/start.sh started (slurmd, slurmctld, munged, in that order), by PID.
#
# Reads the "name pid" lines start.sh recorded (BRUNO_SLURM_RECORD, default /run/bruno-slurm/started); a daemon that
# was already running before start.sh ran is not in the record and is left alone. Each recorded process gets TERM,
# then KILL after 15 s, and only if /proc/PID/comm still names that daemon (a reused PID is never signalled). Its
# pidfile is removed too (a stale /run/slurmctld.pid makes Debian's package removal fail). Safe to run twice.
set -uo pipefail

RECORD=${BRUNO_SLURM_RECORD:-/run/bruno-slurm/started}
say() { echo "[slurm-stop] $*"; }

[[ -s $RECORD ]] || {
    say "nothing recorded in $RECORD; nothing to stop"
    rm -f "$RECORD"
    exit 0
}

declare -A pidfile=([slurmd]=/run/slurmd.pid [slurmctld]=/run/slurmctld.pid [munged]=/run/munge/munged.pid)

is_daemon() { [[ -r /proc/$2/comm && $(cat "/proc/$2/comm" 2>/dev/null) == "$1" ]]; }

status=0
for name in slurmd slurmctld munged; do
    # Every PID recorded for this daemon (start.sh may have run more than once), newest first.
    for pid in $(awk -v n="$name" '$1 == n {print $2}' "$RECORD" | tac); do
        if is_daemon "$name" "$pid"; then
            kill -TERM "$pid" 2>/dev/null
            for _ in $(seq 150); do
                is_daemon "$name" "$pid" || break
                sleep 0.1
            done
            if is_daemon "$name" "$pid"; then
                say "$name (pid $pid) ignored TERM for 15 s; sending KILL"
                kill -KILL "$pid" 2>/dev/null
                sleep 0.2
            fi
            if is_daemon "$name" "$pid"; then
                say "ERROR: $name (pid $pid) is still running"
                status=1
                continue
            fi
            say "$name (pid $pid) stopped"
        fi
        file=${pidfile[$name]}
        if [[ -e $file && $(tr -dc '0-9' <"$file") == "$pid" ]]; then
            rm -f "$file"
        fi
    done
done
[[ $status == 0 ]] && rm -f "$RECORD"
exit $status
