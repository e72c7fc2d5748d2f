#!/usr/bin/env bash
# Service discovery: a rolling deploy of 20 backends, one replaced every 0.5 s, under load,
# River (discovery "Dns": the change comes through DNS and is applied in place) against
# nginx (config edit + reload per change, as nginx 1.22 must), in one run. See bench/README.md.
#
# Per target: wrk keep-alive load for the whole deploy, WebSockets opened one every 0.25 s
# (each echoing a frame every 0.2 s), then: failed requests, WebSockets cut, processes alive
# at the end (the proxy's whole process tree), and where its traffic went.
# The backends are one asyncio process answering on 127.0.1.1-40 (same port); DNS is dnsmasq
# on a loopback port, records with a TTL of 1 s, edited through its hosts directory.
#
# Environment: STEPS (default 20), INTERVAL (s, default 0.5), CONNS (default 16),
# NGINX_SHUTDOWN_TIMEOUT (s; adds an nginx row with worker_shutdown_timeout, default 5;
# 0 to skip), PIN=0 to run unpinned, RIVER=path to the river binary.
source "$(dirname "$0")/lib.sh"
bench_init

LAB=$BENCH_DIR/discoverylab.py
STEPS=${STEPS:-20}
INTERVAL=${INTERVAL:-0.5}
CONNS=${CONNS:-16}
NGINX_SHUTDOWN_TIMEOUT=${NGINX_SHUTDOWN_TIMEOUT:-5}
LEAD=1
TAIL=3
DURATION=$(awk -v s="$STEPS" -v i="$INTERVAL" -v l=$LEAD -v t=$TAIL 'BEGIN { printf "%d", l + s * i + t + 0.999 }')
WS_COUNT=$(awk -v d="$DURATION" 'BEGIN { printf "%d", (d - 2) / 0.25 }')

command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || {
    echo "error: dnsmasq not found (apt-get install dnsmasq-base)" >&2
    exit 1
}
DNSMASQ=$(command -v dnsmasq || echo /usr/sbin/dnsmasq)

# The set after STEP steps: backend k (1..20) is replaced by 20+k at step k.
set_after() { # STEP -> one address per line
    local step=$1 k
    for k in $(seq 20); do
        if [ "$k" -le "$step" ]; then echo "127.0.1.$((20 + k))"; else echo "127.0.1.$k"; fi
    done
}

# ---------------------------------------------------------------- backends and DNS
BACKEND_PORT=$(free_port)
$(pin "$LOAD_CPUS") python3 "$LAB" backends --port "$BACKEND_PORT" --ips 1-40 >"$WORK/backends.log" 2>&1 9>&- &
track $!
for i in $(seq 100); do grep -q backends= "$WORK/backends.log" && break; sleep 0.05; done
grep -q backends=40 "$WORK/backends.log" || { cat "$WORK/backends.log" >&2; exit 1; }

DNS_DIR=$WORK/dns
mkdir -p "$DNS_DIR/hosts"
DNS_PORT=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
dns_write() { # STEP
    set_after "$1" | sed 's/$/ api.bench/' >"$DNS_DIR/api.tmp"
    mv "$DNS_DIR/api.tmp" "$DNS_DIR/hosts/api"
}
dns_write 0
dns_user=()
[ "$(id -u)" = 0 ] && dns_user=(--user=root)
"$DNSMASQ" --keep-in-foreground --conf-file=/dev/null --port="$DNS_PORT" --listen-address=127.0.0.1 \
    --bind-interfaces --no-resolv --no-hosts --no-negcache --local-ttl=1 --pid-file= \
    --hostsdir="$DNS_DIR/hosts" --log-facility="$DNS_DIR/dnsmasq.log" "${dns_user[@]}" 9>&- &
DNS_PID=$!
track $DNS_PID
wait_port "$DNS_PORT"

# ---------------------------------------------------------------- River
RIVER_DIR=$WORK/river-proxy
mkdir -p "$RIVER_DIR"
RIVER_PORT=$(free_port)
cat >"$RIVER_DIR/river.kdl" <<EOF
system {
    workers 2
    threads-per-service 1
    pid-file "$RIVER_DIR/river.pid"
    control-socket "$RIVER_DIR/river.sock"
}
services {
    Api {
        listeners {
            "127.0.0.1:$RIVER_PORT"
        }
        connectors {
            load-balance {
                selection "RoundRobin"
                discovery "Dns" resolver="127.0.0.1:$DNS_PORT" min-ttl-ms=500 max-ttl-ms=1000 resolve-timeout-ms=1000
            }
            "api.bench:$BACKEND_PORT"
        }
    }
}
EOF
start_river "$RIVER_DIR" "$PROXY_CPUS"
wait_port "$RIVER_PORT"
river_change() { # STEP
    dns_write "$1"
    kill -HUP "$DNS_PID"
}

# ---------------------------------------------------------------- nginx
nginx_write() { # DIR PORT STEP SHUTDOWN_TIMEOUT
    local dir=$1 port=$2 step=$3 timeout=$4
    {
        nginx_conf_head "$dir" 2 | sed "s|^http {|$([ "$timeout" != 0 ] && echo "worker_shutdown_timeout ${timeout}s;")\nhttp {|"
        echo "    map \$http_upgrade \$connection_upgrade { default upgrade; '' ''; }"
        echo "    upstream backend {"
        set_after "$step" | sed "s/.*/        server &:$BACKEND_PORT;/"
        echo "        keepalive 64;"
        echo "    }"
        cat <<EOF
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection \$connection_upgrade;
            proxy_read_timeout 3600s;
        }
    }
}
EOF
    } >"$dir/nginx.conf.tmp"
    mv "$dir/nginx.conf.tmp" "$dir/nginx.conf"
}

TARGETS=("River|discovery \"Dns\", applied in place|$RIVER_PORT|$RIVER_PID|river_change")
nginx_target() { # NAME SHUTDOWN_TIMEOUT
    local dir=$WORK/nginx-$2 port
    mkdir -p "$dir"
    port=$(free_port)
    nginx_write "$dir" "$port" 0 "$2"
    start_nginx "$dir" "$PROXY_CPUS"
    wait_port "$port"
    eval "nginx_change_$2() { nginx_write '$dir' '$port' \"\$1\" '$2'; kill -HUP $NGINX_PID; }"
    TARGETS+=("nginx|$1|$port|$NGINX_PID|nginx_change_$2")
}
nginx_target "config edit + reload per change" 0
if [ "$NGINX_SHUTDOWN_TIMEOUT" != 0 ]; then
    nginx_target "same, worker_shutdown_timeout ${NGINX_SHUTDOWN_TIMEOUT}s" "$NGINX_SHUTDOWN_TIMEOUT"
fi

# ---------------------------------------------------------------- runs
declare -A ROW
for i in "${!TARGETS[@]}"; do
    IFS='|' read -r name how port pid change <<<"${TARGETS[$i]}"
    echo "run: $name ($how), port $port, $STEPS changes every ${INTERVAL}s, ${DURATION}s" >&2
    procs_before=$(python3 "$LAB" tree --pid "$pid" | sed 's/procs=//')
    out=$WORK/wrk-$i.txt
    run_wrk "$out" -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$port/" &
    wrk_pid=$!
    $(pin "$LOAD_CPUS") python3 "$LAB" websockets --port "$port" --count "$WS_COUNT" --every 0.25 \
        --seconds "$DURATION" >"$WORK/ws-$i.txt" 2>&1 9>&- &
    ws_pid=$!
    sleep $LEAD
    t0=$(date +%s.%N)
    peak=$procs_before
    for step in $(seq "$STEPS"); do
        "$change" "$step"
        now_procs=$(python3 "$LAB" tree --pid "$pid" | sed 's/procs=//')
        [ "$now_procs" -gt "$peak" ] && peak=$now_procs
        next=$(awk -v t="$t0" -v s="$step" -v i="$INTERVAL" 'BEGIN { printf "%.3f", t + s * i }')
        now=$(date +%s.%N)
        sleep "$(awk -v n="$next" -v c="$now" 'BEGIN { d = n - c; printf "%.3f", (d > 0 ? d : 0) }')"
    done
    # The deploy is over; the WebSockets and the load still run for a second or two.
    sleep 1
    at_end=$(python3 "$LAB" tree --pid "$pid" | sed 's/procs=//')
    [ "$at_end" -gt "$peak" ] && peak=$at_end
    wait $wrk_pid || true
    wait $ws_pid || true
    read -r rps p99 reqs errs non2xx <<<"$(wrk_stats "$out")"
    ws=$(cat "$WORK/ws-$i.txt")
    ws_opened=$(sed -n 's/.*opened=\([0-9]*\).*/\1/p' <<<"$ws")
    ws_cut=$(sed -n 's/.*cut=\([0-9]*\).*/\1/p' <<<"$ws")
    ws_failed=$(sed -n 's/.*failed_open=\([0-9]*\).*/\1/p' <<<"$ws")
    sleep 1
    procs=$(python3 "$LAB" tree --pid "$pid" | sed 's/procs=//')
    echo "  $name: requests=$reqs socket_errors=$errs non2xx=$non2xx p99=${p99}ms ws: $ws procs: before $procs_before, peak $peak, deploy end $at_end, after the WebSockets closed $procs" >&2
    ROW[$i]="$reqs|$((errs + non2xx))|$p99|$ws_opened|$ws_cut|$ws_failed|$procs_before|$peak|$at_end|$procs"
done

# Where River's traffic goes at the end: its discovered set against the last step's.
expected=$(set_after "$STEPS" | sort | tr '\n' ' ')
RIVERCTL=${RIVERCTL:-$ROOT/target/release/riverctl}
river_set=$("$RIVERCTL" -s "$RIVER_DIR/river.sock" status --json 2>/dev/null |
    python3 -c 'import json,sys; d=json.load(sys.stdin); g=[g for g in d["generations"] if g["state"]=="serving"][0]; print(" ".join(sorted(b["address"].split(":")[0] for n in g["discovery"] for b in n["backends"])))' 2>/dev/null || echo "?")
river_generations=$(grep -c "generation started" "$RIVER_DIR/river.log" || true)
if [ "$river_set " = "$expected" ]; then set_note="River's discovered set at the end is the last step's (20 backends)"; else set_note="River's discovered set at the end: $river_set (expected $expected)"; fi

# ---------------------------------------------------------------- table
echo
echo "Rolling deploy: $STEPS backends replaced one every ${INTERVAL}s under load (wrk \`-t1 -c$CONNS -d${DURATION}s\`, keep-alive),"
echo "$WS_COUNT WebSockets opened one every 0.25 s through the proxy (each echoing a frame every 0.2 s); 2 worker processes each."
if [ "$PIN" = 1 ]; then
    echo "Proxies pinned to cpu $PROXY_CPUS, backends (one asyncio process on 127.0.1.1-40), wrk and the WebSocket clients to cpu $LOAD_CPUS."
fi
echo "$(machine_note)"
echo
echo "| target | how a change arrives | requests | failed | p99 | WebSockets opened | cut | processes: before / peak / at the end of the deploy / after the WebSockets closed |"
echo "|---|---|---:|---:|---:|---:|---:|---|"
for i in "${!TARGETS[@]}"; do
    IFS='|' read -r name how port pid change <<<"${TARGETS[$i]}"
    IFS='|' read -r reqs failed p99 opened cut failed_open before peak at_end after <<<"${ROW[$i]}"
    [ "$failed_open" != 0 ] && opened="$opened ($failed_open failed to open)"
    printf '| %s | %s | %s | **%s** | %.1f ms | %s | **%s** | %s / %s / **%s** / %s |\n' "$name" "$how" "$reqs" "$failed" "$p99" \
        "$opened" "$cut" "$before" "$peak" "$at_end" "$after"
done
echo
echo "$set_note; River generations started: $river_generations (no reload)."
echo "Processes: the proxy's whole tree (River: master, 2 workers, 1 resolver; nginx: master and workers, old ones included)."
echo
echo "Command: \`bench/discovery.sh\` ($(river_source))"
