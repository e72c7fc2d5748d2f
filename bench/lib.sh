# Shared helpers for the bench/*.sh scripts. Source it; do not run it.
#
# Everything runs from a fresh temp dir ($WORK), on free 127.0.0.1 ports, with its own config
# files; every process a script starts is registered with `track` and killed (with its
# descendants, by pid) by the EXIT trap.

set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
NGINX=${NGINX:-/usr/sbin/nginx}
HAPROXY=${HAPROXY:-/usr/sbin/haproxy}
# CPU pinning: the proxy under test on PROXY_CPUS, the upstream and wrk on LOAD_CPUS.
# Set PIN=0 to run unpinned.
PIN=${PIN:-1}
PROXY_CPUS=${PROXY_CPUS:-0}
LOAD_CPUS=${LOAD_CPUS:-1}
if [ "$(nproc)" -lt 2 ]; then PIN=0; fi

TRACKED=()

bench_init() {
    "$BENCH_DIR/install-deps"
    # One benchmark at a time on this machine: two at once would measure each other.
    exec 9>"${TMPDIR:-/tmp}/river-bench.lock"
    if ! flock -n 9; then
        echo "waiting for another bench/ script to finish (${TMPDIR:-/tmp}/river-bench.lock)..." >&2
        flock -w 600 9 || { echo "error: still locked after 600 s" >&2; exit 1; }
    fi
    local river=${RIVER:-$ROOT/target/release/river}
    if [ ! -x "$river" ]; then
        echo "error: $river not found; build it: cargo build --release -p river -p riverctl" >&2
        exit 1
    fi
    WORK=$(mktemp -d /tmp/river-bench.XXXXXX)
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM HUP PIPE
    # A private copy, so that a concurrent `cargo build` cannot swap the binary mid-run
    # (the master re-executes /proc/self/exe for its workers).
    cp "$river" "$WORK/river"
    RIVER_BUILT=$(date -u -r "$river" '+%Y-%m-%d %H:%M UTC')
    RIVER="$WORK/river"
    RIVER_VERSION=$("$RIVER" --version 2>/dev/null | sed -n 1p || echo river)
    NGINX_VERSION=$("$NGINX" -v 2>&1 | sed 's/.*nginx\//nginx /')
    HAPROXY_VERSION=$("$HAPROXY" -v | awk 'NR == 1 { print "haproxy " $3 }')
}

# All descendants of a pid (children first-level, then theirs), one per line.
descendants() {
    local pid=$1 child
    for child in $(ps -o pid= --ppid "$pid" 2>/dev/null); do
        echo "$child"
        descendants "$child"
    done
}

track() { TRACKED+=("$1"); }

# Kill a process and all its descendants, by pid: TERM, then KILL what is left after 3 s.
kill_tree() {
    local pid=$1 pids p i
    pids="$pid $(descendants "$pid" | tr '\n' ' ')"
    for p in $pids; do kill -TERM "$p" 2>/dev/null || true; done
    for i in $(seq 30); do
        local alive=0
        for p in $pids; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive -eq 0 ] && break
        sleep 0.1
    done
    for p in $pids; do kill -KILL "$p" 2>/dev/null || true; done
    wait "$pid" 2>/dev/null || true
}

bench_cleanup() {
    local rc=$? p
    set +e
    for p in "${TRACKED[@]}"; do kill_tree "$p"; done
    if [ "${BENCH_KEEP:-0}" = 1 ] || [ $rc -ne 0 ]; then
        echo "(work dir kept: $WORK)" >&2
    else
        rm -rf "$WORK"
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_port PORT [SECONDS]: until 127.0.0.1:PORT accepts a connection.
wait_port() {
    local port=$1 secs=${2:-10} i
    for i in $(seq $((secs * 20))); do
        if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$port),0.2).close()" 2>/dev/null; then
            return 0
        fi
        sleep 0.05
    done
    echo "error: nothing listens on 127.0.0.1:$port after ${secs}s" >&2
    return 1
}

# $(pin CPUS) CMD...: prefix that runs CMD on CPUS when pinning is on. (A prefix, not a
# function wrapper, so that `$(pin X) cmd &` leaves cmd's own pid in $!: taskset execs.)
pin() {
    if [ "$PIN" = 1 ] && [ -n "$1" ]; then echo "taskset -c $1"; fi
}

# ---------------------------------------------------------------- nginx

# nginx_conf DIR WORKERS: the common head of an nginx config (foreground master, own paths).
nginx_conf_head() {
    local dir=$1 workers=$2
    cat <<EOF
daemon off;
master_process on;
worker_processes $workers;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
EOF
}

# start_nginx DIR CPUS: run $DIR/nginx.conf; sets NGINX_PID.
start_nginx() {
    local dir=$1 cpus=$2
    "$NGINX" -t -q -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
    $(pin "$cpus") "$NGINX" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" \
        >"$dir/stdout.log" 2>&1 9>&- &
    NGINX_PID=$!
    track $NGINX_PID
}

# The fast upstream: nginx answering `return 200` with a 13-byte body, on LOAD_CPUS.
# Sets UPSTREAM_PORT.
start_fast_upstream() {
    local dir=$WORK/upstream
    mkdir -p "$dir"
    UPSTREAM_PORT=$(free_port)
    {
        nginx_conf_head "$dir" 1
        cat <<EOF
    server {
        listen 127.0.0.1:$UPSTREAM_PORT reuseport backlog=4096;
        location / { default_type text/plain; return 200 "hello, world\n"; }
    }
}
EOF
    } >"$dir/nginx.conf"
    start_nginx "$dir" "$LOAD_CPUS"
    UPSTREAM_PID=$NGINX_PID
    wait_port "$UPSTREAM_PORT"
}

# ---------------------------------------------------------------- HAProxy

# start_haproxy DIR CPUS: run $DIR/haproxy.cfg in master-worker mode (-W, foreground); sets HAPROXY_PID.
start_haproxy() {
    local dir=$1 cpus=$2
    "$HAPROXY" -c -q -f "$dir/haproxy.cfg"
    $(pin "$cpus") "$HAPROXY" -W -f "$dir/haproxy.cfg" >"$dir/haproxy.log" 2>&1 9>&- &
    HAPROXY_PID=$!
    track $HAPROXY_PID
}

# haproxy_cfg_head DIR THREADS
haproxy_cfg_head() {
    local dir=$1 threads=$2
    cat <<EOF
global
    nbthread $threads
    maxconn 4096
    pidfile $dir/haproxy.pid
    stats socket $dir/haproxy.sock mode 600 level admin expose-fd listeners
defaults
    mode http
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout http-keep-alive 75s
    option http-keep-alive
EOF
}

# ---------------------------------------------------------------- River

# start_river DIR CPUS: run $DIR/river.kdl in the foreground (stderr to $DIR/river.log);
# waits for "generation serving"; sets RIVER_PID.
start_river() {
    local dir=$1 cpus=$2 i
    "$RIVER" --validate -c "$dir/river.kdl" >/dev/null
    $(pin "$cpus") "$RIVER" -c "$dir/river.kdl" 2>"$dir/river.log" 9>&- &
    RIVER_PID=$!
    track $RIVER_PID
    for i in $(seq 200); do
        grep -q "generation serving" "$dir/river.log" 2>/dev/null && return 0
        kill -0 $RIVER_PID 2>/dev/null || break
        sleep 0.05
    done
    echo "error: river did not start; $dir/river.log:" >&2
    cat "$dir/river.log" >&2
    return 1
}

# ---------------------------------------------------------------- wrk

# run_wrk OUT ARGS...: run wrk on LOAD_CPUS, output to OUT; then `wrk_stats OUT`.
run_wrk() {
    local out=$1; shift
    $(pin "$LOAD_CPUS") wrk "$@" >"$out" 2>&1 9>&- || true
    if ! grep -q " requests in " "$out" || grep -q "^ *0 requests in" "$out"; then
        echo "warning: wrk $* gave no requests:" >&2
        sed 's/^/    /' "$out" >&2
    fi
}

# wrk_stats OUT: prints "RPS P99_MS REQUESTS SOCKET_ERRORS NON2XX" from wrk's output.
wrk_stats() {
    awk '
        function ms(v) {
            if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
            if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
            if (v ~ /m$/)  return substr(v, 1, length(v) - 1) * 60000
            if (v ~ /s$/)  return substr(v, 1, length(v) - 1) * 1000
            return v + 0
        }
        /Requests\/sec:/            { rps = $2 }
        /^ +99%/                    { p99 = ms($2) }
        / requests in /             { reqs = $1 }
        /Socket errors:/            { gsub(",", ""); errs = $4 + $6 + $8 + $10 }
        /Non-2xx or 3xx responses:/ { non2xx = $5 }
        END { printf "%s %s %s %d %d\n", rps + 0, p99 + 0, reqs + 0, errs, non2xx }
    ' "$1"
}

# ratio A B: A/B with two decimals ("-" when B is 0).
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }

machine_note() {
    echo "$(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), shared and noisy; load average $(cut -d' ' -f1 /proc/loadavg) at the end), loopback; $RIVER_VERSION, $NGINX_VERSION, $HAPROXY_VERSION"
}

# The River source the figures come from: commit, and whether crates/ had uncommitted changes
# (the binary is whatever target/release/river was when the script started).
river_source() {
    local commit dirty=""
    commit=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')
    (cd "$ROOT" && git diff --quiet HEAD -- crates 2>/dev/null && [ -z "$(git ls-files --others --exclude-standard crates)" ]) ||
        dirty=", with uncommitted changes in crates/"
    echo "commit $commit$dirty; river binary built $RIVER_BUILT"
}
