#!/usr/bin/env bash
# Proxy features, side by side with nginx: (a) TLS termination (HTTPS keep-alive, proxying to
# one fast upstream), (b) the static file server (a 4 KiB and a 1 MiB file). See bench/README.md.
#
# Environment: ROUNDS (default 3), DURATION (s per run, default 5), WARMUP (s, default 1),
# CONNS (default 32), PIN=0 to run unpinned, RIVER=path to the river binary.
#
# Both servers run at once (the idle one costs nothing); each round measures every test on both,
# interleaved, and the table reports each one's best round.
source "$(dirname "$0")/lib.sh"
bench_init

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
CONNS=${CONNS:-32}
WRK_ARGS=(-t1 -c"$CONNS" -d"${DURATION}s" --latency)

# ---------------------------------------------------------------- material
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
mkdir -p "$WORK/www"
head -c 4096 /dev/urandom >"$WORK/www/4k.bin"
head -c 1048576 /dev/urandom >"$WORK/www/1m.bin"
chmod -R a+rX "$WORK"   # nginx workers run as nobody; River's may drop privileges too

start_fast_upstream
echo "upstream: nginx return 200 on 127.0.0.1:$UPSTREAM_PORT (cpus $LOAD_CPUS)" >&2

declare -A RPS P99 ERR RUNS NOTE URL
# measure KEY ROUND: warm up, one wrk run on URL[KEY]; keeps the best round
measure() {
    local key=$1 url=${URL[$1]} out=$WORK/wrk-$1-$2.txt
    run_wrk "$out.warm" -t1 -c"$CONNS" -d"${WARMUP}s" "$url"
    run_wrk "$out" "${WRK_ARGS[@]}" "$url"
    read -r rps p99 reqs errs non2xx <<<"$(wrk_stats "$out")"
    echo "  round $2: $key: rps=$rps p99=${p99}ms requests=$reqs errors=$errs non2xx=$non2xx" >&2
    RUNS[$key]="${RUNS[$key]:-}${RUNS[$key]:+, }$(printf %.0f "$rps")"
    ERR[$key]=$((${ERR[$key]:-0} + errs + non2xx))
    if [ -z "${RPS[$key]:-}" ] || awk -v a="$rps" -v b="${RPS[$key]}" 'BEGIN { exit !(a > b) }'; then
        RPS[$key]=$rps P99[$key]=$p99
    fi
}

# check_body URL FILE: the server answers 200 with exactly FILE's bytes
check_body() {
    if ! curl -sfk "$1" -o "$WORK/check.bin" || ! cmp -s "$WORK/check.bin" "$2"; then
        echo "error: $1 did not return $2" >&2
        exit 1
    fi
}

cipher_of() { # PORT
    openssl s_client -connect "127.0.0.1:$1" -servername localhost </dev/null 2>/dev/null |
        awk '/^New, / && !seen++ { print $2 " " $5 }'
}

# ---------------------------------------------------------------- River
dir=$WORK/river-srv
mkdir -p "$dir"
TLS_PORT=$(free_port)
FILES_PORT=$(free_port)
cat >"$dir/river.kdl" <<EOF
system {
    workers 1
    threads-per-service 1
    pid-file "$dir/river.pid"
    control-socket "$dir/river.sock"
}
services {
    Proxy {
        listeners {
            "127.0.0.1:$TLS_PORT" cert-path="$WORK/cert.pem" key-path="$WORK/key.pem" offer-h2=false
        }
        connectors {
            "127.0.0.1:$UPSTREAM_PORT"
        }
    }
    Files {
        listeners {
            "127.0.0.1:$FILES_PORT"
        }
        file-server {
            base-path "$WORK/www"
        }
    }
}
EOF
start_river "$dir" "$PROXY_CPUS"
wait_port "$TLS_PORT"
wait_port "$FILES_PORT"
curl -sfk "https://127.0.0.1:$TLS_PORT/" >/dev/null
check_body "http://127.0.0.1:$FILES_PORT/4k.bin" "$WORK/www/4k.bin"
check_body "http://127.0.0.1:$FILES_PORT/1m.bin" "$WORK/www/1m.bin"
NOTE[river-tls]=$(cipher_of "$TLS_PORT")
URL[river-tls]=https://127.0.0.1:$TLS_PORT/
URL[river-4k]=http://127.0.0.1:$FILES_PORT/4k.bin
URL[river-1m]=http://127.0.0.1:$FILES_PORT/1m.bin
RIVER_DIR=$dir

# ---------------------------------------------------------------- nginx
dir=$WORK/nginx-srv
mkdir -p "$dir"
TLS_PORT=$(free_port)
FILES_PORT=$(free_port)
{
    nginx_conf_head "$dir" 1
    cat <<EOF
    sendfile on;
    upstream backend {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$TLS_PORT ssl backlog=4096;
        ssl_certificate $WORK/cert.pem;
        ssl_certificate_key $WORK/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
    server {
        listen 127.0.0.1:$FILES_PORT backlog=4096;
        root $WORK/www;
    }
}
EOF
} >"$dir/nginx.conf"
start_nginx "$dir" "$PROXY_CPUS"
wait_port "$TLS_PORT"
wait_port "$FILES_PORT"
curl -sfk "https://127.0.0.1:$TLS_PORT/" >/dev/null
check_body "http://127.0.0.1:$FILES_PORT/4k.bin" "$WORK/www/4k.bin"
check_body "http://127.0.0.1:$FILES_PORT/1m.bin" "$WORK/www/1m.bin"
NOTE[nginx-tls]=$(cipher_of "$TLS_PORT")
URL[nginx-tls]=https://127.0.0.1:$TLS_PORT/
URL[nginx-4k]=http://127.0.0.1:$FILES_PORT/4k.bin
URL[nginx-1m]=http://127.0.0.1:$FILES_PORT/1m.bin

# ---------------------------------------------------------------- rounds
for round in $(seq "$ROUNDS"); do
    for test in tls 4k 1m; do
        measure "river-$test" "$round"
        measure "nginx-$test" "$round"
    done
done
RIVER_THREADS=$(for p in $(descendants "$RIVER_PID"); do sed -n 's/^Threads:\t*//p' "/proc/$p/status"; done | sed -n 1p)
echo "  river worker threads after the file tests: $RIVER_THREADS" >&2
if [ "${BENCH_LOG:-0}" = 1 ]; then grep -v "Illegal SNI" "$RIVER_DIR/river.log" | tail -20 >&2; fi

# ---------------------------------------------------------------- table
echo
echo "Proxy features vs nginx: wrk \`-t1 -c$CONNS -d${DURATION}s --latency\` (keep-alive) after a ${WARMUP}s warm-up, best of $ROUNDS interleaved rounds."
echo "River \`workers 1; threads-per-service 1\`, nginx \`worker_processes 1\` (\`sendfile on\`, as in Debian's nginx.conf)$([ "$PIN" = 1 ] && echo "; server on cpu $PROXY_CPUS, upstream and wrk on cpu $LOAD_CPUS")."
echo "TLS: self-signed P-256 certificate, HTTP/1.1 over TLS (River \`offer-h2=false\`); negotiated: River ${NOTE[river-tls]:-?}, nginx ${NOTE[nginx-tls]:-?}."
echo "River's worker had $RIVER_THREADS threads after the file tests (threads-per-service 1)."
echo "$(machine_note)"
echo
echo "| test | River req/s | River p99 | nginx req/s | nginx p99 | River / nginx | every round, River / nginx | errors (River / nginx) |"
echo "|---|---:|---:|---:|---:|---:|---|---:|"
row() { # LABEL KEY
    printf '| %s | %.0f | %.2f ms | %.0f | %.2f ms | **%s** | %s / %s | %d / %d |\n' "$1" "${RPS[river-$2]}" "${P99[river-$2]}" \
        "${RPS[nginx-$2]}" "${P99[nginx-$2]}" "$(ratio "${RPS[river-$2]}" "${RPS[nginx-$2]}")" \
        "${RUNS[river-$2]}" "${RUNS[nginx-$2]}" "${ERR[river-$2]}" "${ERR[nginx-$2]}"
}
row "TLS termination, proxy to upstream (HTTPS keep-alive)" tls
row "file server, 4 KiB file" 4k
row "file server, 1 MiB file" 1m
echo
echo "Target: River ≥ 0.80 of nginx on each row."
echo
echo "Command: \`bench/tls-files.sh\` ($(river_source))"
