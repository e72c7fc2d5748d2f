#!/usr/bin/env bash
# River core: requests/s and p99 latency of River, nginx and HAProxy proxying to one fast
# upstream (an nginx `return 200`), side by side in one run. See bench/README.md.
#
# Environment: DURATION (s, default 10), WARMUP (s, default 3), CONNS (default 32),
# TWO=0 to skip the 2-worker rows, PIN=0 to run unpinned, RIVER=path to the river binary.
source "$(dirname "$0")/lib.sh"
bench_init

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
CONNS=${CONNS:-32}
TWO=${TWO:-1}
WRK_ARGS=(-t1 -c"$CONNS" -d"${DURATION}s" --latency)

start_fast_upstream
echo "upstream: nginx return 200 on 127.0.0.1:$UPSTREAM_PORT (cpus $LOAD_CPUS)" >&2

ROWS=()
# measure NAME CONFIG PORT: warm up, then one wrk run; appends "NAME|CONFIG|rps p99 ..." to ROWS.
measure() {
    local name=$1 config=$2 port=$3 out
    out=$WORK/wrk-$(echo "$name-$config" | tr -c 'a-zA-Z0-9\n' '_').txt
    run_wrk "$out.warm" -t1 -c"$CONNS" -d"${WARMUP}s" "http://127.0.0.1:$port/"
    run_wrk "$out" "${WRK_ARGS[@]}" "http://127.0.0.1:$port/"
    local stats
    stats=$(wrk_stats "$out")
    echo "  $name ($config): $stats  [rps p99ms requests socket-errors non-2xx]" >&2
    ROWS+=("$GROUP|$name|$config|$stats")
}

river_proxy() { # WORKERS THREADS CPUS
    local dir=$WORK/river-$1-$2 port
    mkdir -p "$dir"
    port=$(free_port)
    cat >"$dir/river.kdl" <<EOF
system {
    workers $1
    threads-per-service $2
    pid-file "$dir/river.pid"
    control-socket "$dir/river.sock"
}
services {
    Proxy {
        listeners {
            "127.0.0.1:$port"
        }
        connectors {
            "127.0.0.1:$UPSTREAM_PORT"
        }
    }
}
EOF
    start_river "$dir" "$3"
    wait_port "$port"
    measure River "workers $1, threads-per-service $2" "$port"
    kill_tree "$RIVER_PID"
}

nginx_proxy() { # WORKERS CPUS
    local dir=$WORK/nginx-$1 port
    mkdir -p "$dir"
    port=$(free_port)
    {
        nginx_conf_head "$dir" "$1"
        cat <<EOF
    upstream backend {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    } >"$dir/nginx.conf"
    start_nginx "$dir" "$2"
    wait_port "$port"
    measure nginx "worker_processes $1" "$port"
    kill_tree "$NGINX_PID"
}

haproxy_proxy() { # THREADS CPUS
    local dir=$WORK/haproxy-$1 port
    mkdir -p "$dir"
    port=$(free_port)
    {
        haproxy_cfg_head "$dir" "$1"
        cat <<EOF
frontend fe
    bind 127.0.0.1:$port
    default_backend be
backend be
    server up 127.0.0.1:$UPSTREAM_PORT
EOF
    } >"$dir/haproxy.cfg"
    start_haproxy "$dir" "$2"
    wait_port "$port"
    measure HAProxy "nbthread $1" "$port"
    kill_tree "$HAPROXY_PID"
}

GROUP=1
measure "direct to upstream" "-" "$UPSTREAM_PORT"
river_proxy 1 1 "$PROXY_CPUS"
nginx_proxy 1 "$PROXY_CPUS"
haproxy_proxy 1 "$PROXY_CPUS"
if [ "$TWO" = 1 ]; then
    GROUP=2
    river_proxy 2 1 "0-$(($(nproc) - 1))"
    nginx_proxy 2 "0-$(($(nproc) - 1))"
    haproxy_proxy 2 "0-$(($(nproc) - 1))"
fi
if [ -n "${EXTRA_RIVER_THREADS:-}" ]; then # e.g. EXTRA_RIVER_THREADS=2: one worker, 2 threads
    GROUP=1
    river_proxy 1 "$EXTRA_RIVER_THREADS" "$PROXY_CPUS"
fi

# ---------------------------------------------------------------- table
# The nginx row of the same process count is the reference of each row.
nginx_rps_for() { # group
    local row
    for row in "${ROWS[@]}"; do
        case $row in "$1|nginx|"*) echo "${row##*|}" | cut -d' ' -f1; return;; esac
    done
    echo 0
}
echo
echo "Proxy throughput, wrk \`-t1 -c$CONNS -d${DURATION}s --latency\` (keep-alive), ${WARMUP}s warm-up each;"
if [ "$PIN" = 1 ]; then
    echo "1-process rows: proxy pinned to cpu $PROXY_CPUS, upstream nginx and wrk to cpu $LOAD_CPUS; 2-process rows on cpus 0-$(($(nproc) - 1))."
fi
echo "$(machine_note)"
echo
echo "| target | processes / threads | requests/s | p99 latency | requests/s vs nginx | errors |"
echo "|---|---|---:|---:|---:|---:|"
for row in "${ROWS[@]}"; do
    IFS='|' read -r group name config stats <<<"$row"
    read -r rps p99 reqs errs non2xx <<<"$stats"
    ref=$(nginx_rps_for "$group")
    printf '| %s | %s | %.0f | %.2f ms | %s | %d |\n' "$name" "$config" "$rps" "$p99" "$(ratio "$rps" "$ref")" $((errs + non2xx))
done
echo
echo "Command: \`bench/proxy.sh\` ($(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && git diff --quiet HEAD -- crates 2>/dev/null || echo ', with uncommitted changes in crates/'))"
