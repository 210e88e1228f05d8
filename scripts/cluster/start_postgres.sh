#!/usr/bin/env bash
# A PostgreSQL server for ftsweep studies, run from the distribution's packages
# (Debian/Ubuntu: `apt-get install postgresql`; any /usr/lib/postgresql/*/bin, or set PG_BINDIR).
#
#   export FTSWEEP_DB_PASSWORD=...    # required by `start`; never printed, never on a command line
#   scripts/cluster/start_postgres.sh start DATADIR [--port 5432] [--listen 127.0.0.1] [--allow CIDR]...
#   scripts/cluster/start_postgres.sh status DATADIR
#   scripts/cluster/start_postgres.sh stop DATADIR
#   scripts/cluster/start_postgres.sh createdb DATADIR NAME   # one more database owned by ftsweep
#
# start: when DATADIR is new, creates the database cluster there (initdb); starts the server
# (pg_ctl start -w) with its unix socket inside DATADIR, so it never collides with a system
# PostgreSQL; creates the role `ftsweep` (its password is set to $FTSWEEP_DB_PASSWORD on every start)
# and the database `optuna` owned by it; prints the storage URL with the password as ***.
# Running `start` again after a reboot restarts the same data; --port and --listen may change.
#
# Who may connect: over TCP only the role ftsweep, with its password (scram-sha-256). The superuser
# `postgres` logs in only through the unix socket in DATADIR (mode 0700), as the OS user that owns
# the server (peer). Run as root, the server runs as the `postgres` system user and DATADIR is
# chown'ed to it (its parent directories must let that user through); run as anyone else, it runs
# as you.
#
# On a cluster: run it on a node that every compute node can reach and that outlives the jobs
# (a login or service node), with DATADIR on that node's local disk, not a network filesystem:
#   scripts/cluster/start_postgres.sh start /srv/ftsweep-pg --listen 0.0.0.0 --allow 10.1.0.0/16
# --listen 0.0.0.0 listens on every interface (the default, 127.0.0.1, only serves the same node);
# --allow adds the pg_hba.conf line `host all ftsweep 10.1.0.0/16 scram-sha-256` for the cluster's
# subnet (remote nodes are refused without one). Then, on every node that launches, works or inspects
# (ftsweep reads the URL from the environment, so the password stays out of `ps` and of files):
#   export FTSWEEP_STORAGE="postgresql://ftsweep:$FTSWEEP_DB_PASSWORD@DBHOST:5432/optuna"
#   ftsweep launch sweep.yaml --workers 0         # once: prepare the study
#   ftsweep worker NAME                           # on each compute node, as many as you like
#   ftsweep status NAME
# Percent-encode @ : / % # ? in the password inside the URL. A worker running trials holds two
# connections (one for its heartbeat thread), so the default max_connections = 100 serves about 45
# workers; for more, raise it in DATADIR/postgresql.conf and start again.
set -euo pipefail

ROLE=ftsweep
DATABASE=optuna
SUPERUSER=postgres
PROG=${0##*/}

usage() {
  sed -n '5,9p' "$0" | sed 's/^#  *//'
  exit 2
}

die() { echo "$PROG: $*" >&2; exit 1; }

find_bindir() {
  if [[ -n ${PG_BINDIR:-} ]]; then
    [[ -x $PG_BINDIR/initdb ]] || die "PG_BINDIR=$PG_BINDIR has no initdb"
    echo "$PG_BINDIR"
    return
  fi
  # Debian's layout, one folder per major version: take the newest.
  local initdb
  initdb=$(printf '%s\n' /usr/lib/postgresql/*/bin/initdb | grep -v '\*' | sort -V | tail -n 1)
  if [[ -z $initdb ]]; then initdb=$(command -v initdb || true); fi
  [[ -n $initdb ]] || die "PostgreSQL server binaries not found (no initdb in /usr/lib/postgresql/*/bin or PATH).
Install them (apt-get install postgresql) or set PG_BINDIR to their folder"
  dirname "$initdb"
}

# Run a command as the server's OS user: `postgres` when we are root (PostgreSQL refuses root).
as_owner() {
  if (( EUID == 0 )); then
    # cd /: the postgres user may not be allowed into the caller's working directory.
    (cd / && runuser -u "$OWNER" -- "$@")
  else
    "$@"
  fi
}

conf_value() {  # conf_value KEY: the value start wrote into DATADIR/ftsweep.conf
  sed -n "s/^$1 = '\{0,1\}\([^']*\)'\{0,1\}$/\1/p" "$DATADIR/ftsweep.conf" 2>/dev/null | tail -n 1
}

url_host() {  # the host to put in the URL for a listen_addresses value
  local first=${1%%,*}
  first=${first// /}
  case $first in
    0.0.0.0|'*'|::) hostname -f 2>/dev/null || hostname ;;
    *:*) echo "[$first]" ;;
    *) echo "$first" ;;
  esac
}

print_url() {
  local port host
  port=$(conf_value port); host=$(url_host "$(conf_value listen_addresses)")
  echo "Storage URL: postgresql://$ROLE:***@$host:$port/$DATABASE"
  echo "Put the real URL in FTSWEEP_STORAGE on every machine that launches, works on or inspects a sweep"
  echo "(ftsweep launch, worker, status... read it; percent-encode @ : / % # ? in the password):"
  echo "  export FTSWEEP_STORAGE=\"postgresql://$ROLE:\$FTSWEEP_DB_PASSWORD@$host:$port/$DATABASE\""
}

# psql as the superuser through the unix socket in DATADIR, SQL on stdin (never on the command line).
superuser_psql() {
  as_owner "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$DATADIR" -p "$(conf_value port)" -U "$SUPERUSER" \
    -d postgres "$@"
}

is_running() { as_owner "$BINDIR/pg_ctl" status -D "$DATADIR" >/dev/null 2>&1; }

init_cluster() {
  echo "Creating a PostgreSQL cluster in $DATADIR"
  local out
  out=$(as_owner "$BINDIR/initdb" -D "$DATADIR" -U "$SUPERUSER" -E UTF8 --locale=C \
    --auth-local=peer --auth-host=scram-sha-256 2>&1) || { echo "$out" >&2; die "initdb failed"; }
  # Our own access rules replace initdb's: the superuser only through the socket, as the server's OS
  # user (mapped to `postgres` by pg_ident.conf), everything else only as ftsweep with a password.
  as_owner tee "$DATADIR/pg_hba.conf" >/dev/null <<EOF
# Written by $PROG. TYPE DATABASE USER ADDRESS METHOD
local   all   $SUPERUSER                    peer map=owner
host    all   $ROLE       127.0.0.1/32      scram-sha-256
host    all   $ROLE       ::1/128           scram-sha-256
EOF
  echo "owner   $OWNER   $SUPERUSER" | as_owner tee -a "$DATADIR/pg_ident.conf" >/dev/null
  echo "include_if_exists = 'ftsweep.conf'  # port, addresses, socket: rewritten by $PROG start" \
    | as_owner tee -a "$DATADIR/postgresql.conf" >/dev/null
}

cmd_start() {
  local port=5432 listen=127.0.0.1 allow=()
  while (( $# )); do
    case $1 in
      --port) port=${2:?--port needs a value}; shift 2 ;;
      --listen) listen=${2:?--listen needs a value}; shift 2 ;;
      --allow) allow+=("${2:?--allow needs a CIDR, e.g. 10.1.0.0/16}"); shift 2 ;;
      *) die "unknown option $1 (start takes --port P, --listen ADDR, --allow CIDR)" ;;
    esac
  done
  [[ $port =~ ^[0-9]+$ ]] || die "--port must be a number, not '$port'"
  [[ -n ${FTSWEEP_DB_PASSWORD:-} ]] || die "set FTSWEEP_DB_PASSWORD to the password for role $ROLE (it is never printed)"
  # The socket path must fit in 107 bytes (sun_path).
  (( ${#DATADIR} + 18 <= 107 )) || die "DATADIR path too long for a unix socket inside it: $DATADIR"

  if [[ -e $DATADIR && ! -d $DATADIR ]]; then die "$DATADIR exists and is not a directory"; fi
  mkdir -p "$DATADIR"
  if (( EUID == 0 )); then
    id -u "$OWNER" >/dev/null 2>&1 || die "no '$OWNER' system user (PostgreSQL refuses to run as root)"
    chown "$OWNER:" "$DATADIR"
    chmod 0700 "$DATADIR"
    as_owner test -w "$DATADIR" \
      || die "user $OWNER cannot reach $DATADIR: let it through the parent directories (chmod o+x) or pick another place"
  fi
  if [[ ! -f $DATADIR/PG_VERSION ]]; then
    [[ -z $(ls -A "$DATADIR") ]] || die "$DATADIR is neither empty nor a PostgreSQL data directory"
    init_cluster
  fi

  if is_running; then
    echo "Already running: $DATADIR (port $(conf_value port); stop it first to change --port or --listen)"
  else
    as_owner tee "$DATADIR/ftsweep.conf" >/dev/null <<EOF
# Written by $PROG start; rewritten on every start.
port = $port
listen_addresses = '$listen'
unix_socket_directories = '$DATADIR'
EOF
    as_owner "$BINDIR/pg_ctl" start -w -t 60 -D "$DATADIR" -l "$DATADIR/postgres.log" >/dev/null \
      || { tail -n 20 "$DATADIR/postgres.log" >&2 || true; die "the server did not start (log: $DATADIR/postgres.log)"; }
  fi

  local cidr reload=0
  for cidr in "${allow[@]}"; do
    [[ $cidr =~ ^[0-9a-fA-F.:]+/[0-9]+$ ]] || die "--allow takes an address range like 10.1.0.0/16, not '$cidr'"
    if ! grep -q "^host  *all  *$ROLE  *$cidr " "$DATADIR/pg_hba.conf"; then
      printf 'host    all   %s       %s  scram-sha-256\n' "$ROLE" "$cidr" | as_owner tee -a "$DATADIR/pg_hba.conf" >/dev/null
      reload=1
    fi
  done
  if (( reload )); then as_owner "$BINDIR/pg_ctl" reload -D "$DATADIR" >/dev/null; fi

  # The password travels on psql's stdin as a quoted literal (quotes doubled). The session stops the
  # server from logging statements, so it never lands in postgres.log either, even on an error.
  local quoted=${FTSWEEP_DB_PASSWORD//\'/\'\'}
  superuser_psql <<EOF
SET log_statement = 'none';
SET log_min_error_statement = 'panic';
SELECT 'CREATE ROLE $ROLE LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$ROLE')
\gexec
ALTER ROLE $ROLE WITH LOGIN PASSWORD '$quoted';
SELECT 'CREATE DATABASE $DATABASE OWNER $ROLE' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DATABASE')
\gexec
EOF
  echo "PostgreSQL $("$BINDIR/postgres" --version | awk '{print $3}') running: data in $DATADIR," \
    "listening on $(conf_value listen_addresses) port $(conf_value port) (log: $DATADIR/postgres.log)"
  print_url
}

cmd_stop() {
  [[ -f $DATADIR/PG_VERSION ]] || die "$DATADIR is not a PostgreSQL data directory"
  if is_running; then
    as_owner "$BINDIR/pg_ctl" stop -w -m fast -D "$DATADIR" >/dev/null
    echo "Stopped the server of $DATADIR"
  else
    echo "Not running: $DATADIR"
  fi
}

cmd_status() {
  [[ -f $DATADIR/PG_VERSION ]] || { echo "No PostgreSQL data directory at $DATADIR"; exit 4; }
  if is_running; then
    echo "Running: $DATADIR, listening on $(conf_value listen_addresses) port $(conf_value port)"
    print_url
  else
    echo "Not running: $DATADIR (start it with: $PROG start $DATADIR)"
    exit 3
  fi
}

cmd_createdb() {
  local name=${1:?usage: $PROG createdb DATADIR NAME}
  [[ $name =~ ^[a-z_][a-z0-9_]{0,62}$ ]] || die "database names here are lowercase letters, digits and _ (not '$name')"
  is_running || die "the server of $DATADIR is not running"
  superuser_psql <<EOF
SELECT 'CREATE DATABASE $name OWNER $ROLE' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$name')
\gexec
EOF
  echo "Database $name (owner $ROLE) on port $(conf_value port)"
}

(( $# >= 2 )) || usage
command=$1
DATADIR=$(realpath -m -- "$2")
shift 2
if (( EUID == 0 )); then OWNER=postgres; else OWNER=$(id -un); fi
BINDIR=$(find_bindir)

case $command in
  start) cmd_start "$@" ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  createdb) cmd_createdb "$@" ;;
  *) usage ;;
esac
