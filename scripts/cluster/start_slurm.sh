#!/usr/bin/env bash
# A one-machine SLURM cluster for trying ftsweep's SLURM path (and for its tests), run from the
# distribution's packages (Debian/Ubuntu: `apt-get install slurm-wlm munge`). Run it as root.
#
#   scripts/cluster/start_slurm.sh start DIR [--port 6817] [--partition debug]
#   scripts/cluster/start_slurm.sh status DIR
#   scripts/cluster/start_slurm.sh stop DIR
#   export SLURM_CONF=DIR/slurm.conf      # then sbatch, squeue, scancel... talk to this cluster
#
# start: everything lives in DIR (created when missing): a MUNGE key and its own munged (socket in DIR,
# so a system munged, if any, is left alone), a slurm.conf for this host with its real CPU count and
# memory (`slurmd -C`), select/cons_tres allocating single CPUs (two 1-CPU jobs run side by side on two
# cores), one partition holding this node, and slurmctld + slurmd as root with their state, spool, logs
# and pid files in DIR. The daemons listen on 127.0.0.1 only: slurmctld on --port, slurmd on the next
# port. Running `start` again on a running DIR changes nothing; on a stopped one it starts the same
# cluster (its queue and job ids kept in DIR/state).
# Requeued jobs wait AuthInfo's cred_expire (120 s by default in SLURM) before they start again; here it
# is 10 s so a test of `scontrol requeue` does not wait two minutes.
# stop: cancels the cluster's jobs (waiting up to 60 s for them to end), then stops slurmd, slurmctld
# and munged of DIR; DIR stays (remove it yourself).
set -euo pipefail

PROG=${0##*/}

usage() {
  sed -n '5,8p' "$0" | sed 's/^#  *//'
  exit 2
}

die() { echo "$PROG: $*" >&2; exit 1; }

need() {  # need BINARY...: every one on PATH (or /usr/sbin), else say what to install
  local b missing=()
  for b in "$@"; do
    command -v "$b" >/dev/null 2>&1 || [[ -x /usr/sbin/$b ]] || missing+=("$b")
  done
  (( ${#missing[@]} == 0 )) || die "not installed: ${missing[*]}. Install SLURM and MUNGE from the distribution:
  apt-get install -y --no-install-recommends slurm-wlm munge"
}

bin() { command -v "$1" 2>/dev/null || echo "/usr/sbin/$1"; }

pid_alive() {  # pid_alive PIDFILE NAME: the process in PIDFILE runs and is NAME
  local pid
  [[ -s $1 ]] || return 1
  pid=$(<"$1")
  [[ $pid =~ ^[0-9]+$ ]] && [[ -r /proc/$pid/comm ]] && [[ $(</proc/$pid/comm) == "$2"* ]]
}

conf_value() {  # conf_value KEY: its value in DIR/slurm.conf
  sed -n "s/^$1=\([^ ]*\).*/\1/p" "$DIR/slurm.conf" 2>/dev/null | tail -n 1
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...: poll COMMAND every 0.2 s
  local seconds=$1 what=$2 deadline
  shift 2
  deadline=$(( $(date +%s) + seconds ))
  until "$@" >/dev/null 2>&1; do
    (( $(date +%s) < deadline )) || return 1
    sleep 0.2
  done
}

start_munge() {
  mkdir -p "$DIR/munge"
  chmod 0700 "$DIR/munge"
  if [[ ! -s $DIR/munge/munge.key ]]; then
    if command -v mungekey >/dev/null 2>&1 || [[ -x /usr/sbin/mungekey ]]; then
      "$(bin mungekey)" --create --keyfile="$DIR/munge/munge.key" >/dev/null
    else
      dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    fi
    chmod 0600 "$DIR/munge/munge.key"
  fi
  if pid_alive "$DIR/munge/munged.pid" munged; then return; fi
  rm -f "$DIR/munge/munge.socket" "$DIR/munge/munge.socket.lock"
  # --force: DIR may sit under a world-writable /tmp, which munged otherwise refuses as insecure.
  "$(bin munged)" --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed" \
    || { tail -n 20 "$DIR/munge/munged.log" >&2 || true; die "munged did not start (log: $DIR/munge/munged.log)"; }
  wait_for 10 munge munge --socket="$DIR/munge/munge.socket" --string=ping \
    || die "munged does not answer on $DIR/munge/munge.socket (log: $DIR/munge/munged.log)"
}

write_conf() {  # write_conf PORT PARTITION: a slurm.conf for this host
  local port=$1 partition=$2 node
  # `slurmd -C`: this host as SLURM sees it (NodeName=HOST CPUs=... RealMemory=...), minus UpTime.
  node=$("$(bin slurmd)" -C | sed -n 's/^\(NodeName=.*\)$/\1/p' | head -n 1)
  [[ -n $node ]] || die "slurmd -C printed no node line"
  NODENAME=$(sed 's/^NodeName=\([^ ]*\).*/\1/' <<<"$node")
  cat >"$DIR/slurm.conf" <<EOF
# Written by $PROG start for this host alone; rewritten on every start.
ClusterName=ftsweep
SlurmctldHost=$NODENAME(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=10
# Both daemons bind 127.0.0.1 (what NodeAddr / SlurmctldHost say), not every address of the host.
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups (containers, CI runners): processes tracked by their parent pids, no CPU binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# An impossible request (more CPUs than the node has) is refused by sbatch instead of pending forever.
EnforcePartLimits=ALL
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=600
$node State=UNKNOWN NodeAddr=127.0.0.1
PartitionName=$partition Nodes=$NODENAME Default=YES MaxTime=INFINITE State=UP
EOF
}

cmd_start() {
  local port=6817 partition=debug
  while (( $# )); do
    case $1 in
      --port) port=${2:?--port needs a value}; shift 2 ;;
      --partition) partition=${2:?--partition needs a name}; shift 2 ;;
      *) die "unknown option $1 (start takes --port P, --partition NAME)" ;;
    esac
  done
  [[ $port =~ ^[0-9]+$ ]] || die "--port must be a number, not '$port'"
  [[ $partition =~ ^[A-Za-z0-9_-]+$ ]] || die "--partition takes letters, digits, _ and -, not '$partition'"
  (( EUID == 0 )) || die "run it as root: slurmd starts job steps as their users"
  need slurmctld slurmd munged munge sbatch scontrol
  if [[ -e $DIR && ! -d $DIR ]]; then die "$DIR exists and is not a directory"; fi
  mkdir -p "$DIR"
  chmod 0755 "$DIR"   # job steps of other users read slurm.conf; munge/ stays 0700
  mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
  export SLURM_CONF=$DIR/slurm.conf

  start_munge
  if pid_alive "$DIR/slurmctld.pid" slurmctld && pid_alive "$DIR/slurmd.pid" slurmd; then
    echo "Already running: the SLURM cluster of $DIR (slurmctld on 127.0.0.1:$(conf_value SlurmctldPort))"
  else
    cmd_stop_daemons
    write_conf "$port" "$partition"
    "$(bin slurmctld)" -f "$SLURM_CONF" \
      || die "slurmctld did not start (log: $DIR/log/slurmctld.log)"
    wait_for 20 slurmctld scontrol ping \
      || { tail -n 20 "$DIR/log/slurmctld.log" >&2 || true; die "slurmctld does not answer on 127.0.0.1:$port (log: $DIR/log/slurmctld.log)"; }
    "$(bin slurmd)" -f "$SLURM_CONF" \
      || die "slurmd did not start (log: $DIR/log/slurmd.log)"
  fi
  # The node is up when slurmctld has heard from slurmd: idle (or allocated/mixed, jobs kept from before).
  if ! wait_for 30 node node_ready; then
    tail -n 20 "$DIR/log/slurmd.log" >&2 || true
    die "the node did not come up: $(scontrol show node -o 2>&1 | head -c 400) (log: $DIR/log/slurmd.log)"
  fi
  echo "SLURM $("$(bin slurmctld)" -V | awk '{print $2}') running from $DIR: node $(conf_value NodeName)" \
    "$(scontrol show node -o | sed -n 's/.*CPUTot=\([0-9]*\).*RealMemory=\([0-9]*\).*/(\1 CPUs, \2 MB)/p')," \
    "partition $(sed -n 's/^PartitionName=\([^ ]*\).*/\1/p' "$SLURM_CONF"), slurmctld on 127.0.0.1:$(conf_value SlurmctldPort)"
  echo "Use it:  export SLURM_CONF=$SLURM_CONF"
  echo "Stop it: $0 stop $DIR"
}

no_jobs() { [[ -z $(squeue -h -o %i 2>/dev/null) ]] && squeue >/dev/null 2>&1; }

node_ready() {
  scontrol show node -o 2>/dev/null | grep -Eq 'State=(IDLE|MIXED|ALLOCATED)([ +]|$)'
}

stop_daemon() {  # stop_daemon PIDFILE NAME: SIGTERM, then wait up to 20 s (SIGKILL after)
  local pid i
  pid_alive "$1" "$2" || { rm -f "$1"; return 0; }
  pid=$(<"$1")
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 100); do
    [[ -d /proc/$pid ]] || { rm -f "$1"; return 0; }
    sleep 0.2
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$1"
}

cmd_stop_daemons() {
  stop_daemon "$DIR/slurmd.pid" slurmd
  stop_daemon "$DIR/slurmctld.pid" slurmctld
}

cmd_stop() {
  [[ -f $DIR/slurm.conf ]] || die "$DIR holds no cluster of $PROG (no slurm.conf)"
  local was=0
  if pid_alive "$DIR/slurmctld.pid" slurmctld || pid_alive "$DIR/slurmd.pid" slurmd; then was=1; fi
  if pid_alive "$DIR/slurmctld.pid" slurmctld; then
    # Its jobs first (their workers get SIGTERM and queue their trials again), so no job step outlives the
    # daemons; 60 s at most.
    export SLURM_CONF=$DIR/slurm.conf
    scancel --full --quiet --partition="$(sed -n 's/^PartitionName=\([^ ]*\).*/\1/p' "$SLURM_CONF")" 2>/dev/null || true
    wait_for 60 jobs no_jobs || echo "$PROG: jobs still ending: $(squeue -h -o '%i %T' | tr '\n' ' ')" >&2
  fi
  cmd_stop_daemons
  stop_daemon "$DIR/munge/munged.pid" munged
  if (( was )); then echo "Stopped the SLURM cluster of $DIR"; else echo "Not running: $DIR"; fi
}

cmd_status() {
  [[ -f $DIR/slurm.conf ]] || { echo "No SLURM cluster of $PROG in $DIR"; exit 4; }
  if pid_alive "$DIR/slurmctld.pid" slurmctld && pid_alive "$DIR/slurmd.pid" slurmd \
      && pid_alive "$DIR/munge/munged.pid" munged; then
    echo "Running: the SLURM cluster of $DIR (slurmctld on 127.0.0.1:$(conf_value SlurmctldPort))"
    SLURM_CONF=$DIR/slurm.conf sinfo 2>/dev/null || true
    echo "Use it: export SLURM_CONF=$DIR/slurm.conf"
  else
    echo "Not running: $DIR (start it with: $0 start $DIR)"
    exit 3
  fi
}

(( $# >= 2 )) || usage
command=$1
DIR=$(realpath -m -- "$2")
shift 2
case $command in
  start) cmd_start "$@" ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) usage ;;
esac
