#!/usr/bin/env bash
# Memory per idle keep-alive connection: River, nginx and HAProxy, one worker process each,
# proxying to the fast upstream. Each proxy gets connections that served one request and then
# stay open and idle (bench/idlelab.py holds them); the figure is the growth of the proxy's RSS
# (VmRSS of its whole process tree) from BASE held connections to N, divided by N - BASE, so
# that fixed costs and warm-up are left out. Kernel socket buffers are not in RSS. See bench/README.md.
#
# Environment: COUNTS (default "10000 50000"), BASE (default 1000), RIVER=path to the binary.
# The script raises the soft open-files limit to the hard one. A count one process cannot hold
# under it runs River and nginx with as many worker processes as hold it with a quarter to spare
# (the client spreads over processes too); HAProxy has one process (a count it cannot hold is
# measured at the most it can, in whole thousands, with two descriptors per connection), which
# the table says.
source "$(dirname "$0")/lib.sh"
bench_init

COUNTS=${COUNTS:-10000 50000}
BASE=${BASE:-1000}

start_fast_upstream
echo "upstream: nginx return 200 on 127.0.0.1:$UPSTREAM_PORT" >&2

# rss_kb PID: VmRSS of PID and all its descendants, in KiB.
rss_kb() {
    local pid total=0 kb
    for pid in $1 $(descendants "$1"); do
        kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
        total=$((total + ${kb:-0}))
    done
    echo "$total"
}

# hold PORT COUNT: a client holding COUNT idle connections to PORT; sets HOLDER (its pid) and
# HOLDER_IN (the fd whose close ends it). Returns once all of them are open.
HOLDS=0
hold() {
    local port=$1 count=$2 line fifo
    HOLDS=$((HOLDS + 1))
    fifo=$WORK/hold-$HOLDS
    mkfifo "$fifo.in" "$fifo.out"
    python3 "$BENCH_DIR/idlelab.py" "$port" "$count" <"$fifo.in" >"$fifo.out" 2>"$fifo.err" 9>&- &
    HOLDER=$!
    track $HOLDER
    exec {HOLDER_IN}>"$fifo.in"
    if ! read -r line <"$fifo.out" || [ "${line%% *}" != ready ]; then
        echo "error: the client did not hold $count connections to port $port:" >&2
        cat "$fifo.err" >&2
        return 1
    fi
}

# measure NAME PID PORT COUNT: sets MEASURED to the KiB per idle connection between BASE and
# COUNT held connections.
measure() {
    local name=$1 pid=$2 port=$3 count=$4 base_rss full_rss first first_in
    hold "$port" "$BASE"
    first=$HOLDER first_in=$HOLDER_IN
    sleep 1
    base_rss=$(rss_kb "$pid")
    hold "$port" $((count - BASE))
    sleep 1
    full_rss=$(rss_kb "$pid")
    # Closing their stdin ends the clients, and with them the connections.
    exec {HOLDER_IN}>&- {first_in}>&-
    wait "$HOLDER" "$first" 2>/dev/null || true
    echo "  $name: RSS ${base_rss} KiB with $BASE idle connections, ${full_rss} KiB with $count" >&2
    MEASURED=$(awk -v a="$full_rss" -v b="$base_rss" -v n=$((count - BASE)) 'BEGIN { printf "%.2f", (a - b) / n }')
}

river_target() { # COUNT PROCESSES
    local dir=$WORK/river-$1 port
    mkdir -p "$dir"
    port=$(free_port)
    cat >"$dir/river.kdl" <<KDL
system {
    workers $2
    threads-per-service 1
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
        timeouts {
            client-header-secs 3600
        }
    }
}
KDL
    start_river "$dir" ""
    wait_port "$port"
    TARGET_PID=$RIVER_PID TARGET_PORT=$port
}

nginx_target() { # COUNT PROCESSES
    local dir=$WORK/nginx-$1 port per_worker
    mkdir -p "$dir"
    port=$(free_port)
    per_worker=$(($1 / $2 * 5 / 4 + 1000))
    [ "$per_worker" -gt $((LIMIT - 500)) ] && per_worker=$((LIMIT - 500))
    {
        echo "worker_rlimit_nofile $LIMIT;"
        # More connections, and idle ones kept for an hour instead of 75 s.
        nginx_conf_head "$dir" "$2" |
            sed "s/worker_connections 4096;/worker_connections $per_worker;/; s/keepalive_timeout 75s;/keepalive_timeout 3600s;/"
        cat <<NGINX
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
NGINX
    } >"$dir/nginx.conf"
    start_nginx "$dir" ""
    wait_port "$port"
    TARGET_PID=$NGINX_PID TARGET_PORT=$port
}

haproxy_target() { # COUNT
    local dir=$WORK/haproxy-$1 port
    mkdir -p "$dir"
    port=$(free_port)
    {
        haproxy_cfg_head "$dir" 1 |
            sed "s/maxconn 4096/maxconn $(($1 + 100))/; s/timeout client 120s/timeout client 3600s/; s/timeout http-keep-alive 75s/timeout http-keep-alive 3600s/"
        cat <<HAPROXY
frontend fe
    bind 127.0.0.1:$port
    default_backend be
backend be
    server up 127.0.0.1:$UPSTREAM_PORT
HAPROXY
    } >"$dir/haproxy.cfg"
    start_haproxy "$dir" ""
    wait_port "$port"
    TARGET_PID=$HAPROXY_PID TARGET_PORT=$port
}

# As many open files as the hard limit allows: a proxy needs one per idle connection
# (HAProxy reserves two: client and server side), plus some.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
LIMIT=$(ulimit -n)
echo "open files limit: $LIMIT" >&2

declare -A RESULT AT
for count in $COUNTS; do
    for name in River nginx HAProxy; do
        n=$count procs=1
        if [ "$name" = HAProxy ]; then
            # One process, two descriptors reserved per connection.
            most=$(((LIMIT - 1000) / 2))
            if [ "$n" -gt "$most" ]; then
                n=$((most / 1000 * 1000))
                AT[$name-$count]="at $n, the open-files limit is $LIMIT"
            fi
        elif [ $((n + 1000)) -gt "$LIMIT" ]; then
            # Worker processes enough to hold it with a quarter to spare.
            procs=$(((n * 5 / 4 + LIMIT - 1001) / (LIMIT - 1000)))
            AT[$name-$count]="$procs workers"
        fi
        if [ "$n" -le "$BASE" ]; then
            RESULT[$name-$count]="-"
            AT[$name-$count]="skipped: the open-files limit is $LIMIT"
            echo "  $name at $count: ${AT[$name-$count]}" >&2
            continue
        fi
        case $name in
            River) river_target "$n" "$procs" ;;
            nginx) nginx_target "$n" "$procs" ;;
            HAProxy) haproxy_target "$n" ;;
        esac
        measure "$name" "$TARGET_PID" "$TARGET_PORT" "$n"
        RESULT[$name-$count]=$MEASURED
        kill_tree "$TARGET_PID"
    done
done

# cell NAME COUNT: a result, with the count it was measured at when fewer fitted.
cell() {
    local value=${RESULT[$1-$2]} at=${AT[$1-$2]:-}
    if [ -n "$at" ]; then echo "$value ($at)"; else echo "$value"; fi
}

echo
echo "Memory per idle keep-alive connection: RSS growth of the proxy (all its processes) from $BASE to N idle connections, divided by N - $BASE; one worker process and one thread each, unless a cell says more workers (River \`workers\`, nginx \`worker_processes\`: more connections than one process may open here)."
echo "$(machine_note)"
echo
echo "| idle connections | River KiB / conn | nginx KiB / conn | HAProxy KiB / conn | River / nginx |"
echo "|---:|---:|---:|---:|---:|"
for count in $COUNTS; do
    ratio_cell="-"
    # River and nginx always run with the same number of workers.
    if [ "${RESULT[River-$count]}" != "-" ] && [ "${RESULT[nginx-$count]}" != "-" ]; then
        ratio_cell=$(ratio "${RESULT[River-$count]}" "${RESULT[nginx-$count]}")
    fi
    echo "| $count | **$(cell River "$count")** | $(cell nginx "$count") | $(cell HAProxy "$count") | $ratio_cell |"
done
echo
echo "Command: \`bench/idle.sh\` ($(river_source))"
