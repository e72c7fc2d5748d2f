#!/usr/bin/env bash
# River core: requests/s and p99 latency of River, nginx and HAProxy proxying to one fast
# upstream (an nginx `return 200`), side by side in one run. See bench/README.md.
#
# Environment: ROUNDS (default 3), DURATION (s per run, default 5), WARMUP (s, default 1),
# CONNS (default 32), TWO=0 to skip the 2-process rows, PIN=0 to run unpinned,
# EXTRA_RIVER_THREADS=N to add a River row with 1 worker and N threads, RIVER=path to the binary.
#
# All servers are started first (idle ones cost nothing); then each of ROUNDS rounds measures
# every target once, interleaved, so that a burst of noise from other tenants hits one run of
# each target rather than all runs of one. The table reports each target's best round.
source "$(dirname "$0")/lib.sh"
bench_init

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
CONNS=${CONNS:-32}
TWO=${TWO:-1}
WRK_ARGS=(-t1 -c"$CONNS" -d"${DURATION}s" --latency)
ALL_CPUS="0-$(($(nproc) - 1))"

start_fast_upstream
echo "upstream: nginx return 200 on 127.0.0.1:$UPSTREAM_PORT (cpus $LOAD_CPUS)" >&2

TARGETS=() # "group|name|config|port"; group: the nginx row a row is compared with

river_proxy() { # GROUP WORKERS THREADS CPUS
    local dir=$WORK/river-$2-$3 port
    mkdir -p "$dir"
    port=$(free_port)
    cat >"$dir/river.kdl" <<EOF
system {
    workers $2
    threads-per-service $3
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
    start_river "$dir" "$4"
    wait_port "$port"
    TARGETS+=("$1|River|workers $2, threads-per-service $3|$port")
}

nginx_proxy() { # GROUP WORKERS CPUS
    local dir=$WORK/nginx-$2 port
    mkdir -p "$dir"
    port=$(free_port)
    {
        nginx_conf_head "$dir" "$2"
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
    start_nginx "$dir" "$3"
    wait_port "$port"
    TARGETS+=("$1|nginx|worker_processes $2|$port")
}

haproxy_proxy() { # GROUP THREADS CPUS
    local dir=$WORK/haproxy-$2 port
    mkdir -p "$dir"
    port=$(free_port)
    {
        haproxy_cfg_head "$dir" "$2"
        cat <<EOF
frontend fe
    bind 127.0.0.1:$port
    default_backend be
backend be
    server up 127.0.0.1:$UPSTREAM_PORT
EOF
    } >"$dir/haproxy.cfg"
    start_haproxy "$dir" "$3"
    wait_port "$port"
    TARGETS+=("$1|HAProxy|nbthread $2|$port")
}

TARGETS+=("1|direct to upstream|-|$UPSTREAM_PORT")
river_proxy 1 1 1 "$PROXY_CPUS"
nginx_proxy 1 1 "$PROXY_CPUS"
haproxy_proxy 1 1 "$PROXY_CPUS"
if [ -n "${EXTRA_RIVER_THREADS:-}" ]; then
    river_proxy 1 1 "$EXTRA_RIVER_THREADS" "$PROXY_CPUS"
fi
if [ "$TWO" = 1 ]; then
    river_proxy 2 2 1 "$ALL_CPUS"
    nginx_proxy 2 2 "$ALL_CPUS"
    haproxy_proxy 2 2 "$ALL_CPUS"
fi

# BEST[i] = "rps p99" of target i's best round; RUNS[i] = the rps of every round
declare -A BEST RUNS ERRS
for round in $(seq "$ROUNDS"); do
    for i in "${!TARGETS[@]}"; do
        IFS='|' read -r group name config port <<<"${TARGETS[$i]}"
        out=$WORK/wrk-$i-$round.txt
        run_wrk "$out.warm" -t1 -c"$CONNS" -d"${WARMUP}s" "http://127.0.0.1:$port/"
        run_wrk "$out" "${WRK_ARGS[@]}" "http://127.0.0.1:$port/"
        read -r rps p99 reqs errs non2xx <<<"$(wrk_stats "$out")"
        echo "  round $round: $name ($config): rps=$rps p99=${p99}ms requests=$reqs socket_errors=$errs non2xx=$non2xx" >&2
        RUNS[$i]="${RUNS[$i]:-}${RUNS[$i]:+, }$(printf %.0f "$rps")"
        ERRS[$i]=$((${ERRS[$i]:-0} + errs + non2xx))
        if [ -z "${BEST[$i]:-}" ] || awk -v a="$rps" -v b="${BEST[$i]%% *}" 'BEGIN { exit !(a > b) }'; then
            BEST[$i]="$rps $p99"
        fi
    done
done

# ---------------------------------------------------------------- table
nginx_rps_for() { # GROUP
    local i
    for i in "${!TARGETS[@]}"; do
        case ${TARGETS[$i]} in "$1|nginx|"*) echo "${BEST[$i]%% *}"; return ;; esac
    done
    echo 0
}
echo
echo "Proxy throughput: wrk \`-t1 -c$CONNS -d${DURATION}s --latency\` (keep-alive) after a ${WARMUP}s warm-up, best of $ROUNDS interleaved rounds."
if [ "$PIN" = 1 ]; then
    echo "1-process rows: proxy pinned to cpu $PROXY_CPUS, upstream nginx and wrk to cpu $LOAD_CPUS; 2-process rows on cpus $ALL_CPUS."
fi
echo "$(machine_note)"
echo
echo "| target | processes / threads | requests/s | p99 | vs nginx | every round, req/s | errors |"
echo "|---|---|---:|---:|---:|---|---:|"
for i in "${!TARGETS[@]}"; do
    IFS='|' read -r group name config port <<<"${TARGETS[$i]}"
    read -r rps p99 <<<"${BEST[$i]}"
    ref=$(nginx_rps_for "$group")
    printf '| %s | %s | %.0f | %.2f ms | **%s** | %s | %d |\n' "$name" "$config" "$rps" "$p99" \
        "$(ratio "$rps" "$ref")" "${RUNS[$i]}" "${ERRS[$i]}"
done
echo
echo "Command: \`bench/proxy.sh\` ($(river_source))"
