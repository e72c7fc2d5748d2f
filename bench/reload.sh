#!/usr/bin/env bash
# Hot reload: River vs nginx vs HAProxy, side by side in one run. See bench/README.md.
#   a. failed requests under keep-alive load (wrk -c32, ~7 s) with a reload every 200 ms;
#   b. reload latency: signal -> a fresh connection sees the new config (15 reloads);
#   c. peak processes and RSS after 20 reloads (500 ms apart) while long requests keep arriving;
#   d. 10 binary upgrades 1 s apart under keep-alive load and a loop of fresh connections;
#   e. 1000 WebSockets, each sending a message every 100 ms, through 20 reloads 0.5 s apart.
#
# Environment: PIN=0 to run (a) and (b) unpinned, RIVER=path to the river binary,
# ONLY="a b c" to run a subset.
source "$(dirname "$0")/lib.sh"
bench_init

LAB=$BENCH_DIR/reloadlab.py
ONLY=${ONLY:-a b c d e}
RELOADS_A=33
INTERVAL_A=0.2
WRK_A=(-t1 -c32 -d7s --latency)
LATENCY_COUNT=15
RELOADS_C=20
UPGRADES_D=10
WS_E=${WS_E:-1000}
RELOADS_E=20
# Case e's nginx passes WebSocket upgrades on.
NGINX_WS=0

# ---------------------------------------------------------------- configs (templates: @GEN@)

# river_template DIR PORT UPSTREAM WORKERS THREADS
river_template() {
    cat >"$1/river.kdl.in" <<EOF
system {
    workers $4
    threads-per-service $5
    pid-file "$1/river.pid"
    control-socket "$1/river.sock"
    drain-timeout-secs 60
    max-draining-generations 2
}
services {
    Proxy {
        listeners {
            "127.0.0.1:$2"
        }
        connectors {
            "127.0.0.1:$3"
        }
        path-control {
            upstream-response {
                filter kind="upsert-header" key="x-gen" value="@GEN@"
            }
        }
    }
}
EOF
    sed 's/@GEN@/1/' "$1/river.kdl.in" >"$1/river.kdl"
}

# nginx_template DIR PORT UPSTREAM WORKERS
nginx_template() {
    {
        nginx_conf_head "$1" "$4"
        cat <<EOF
    upstream backend {
        server 127.0.0.1:$3;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$2 backlog=4096;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
$(if [ "$NGINX_WS" = 1 ]; then
                echo '            proxy_set_header Upgrade $http_upgrade;'
                echo '            proxy_set_header Connection "upgrade";'
            else
                echo '            proxy_set_header Connection "";'
            fi)
            proxy_read_timeout 120s;
            add_header x-gen @GEN@ always;
        }
    }
}
EOF
    } >"$1/nginx.conf.in"
    sed 's/@GEN@/1/' "$1/nginx.conf.in" >"$1/nginx.conf"
}

# haproxy_template DIR PORT UPSTREAM THREADS
haproxy_template() {
    {
        haproxy_cfg_head "$1" "$4"
        cat <<EOF
    timeout tunnel 120s
frontend fe
    bind 127.0.0.1:$2
    http-response set-header x-gen @GEN@
    default_backend be
backend be
    server up 127.0.0.1:$3
EOF
    } >"$1/haproxy.cfg.in"
    sed 's/@GEN@/1/' "$1/haproxy.cfg.in" >"$1/haproxy.cfg"
}

# start_proxy NAME DIR PORT UPSTREAM PROCS CPUS: sets PROXY_PID, SIG, CONF
start_proxy() {
    local name=$1 dir=$2 port=$3 upstream=$4 procs=$5 cpus=$6
    mkdir -p "$dir"
    case $name in
        River)
            river_template "$dir" "$port" "$upstream" "$procs" 1
            start_river "$dir" "$cpus"
            PROXY_PID=$RIVER_PID SIG=HUP CONF=$dir/river.kdl ;;
        nginx)
            nginx_template "$dir" "$port" "$upstream" "$procs"
            start_nginx "$dir" "$cpus"
            PROXY_PID=$NGINX_PID SIG=HUP CONF=$dir/nginx.conf ;;
        HAProxy)
            haproxy_template "$dir" "$port" "$upstream" "$procs"
            start_haproxy "$dir" "$cpus"
            PROXY_PID=$HAPROXY_PID SIG=USR2 CONF=$dir/haproxy.cfg ;;
    esac
    wait_port "$port"
}

kv() { # KEY LINE: value of key=value in LINE
    tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p"
}

# river_log_tail DIR PATTERN: the last River log lines matching PATTERN, with a case's raw
# figures on stderr.
river_log_tail() {
    grep -E "$2" "$1/river.log" | sed 's/^/     river.log: /' | tail -5 >&2 || true
}

declare -A E_CUT E_LOST E_DIS E_SENT E_OPEN E_PEAKP E_PEAKR E_GONE E_NEVER E_LAST E_BASE
declare -A D_OK D_FAIL D_REFUSED D_GONE D_ERR D_SECS
declare -A A_REQ A_FAIL A_SOCK A_NON2XX A_SIGS A_GENS B_MED B_MAX B_ERR C_PEAKP C_PEAKR C_ENDP C_ENDR C_LONG C_CUT

# ---------------------------------------------------------------- a + b
if [[ $ONLY == *a* || $ONLY == *b* ]]; then
    start_fast_upstream
    for name in River nginx HAProxy; do
        dir=$WORK/ab-$name
        port=$(free_port)
        start_proxy "$name" "$dir" "$port" "$UPSTREAM_PORT" 1 "$PROXY_CPUS"
        run_wrk "$dir/warm.txt" -t1 -c32 -d1s "http://127.0.0.1:$port/"
        gen=2
        if [[ $ONLY == *a* ]]; then
            $(pin "$LOAD_CPUS") wrk "${WRK_A[@]}" "http://127.0.0.1:$port/" >"$dir/wrk.txt" 2>&1 9>&- &
            wrk_pid=$!
            track $wrk_pid
            sleep 0.2
            loop=$(python3 "$LAB" hup-loop --pid "$PROXY_PID" --signal $SIG --template "$CONF.in" \
                --config "$CONF" --interval $INTERVAL_A --count $RELOADS_A)
            wait $wrk_pid || true
            read -r rps p99 reqs errs non2xx <<<"$(wrk_stats "$dir/wrk.txt")"
            A_REQ[$name]=$reqs A_SOCK[$name]=$errs A_NON2XX[$name]=$non2xx A_FAIL[$name]=$((errs + non2xx))
            A_SIGS[$name]=$(kv signals "$loop")
            A_GENS[$name]=-
            if [ "$name" = River ]; then
                A_GENS[$name]=$(($(grep -c "generation serving" "$dir/river.log" || true) - 1))
            fi
            echo "  a. $name: requests=$reqs socket_errors=$errs non2xx=$non2xx signals=${A_SIGS[$name]} $(grep 'Socket errors' "$dir/wrk.txt" | sed 's/^ *//')" >&2
            gen=$((RELOADS_A + 2))
            sleep 1
        fi
        if [[ $ONLY == *b* ]]; then
            res=$(python3 "$LAB" latency --pid "$PROXY_PID" --signal $SIG --template "$CONF.in" \
                --config "$CONF" --port "$port" --count $LATENCY_COUNT --first-gen $gen)
            B_MED[$name]=$(kv median_ms "$res") B_MAX[$name]=$(kv max_ms "$res")
            B_ERR[$name]=$(($(kv poll_errors "$res") + $(kv non200 "$res") + $(kv not_seen "$res")))
            echo "  b. $name: $res" >&2
        fi
        kill_tree "$PROXY_PID"
    done
    kill_tree "$UPSTREAM_PID"
fi

# ---------------------------------------------------------------- c
if [[ $ONLY == *c* ]]; then
    SLOW_PORT=$(free_port)
    python3 "$LAB" slow-upstream "$SLOW_PORT" --hold 60 >"$WORK/slow-upstream.log" 2>&1 9>&- &
    track $!
    wait_port "$SLOW_PORT"
    for name in River nginx HAProxy; do
        dir=$WORK/c-$name
        port=$(free_port)
        start_proxy "$name" "$dir" "$port" "$SLOW_PORT" 2 ""
        res=$(python3 "$LAB" procs --pid "$PROXY_PID" --signal $SIG --template "$CONF.in" \
            --config "$CONF" --port "$port" --reloads $RELOADS_C --interval 0.5)
        C_PEAKP[$name]=$(kv peak_procs "$res") C_PEAKR[$name]=$(kv peak_rss_mib "$res")
        C_ENDP[$name]=$(kv end_procs "$res") C_ENDR[$name]=$(kv end_rss_mib "$res")
        C_LONG[$name]=$(kv long_requests "$res") C_CUT[$name]=$(kv long_ended_early "$res")
        echo "  c. $name: $res" >&2
        if [ "$name" = River ]; then
            river_log_tail "$dir" "killed|limit|oldest|drain"
        fi
        kill_tree "$PROXY_PID"
    done
fi

# ---------------------------------------------------------------- d
if [[ $ONLY == *d* ]]; then
    start_fast_upstream
    # River's upgrade starts the binary at the master's own path: a copy
    # that stays put (riverctl from the same build).
    RIVERCTL=${RIVERCTL:-$ROOT/target/release/riverctl}
    for name in River nginx HAProxy; do
        dir=$WORK/d-$name
        port=$(free_port)
        if [ "$name" = nginx ]; then
            # nginx only takes USR2 as a daemon: in the foreground its parent
            # (this shell) never changes, and it ignores the signal.
            mkdir -p "$dir"
            nginx_template "$dir" "$port" "$UPSTREAM_PORT" 1
            sed -i 's/^daemon off;/daemon on;/' "$dir/nginx.conf"
            "$NGINX" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" 9>&-
            wait_port "$port"
            PROXY_PID=$(cat "$dir/nginx.pid")
        else
            start_proxy "$name" "$dir" "$port" "$UPSTREAM_PORT" 1 ""
        fi
        case $name in
            River) args=(--kind river --pid-file "$dir/river.pid" --riverctl "$RIVERCTL" --socket "$dir/river.sock") ;;
            nginx) args=(--kind nginx --pid-file "$dir/nginx.pid") ;;
            HAProxy) args=(--kind haproxy --pid-file "$dir/haproxy.pid") ;;
        esac
        res=$(python3 "$LAB" upgrades --port "$port" --count $UPGRADES_D --interval 1 "${args[@]}")
        D_OK[$name]=$(kv ok "$res") D_FAIL[$name]=$(kv failed "$res") D_REFUSED[$name]=$(kv refused "$res")
        D_GONE[$name]=$(kv old_gone_max_s "$res") D_ERR[$name]=$(kv upgrade_errors "$res")
        D_SECS[$name]=$(kv seconds "$res")
        echo "  d. $name: $res" >&2
        # After upgrades the serving master is the pid file's, not the one started.
        for pidfile in "$dir/river.pid" "$dir/nginx.pid" "$dir/nginx.pid.oldbin" "$dir/haproxy.pid"; do
            [ -r "$pidfile" ] && kill_tree "$(cat "$pidfile")"
        done
        kill_tree "$PROXY_PID"
    done
    kill_tree "$UPSTREAM_PID"
fi

# ---------------------------------------------------------------- e
if [[ $ONLY == *e* ]]; then
    WS_PORT=$(free_port)
    python3 "$BENCH_DIR/wslab.py" echo "$WS_PORT" >"$WORK/ws-echo.log" 2>&1 9>&- &
    track $!
    wait_port "$WS_PORT"
    NGINX_WS=1
    for name in River nginx HAProxy; do
        dir=$WORK/e-$name
        port=$(free_port)
        start_proxy "$name" "$dir" "$port" "$WS_PORT" 2 ""
        res=$(python3 "$BENCH_DIR/wslab.py" run --port "$port" --pid "$PROXY_PID" --signal $SIG \
            --template "$CONF.in" --config "$CONF" --conns "$WS_E" --reloads $RELOADS_E --interval 0.5)
        E_CUT[$name]=$(kv cut "$res") E_LOST[$name]=$(kv lost "$res") E_DIS[$name]=$(kv out_of_order "$res")
        E_SENT[$name]=$(kv sent "$res") E_OPEN[$name]=$(kv opened "$res")
        E_PEAKP[$name]=$(kv peak_procs "$res") E_PEAKR[$name]=$(kv peak_rss_mib "$res")
        E_GONE[$name]=$(kv gone_worst_s "$res") E_NEVER[$name]=$(kv reloads_never_gone "$res")
        E_LAST[$name]=$(kv gone_last_s "$res") E_BASE[$name]=$(kv base_procs "$res")
        echo "  e. $name: $res" >&2
        if [ "$name" = River ]; then
            river_log_tail "$dir" "aborted|refused|cannot"
        fi
        kill_tree "$PROXY_PID"
    done
    NGINX_WS=0
fi

# ---------------------------------------------------------------- tables
echo
echo "Hot reload, River vs nginx vs HAProxy. $(machine_note)"
echo
if [[ $ONLY == *a* || $ONLY == *b* ]]; then
    echo "(a), (b): River \`workers 1; threads-per-service 1\`, nginx \`worker_processes 1\`, HAProxy \`nbthread 1\` (master-worker \`-W\`);"
    echo "the same upstream (nginx \`return 200\`)$([ "$PIN" = 1 ] && echo "; proxy on cpu $PROXY_CPUS, upstream and load on cpu $LOAD_CPUS")."
    echo "Reload: River and nginx \`kill -HUP\` the master, HAProxy \`kill -USR2\` the master; each reload also changes the x-gen response header."
    echo
    echo "| | River | nginx | HAProxy |"
    echo "|---|---:|---:|---:|"
fi
if [[ $ONLY == *a* ]]; then
    echo "| **a.** failed requests, wrk \`${WRK_A[*]}\`, reload every ${INTERVAL_A}s | **${A_FAIL[River]}** | **${A_FAIL[nginx]}** | **${A_FAIL[HAProxy]}** |"
    echo "| &nbsp;&nbsp; of which socket errors / non-2xx | ${A_SOCK[River]} / ${A_NON2XX[River]} | ${A_SOCK[nginx]} / ${A_NON2XX[nginx]} | ${A_SOCK[HAProxy]} / ${A_NON2XX[HAProxy]} |"
    echo "| &nbsp;&nbsp; total requests | ${A_REQ[River]} | ${A_REQ[nginx]} | ${A_REQ[HAProxy]} |"
    echo "| &nbsp;&nbsp; reload signals sent | ${A_SIGS[River]} | ${A_SIGS[nginx]} | ${A_SIGS[HAProxy]} |"
fi
if [[ $ONLY == *b* ]]; then
    echo "| **b.** reload latency, signal → fresh connection sees new config, median of $LATENCY_COUNT | **${B_MED[River]} ms** | **${B_MED[nginx]} ms** | **${B_MED[HAProxy]} ms** |"
    echo "| &nbsp;&nbsp; max | ${B_MAX[River]} ms | ${B_MAX[nginx]} ms | ${B_MAX[HAProxy]} ms |"
    echo "| &nbsp;&nbsp; failed polls (errors, non-200, never seen) | ${B_ERR[River]} | ${B_ERR[nginx]} | ${B_ERR[HAProxy]} |"
fi
if [[ $ONLY == *c* ]]; then
    [[ $ONLY == *a* || $ONLY == *b* ]] && echo
    echo "(c): $RELOADS_C reloads 500 ms apart while a new /slow request (held 60 s by the upstream) arrives every 100 ms and stays open;"
    echo "River \`workers 2; max-draining-generations 2; drain-timeout-secs 60\`, nginx \`worker_processes 2\` (no \`worker_shutdown_timeout\`),"
    echo "HAProxy \`nbthread 2\` (no \`hard-stop-after\`); unpinned. Processes and RSS: the master and all its descendants, sampled every 100 ms."
    echo
    echo "| **c.** after $RELOADS_C reloads | River | nginx | HAProxy |"
    echo "|---|---:|---:|---:|"
    echo "| peak processes | **${C_PEAKP[River]}** | **${C_PEAKP[nginx]}** | **${C_PEAKP[HAProxy]}** |"
    echo "| peak RSS (MiB) | **${C_PEAKR[River]}** | **${C_PEAKR[nginx]}** | **${C_PEAKR[HAProxy]}** |"
    echo "| peak RSS vs nginx | $(ratio "${C_PEAKR[River]}" "${C_PEAKR[nginx]}") | 1.00 | $(ratio "${C_PEAKR[HAProxy]}" "${C_PEAKR[nginx]}") |"
    echo "| processes at the end | ${C_ENDP[River]} | ${C_ENDP[nginx]} | ${C_ENDP[HAProxy]} |"
    echo "| RSS at the end (MiB) | ${C_ENDR[River]} | ${C_ENDR[nginx]} | ${C_ENDR[HAProxy]} |"
    echo "| long requests opened / cut before their answer | ${C_LONG[River]} / ${C_CUT[River]} | ${C_LONG[nginx]} / ${C_CUT[nginx]} | ${C_LONG[HAProxy]} / ${C_CUT[HAProxy]} |"
fi
if [[ $ONLY == *d* ]]; then
    echo
    echo "(d): $UPGRADES_D binary upgrades 1 s apart under 16 keep-alive clients and 2 loops of fresh connections; one worker/process."
    echo "River \`riverctl upgrade\`; nginx (as a daemon: it ignores USR2 in the foreground) \`kill -USR2\` the master, then \`WINCH\` and \`QUIT\` the old one,"
    echo "and the next USR2 only once the old master is gone (nginx ignores it before);"
    echo "HAProxy \`kill -USR2\` its \`-W\` master, which re-executes its binary."
    echo
    echo "| **d.** $UPGRADES_D binary upgrades | River | nginx | HAProxy |"
    echo "|---|---:|---:|---:|"
    echo "| failed requests | **${D_FAIL[River]}** | **${D_FAIL[nginx]}** | **${D_FAIL[HAProxy]}** |"
    echo "| refused connections | **${D_REFUSED[River]}** | **${D_REFUSED[nginx]}** | **${D_REFUSED[HAProxy]}** |"
    echo "| requests served | ${D_OK[River]} | ${D_OK[nginx]} | ${D_OK[HAProxy]} |"
    echo "| old processes gone after, worst of $UPGRADES_D (s) | ${D_GONE[River]} | ${D_GONE[nginx]} | ${D_GONE[HAProxy]} |"
    echo "| upgrades that did not complete | ${D_ERR[River]} | ${D_ERR[nginx]} | ${D_ERR[HAProxy]} |"
    echo "| seconds for the $UPGRADES_D upgrades (nginx must wait for each old master to exit) | ${D_SECS[River]} | ${D_SECS[nginx]} | ${D_SECS[HAProxy]} |"
fi
if [[ $ONLY == *e* ]]; then
    echo
    echo "(e): $WS_E WebSocket clients (Python asyncio, RFC 6455), each sending a numbered message every 100 ms and checking every echo;"
    echo "$RELOADS_E reloads 0.5 s apart (River and nginx \`kill -HUP\`, HAProxy \`kill -USR2\`); River \`workers 2\` (connection handoff on, the default),"
    echo "nginx \`worker_processes 2\` (no \`worker_shutdown_timeout\`), HAProxy \`nbthread 2\` (no \`hard-stop-after\`); unpinned."
    echo "Processes and RSS: the master and all its descendants, sampled every 50 ms."
    echo
    echo "| **e.** $WS_E WebSockets, $RELOADS_E reloads | River | nginx | HAProxy |"
    echo "|---|---:|---:|---:|"
    echo "| connections cut | **${E_CUT[River]}** | **${E_CUT[nginx]}** | **${E_CUT[HAProxy]}** |"
    echo "| messages lost / out of order | **${E_LOST[River]} / ${E_DIS[River]}** | **${E_LOST[nginx]} / ${E_DIS[nginx]}** | **${E_LOST[HAProxy]} / ${E_DIS[HAProxy]}** |"
    echo "| messages echoed (connections opened) | ${E_SENT[River]} (${E_OPEN[River]}) | ${E_SENT[nginx]} (${E_OPEN[nginx]}) | ${E_SENT[HAProxy]} (${E_OPEN[HAProxy]}) |"
    echo "| peak processes (before the reloads) | **${E_PEAKP[River]}** (${E_BASE[River]}) | **${E_PEAKP[nginx]}** (${E_BASE[nginx]}) | **${E_PEAKP[HAProxy]}** (${E_BASE[HAProxy]}) |"
    echo "| peak RSS (MiB) | ${E_PEAKR[River]} | ${E_PEAKR[nginx]} | ${E_PEAKR[HAProxy]} |"
    echo "| seconds until only the serving generation is left, worst reload | **${E_GONE[River]}** | **${E_GONE[nginx]}** | **${E_GONE[HAProxy]}** |"
    echo "| &nbsp;&nbsp; after the last reload / reloads whose old processes never left | ${E_LAST[River]} / ${E_NEVER[River]} | ${E_LAST[nginx]} / ${E_NEVER[nginx]} | ${E_LAST[HAProxy]} / ${E_NEVER[HAProxy]} |"
fi
echo
echo "Targets (River): a. 0 failed requests: $([ "${A_FAIL[River]:-x}" = 0 ] && echo met || echo "${A_FAIL[River]:-not run}")."\
" c. peak processes ≤ 7: $(if [ -z "${C_PEAKP[River]:-}" ]; then echo not run; elif [ "${C_PEAKP[River]}" -le 7 ]; then echo met; else echo "not met"; fi);"\
" peak RSS ≤ nginx/3: $(if [ -z "${C_PEAKR[River]:-}" ]; then echo not run; else awk -v r="${C_PEAKR[River]}" -v n="${C_PEAKR[nginx]}" 'BEGIN { print (r <= n / 3) ? "met" : "not met" }'; fi)."\
" e. 0 cut, 0 lost, peak processes ≤ 5, old gone within 1 s: $(if [ -z "${E_CUT[River]:-}" ]; then echo not run; elif [ "${E_CUT[River]}" = 0 ] \
    && [ "${E_LOST[River]}" = 0 ] && [ "${E_PEAKP[River]}" -le 5 ] && [ "${E_NEVER[River]}" = 0 ] \
    && awk -v g="${E_GONE[River]}" 'BEGIN { exit !(g <= 1.0) }'; then echo met; else echo "not met"; fi)."
echo
echo "Command: \`bench/reload.sh\` ($(river_source))"
