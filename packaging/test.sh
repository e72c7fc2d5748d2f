#!/usr/bin/env bash
# packaging/test.sh: build River's .deb, lint it, install it for real, drive the
# service through /etc/init.d/river (start, requests, reload, broken reload,
# status, stop) and purge it. Root on Debian only; otherwise it skips (exit 0).
# Whatever happens, the trap stops the service, kills what the package started,
# purges the package and removes the river user.
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo" || exit 1

if [ "$(id -u)" -ne 0 ]; then
    echo "packaging/test.sh: SKIPPED: must run as root (it installs and purges the river package)"
    exit 0
fi
if [ ! -r /etc/debian_version ] || ! command -v dpkg >/dev/null; then
    echo "packaging/test.sh: SKIPPED: not a Debian system (no /etc/debian_version or dpkg)"
    exit 0
fi

passed=0
failed=0
pass() { echo "PASS: $*"; passed=$((passed + 1)); }
fail() { echo "FAIL: $*"; failed=$((failed + 1)); }
# check DESCRIPTION COMMAND...: PASS if the command succeeds.
check() {
    local what=$1
    shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}
summary() {
    echo "$passed passed, $failed failed"
}
# A failure later steps cannot work without: report, clean up (trap), stop.
abort() {
    fail "$*"
    echo "packaging/test.sh: aborting: later steps depend on this"
    exit 1
}

ADDRS=(127.0.0.1:8080 127.0.0.1:8081)
CONF=/etc/river/river.kdl
INIT=/etc/init.d/river
PIDFILE=/run/river/river.pid
work=$(mktemp -d)

# Processes running the packaged binary (master and workers); the integration
# tests' rivers run from target/ and are never matched.
package_pids() {
    local proc exe
    for proc in /proc/[0-9]*; do
        exe=$(readlink "$proc/exe" 2>/dev/null) || continue
        case "$exe" in
            /usr/sbin/river | "/usr/sbin/river (deleted)") echo "${proc#/proc/}" ;;
        esac
    done
}

known_to_dpkg() { dpkg-query -W river >/dev/null 2>&1; }

cleanup() {
    local status=$?
    set +e
    if [ -x "$INIT" ]; then
        timeout 60 "$INIT" stop >/dev/null 2>&1
    fi
    local pids
    pids=$(package_pids)
    if [ -n "$pids" ]; then
        echo "cleanup: killing leftover river processes: $(echo $pids)"
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null
    fi
    if known_to_dpkg; then
        dpkg --purge river >/dev/null 2>&1 || echo "cleanup: dpkg --purge river failed"
    fi
    if [ "$created_user" = yes ]; then
        getent passwd river >/dev/null && userdel river 2>/dev/null
        getent group river >/dev/null && groupdel river 2>/dev/null
        rm -rf /etc/river /var/log/river /run/river
    fi
    rm -rf "$work"
    if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
        fail "test.sh stopped unexpectedly (exit $status)"
    fi
    summary
    if [ "$failed" -ne 0 ]; then exit 1; fi
    exit "$status"
}

# --- Preconditions: never touch an operator's river, never fight for ports.
created_user=no
if known_to_dpkg; then
    echo "packaging/test.sh: FAIL: a river package is already installed (or not purged); this test would purge it."
    echo "0 passed, 1 failed"
    exit 1
fi
if getent passwd river >/dev/null || getent group river >/dev/null || [ -e /etc/river ]; then
    echo "packaging/test.sh: FAIL: a river user/group or /etc/river exists already; remove it first (this test creates and removes them)."
    echo "0 passed, 1 failed"
    exit 1
fi
for addr in "${ADDRS[@]}"; do
    port=${addr##*:}
    if [ -n "$(ss -ltnH "sport = :$port")" ]; then
        echo "packaging/test.sh: FAIL: port $port is in use, and the packaged default config listens there:"
        ss -ltnp "sport = :$port"
        echo "0 passed, 1 failed"
        exit 1
    fi
done
if [ -n "$(package_pids)" ]; then
    echo "packaging/test.sh: FAIL: /usr/sbin/river processes are running already: $(package_pids | tr '\n' ' ')"
    echo "0 passed, 1 failed"
    exit 1
fi
created_user=yes
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- Build.
started=$(date +%s)
if ! packaging/build-deb.sh "$work/deb" >"$work/build.log" 2>&1; then
    tail -n 30 "$work/build.log"
    abort "build-deb.sh builds the package"
fi
grep '^build-deb: release build took' "$work/build.log"
deb=$(ls "$work"/deb/river_*_"$(dpkg --print-architecture)".deb 2>/dev/null | head -n 1)
[ -n "$deb" ] || abort "build-deb.sh produced river_<version>_<arch>.deb"
pass "build-deb.sh built $(basename "$deb") in $(($(date +%s) - started)) s"

version=$(awk '/^\[/ { s = $0 } s == "[workspace.package]" && $1 == "version" { gsub(/"/, "", $3); print $3; exit }' Cargo.toml)
check "package version $(dpkg-deb -f "$deb" Version) comes from Cargo.toml ($version)" \
    test "$(dpkg-deb -f "$deb" Version)" = "$version-1"
check "control: Section httpd, Priority optional, libc6 in Depends" \
    sh -c "dpkg-deb -f '$deb' Section | grep -qx httpd && dpkg-deb -f '$deb' Priority | grep -qx optional && dpkg-deb -f '$deb' Depends | grep -q 'libc6 (>= '"

# --- Lint. initial-upload-closes-no-bugs cannot apply: the package is not
# uploaded to Debian, so there is no ITP bug to close.
if command -v lintian >/dev/null; then
    if lintian --display-info --fail-on error,warning --suppress-tags initial-upload-closes-no-bugs \
        "$deb" >"$work/lintian.log" 2>&1; then
        pass "lintian: no errors or warnings"
    else
        cat "$work/lintian.log"
        fail "lintian: no errors or warnings"
    fi
    grep -v 'running with root privileges' "$work/lintian.log" | sed 's/^/  lintian: /'
else
    fail "lintian is installed (scripts/install-deps)"
fi

check "the packaged default config validates (river --validate -c packaging/river.kdl)" \
    sh -c 'target/release/river --validate -c packaging/river.kdl >/dev/null'

# --- Install: Depends first, then dpkg -i.
missing=()
for dep in $(dpkg-deb -f "$deb" Pre-Depends Depends | sed -e 's/^[A-Za-z-]*://' -e 's/([^)]*)//g' -e 's/,/ /g'); do
    dpkg-query -W -f='${Status}' "$dep" 2>/dev/null | grep -q 'install ok' || missing+=("$dep")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing dependencies: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if dpkg -i "$deb" >"$work/install.log" 2>&1; then
    pass "dpkg -i installs the package"
else
    cat "$work/install.log"
    abort "dpkg -i installs the package"
fi
# Where an init system runs and policy-rc.d allows it, postinst started River.
if [ -n "$(package_pids)" ]; then
    echo "note: postinst started the service; stopping it to test start"
    timeout 60 "$INIT" stop >/dev/null
fi

# --- Files, user, permissions.
mode_owner() { stat -c '%a %U:%G' "$1" 2>/dev/null; }
check "/usr/sbin/river is 755 root:root" test "$(mode_owner /usr/sbin/river)" = "755 root:root"
check "/usr/bin/riverctl is 755 root:root" test "$(mode_owner /usr/bin/riverctl)" = "755 root:root"
check "binaries are stripped (no .symtab, no .debug_info)" \
    sh -c '! readelf -S /usr/sbin/river /usr/bin/riverctl | grep -qE "\.symtab|\.debug_info"'
check "riverctl runs (--version)" sh -c '/usr/bin/riverctl --version | grep -q riverctl'
check "$CONF is a conffile, 644 root:root" \
    sh -c "dpkg-query -W -f='\${Conffiles}' river | grep -q ' $CONF ' && test \"\$(stat -c '%a %U:%G' $CONF)\" = '644 root:root'"
check "$INIT is 755 and has LSB headers" \
    sh -c "test \"\$(stat -c %a $INIT)\" = 755 && grep -q '^### BEGIN INIT INFO' $INIT"
for file in /lib/systemd/system/river.service /etc/logrotate.d/river /etc/default/river \
    /usr/share/doc/river/copyright /usr/share/doc/river/changelog.Debian.gz \
    /usr/share/bash-completion/completions/river /usr/share/bash-completion/completions/riverctl \
    /usr/share/zsh/vendor-completions/_river /usr/share/zsh/vendor-completions/_riverctl \
    /usr/share/fish/vendor_completions.d/river.fish /usr/share/fish/vendor_completions.d/riverctl.fish \
    /usr/share/river/river-dashboard.json; do
    check "$file installed" test -f "$file"
done
check "man pages river.8.gz and riverctl.8.gz pass gzip -t" \
    gzip -t /usr/share/man/man8/river.8.gz /usr/share/man/man8/riverctl.8.gz
if command -v man >/dev/null; then
    check "man -l river.8.gz renders and documents --validate, not the worker subcommand" \
        sh -c 'out=$(MANWIDTH=100 man -l /usr/share/man/man8/river.8.gz 2>&1) && echo "$out" | grep -q -- "--validate" && ! echo "$out" | grep -qi "ipc-fd"'
    check "man -l river.8.gz documents the metrics" \
        sh -c 'MANWIDTH=100 man -l /usr/share/man/man8/river.8.gz 2>&1 | grep -q river_requests_total'
    check "man -l riverctl.8.gz renders and documents reload" \
        sh -c 'MANWIDTH=100 man -l /usr/share/man/man8/riverctl.8.gz 2>&1 | grep -q reload'
fi
check "user river exists, no login shell, home /nonexistent" \
    sh -c 'getent passwd river | awk -F: "{ exit !(\$7 ~ /(nologin|false)\$/ && \$6 == \"/nonexistent\") }"'
check "group river exists" sh -c "getent group river >/dev/null"
check "/var/log/river is 750 root:adm (written by the root master only)" \
    test "$(mode_owner /var/log/river)" = "750 root:adm"
check "/run/river is 755 root:root" test "$(mode_owner /run/river)" = "755 root:root"
if command -v systemd-analyze >/dev/null; then
    if systemd-analyze verify /lib/systemd/system/river.service >"$work/verify.log" 2>&1 \
        && ! grep -q . "$work/verify.log"; then
        pass "systemd-analyze verify river.service: clean"
    else
        sed 's/^/  systemd-analyze: /' "$work/verify.log"
        fail "systemd-analyze verify river.service: clean"
    fi
else
    echo "note: systemd-analyze not installed: unit not verified"
fi
if command -v logrotate >/dev/null; then
    if logrotate --debug --state "$work/logrotate.state" /etc/logrotate.d/river >"$work/logrotate.log" 2>&1 \
        && ! grep -qi '^error' "$work/logrotate.log"; then
        pass "logrotate --debug accepts /etc/logrotate.d/river"
    else
        sed 's/^/  logrotate: /' "$work/logrotate.log"
        fail "logrotate --debug accepts /etc/logrotate.d/river"
    fi
fi
check "$INIT configtest" sh -c "$INIT configtest >/dev/null 2>&1"

# --- Start.
if timeout 60 "$INIT" start >"$work/start.log" 2>&1; then
    pass "$INIT start: $(tr '\n' ' ' <"$work/start.log")"
else
    cat "$work/start.log"; tail -n 20 /var/log/river/river.log 2>/dev/null
    abort "$INIT start"
fi
check "$INIT status exits 0 while running" sh -c "$INIT status >/dev/null 2>&1"
master=$(cat "$PIDFILE" 2>/dev/null)
[ -n "$master" ] && kill -0 "$master" 2>/dev/null || abort "the pid file $PIDFILE names a live master"
check "the master (pid $master) runs as root" test "$(ps -o user= -p "$master" | tr -d ' ')" = root

workers() { pgrep -P "$1" | sort -n | tr '\n' ' '; }
# The serving generation's worker pids, from riverctl status. Draining workers
# may outlive a reload for as long as an idle keep-alive connection holds them
# (here, the old generation's own upstream pool to :8081), up to the drain deadline.
serving_workers() {
    riverctl -c "$CONF" status | awk '
        /^generation / { serving = ($3 == "serving") }
        serving && /worker pid/ { print $3 }' | sort -n | tr '\n' ' '
}
# WORKERS_OWNED_BY_RIVER PIDS...: every worker runs as river.
owned_by_river() {
    local pid
    [ $# -gt 0 ] || return 1
    for pid in "$@"; do
        [ "$(ps -o user= -p "$pid" | tr -d ' ')" = river ] || return 1
    done
}
before=$(workers "$master")
# shellcheck disable=SC2086
set -- $before
check "2 workers, children of the master ($before)" test $# -eq 2
# shellcheck disable=SC2086
check "workers run as river" owned_by_river $before

# header NAME: the header's value in the last response of $work/headers.
get() {
    curl -sS -m 10 -o "$work/body" -D "$work/headers" "$1"
}
header() { tr -d '\r' <"$work/headers" | awk -F': ' -v name="$1" 'tolower($1) == name { print $2 }'; }
if get http://127.0.0.1:8080/; then
    check "the proxy on :8080 answers 200" grep -q '^HTTP/1.1 200' "$work/headers"
    check "the welcome page comes through the proxy" grep -q 'Welcome to River' "$work/body"
    check "the proxy adds x-served-by: river" test "$(header x-served-by)" = river
else
    fail "curl http://127.0.0.1:8080/ (the proxy)"
fi
if get http://127.0.0.1:8081/; then
    check "the welcome service on :8081 answers without the proxy's header" \
        sh -c "grep -q 'Welcome to River' '$work/body' && ! grep -qi '^x-served-by' '$work/headers'"
else
    fail "curl http://127.0.0.1:8081/ (the welcome service)"
fi
check "the access log is written" sh -c 'sleep 0.5; test -s /var/log/river/access.log'

# --- Reload with a changed config: new behaviour, same master, new workers.
cp "$CONF" "$work/river.kdl.orig"
sed -i 's/value="river"/value="river-reloaded"/' "$CONF"
if timeout 130 "$INIT" reload >"$work/reload.log" 2>&1; then
    pass "$INIT reload: $(tr '\n' ' ' <"$work/reload.log")"
else
    cat "$work/reload.log"
    fail "$INIT reload after editing the config"
fi
if get http://127.0.0.1:8080/ && [ "$(header x-served-by)" = river-reloaded ]; then
    pass "after reload the proxy sends x-served-by: river-reloaded"
else
    fail "after reload the proxy sends x-served-by: river-reloaded (got '$(header x-served-by)')"
fi
check "reload keeps the master (pid $master)" test "$(cat "$PIDFILE" 2>/dev/null)" = "$master"
# The new generation serves with new workers; the old one drains.
after=$(serving_workers)
# shellcheck disable=SC2086
set -- $after
overlap=no
for pid in $before; do case " $after " in *" $pid "*) overlap=yes ;; esac; done
check "reload replaced both workers ($before-> $after)" sh -c "[ '$overlap' = no ] && [ $# -eq 2 ]"
# shellcheck disable=SC2086
check "the new workers run as river" owned_by_river $after

# --- Reload with a broken config: error with file:line:column, nothing changes.
sed -i 's/^\(\s*\)workers 2/\1wrokers 2/' "$CONF"
if timeout 130 "$INIT" reload >"$work/bad.log" 2>&1; then
    cat "$work/bad.log"
    fail "$INIT reload with a broken config exits non-zero"
else
    pass "$INIT reload with a broken config exits non-zero"
fi
if grep -qE "$CONF:[0-9]+:[0-9]+" "$work/bad.log"; then
    pass "the reload error names $(grep -oE "$CONF:[0-9]+:[0-9]+" "$work/bad.log" | head -n 1)"
else
    cat "$work/bad.log"
    fail "the reload error names file:line:column"
fi
# riverctl alone: the master's own validation refuses it too.
if timeout 130 riverctl -c "$CONF" reload >"$work/bad2.log" 2>&1; then
    fail "riverctl reload with a broken config exits non-zero"
else
    check "riverctl reload with a broken config exits 1 and shows file:line:column" \
        grep -qE "$CONF:[0-9]+:[0-9]+" "$work/bad2.log"
fi
if get http://127.0.0.1:8080/ && [ "$(header x-served-by)" = river-reloaded ]; then
    pass "after the broken reload the old config still serves"
else
    fail "after the broken reload the old config still serves (got '$(header x-served-by)')"
fi
# kept_serving PIDS: the same master, and PIDS still the serving workers.
kept_serving() { [ "$(cat "$PIDFILE")" = "$master" ] && [ "$(serving_workers)" = "$1" ]; }
check "the broken reload kept the master and the serving workers ($after)" kept_serving "$after"
cp "$work/river.kdl.orig" "$CONF"

# --- Binary upgrade: a package of a newer version installed over the running
# one, under keep-alive load and a loop of fresh connections. postinst runs
# `riverctl upgrade`, not a restart: nothing fails, nothing is refused.
next_version="${version}+up1"
if RIVER_DEB_VERSION="$next_version" packaging/build-deb.sh "$work/deb2" >"$work/build2.log" 2>&1; then
    deb2=$(ls "$work"/deb2/river_*_"$(dpkg --print-architecture)".deb 2>/dev/null | head -n 1)
    pass "build-deb.sh built $(basename "$deb2") from the same tree"
    conf_sum=$(md5sum <"$CONF")
    old_master=$(cat "$PIDFILE")
    old_workers=$(pgrep -P "$old_master" | tr '\n' ' ')
    python3 packaging/upgrade-load.py 127.0.0.1:8080 "$work/stop-load" >"$work/load.json" 2>&1 &
    load=$!
    sleep 1
    if timeout 180 dpkg -i "$deb2" >"$work/upgrade.log" 2>&1; then
        pass "dpkg -i $(basename "$deb2") over the running $version"
    else
        cat "$work/upgrade.log"
        fail "dpkg -i $(basename "$deb2") over the running $version"
    fi
    sleep 1
    touch "$work/stop-load"
    wait "$load"
    summary_json=$(cat "$work/load.json")
    load_field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])" <"$work/load.json"; }
    check "postinst upgraded the binary instead of restarting ($(grep -o 'upgraded: .*' "$work/upgrade.log"))" \
        grep -q "upgraded: river $next_version" "$work/upgrade.log"
    check "no request failed during the package upgrade ($summary_json)" test "$(load_field failed)" = 0
    check "no connection was refused during the package upgrade" test "$(load_field refused)" = 0
    check "requests kept flowing during the package upgrade ($(load_field ok) ok)" test "$(load_field ok)" -gt 100
    new_master=$(cat "$PIDFILE" 2>/dev/null)
    check "the pid file names the new master ($old_master -> $new_master)" \
        sh -c "[ -n '$new_master' ] && [ '$new_master' != '$old_master' ] && kill -0 '$new_master'"
    check "riverctl status: the serving master is river $next_version" \
        sh -c "riverctl -c '$CONF' status | head -n 1 | grep -q 'river $next_version'"
    gone=no
    for _ in $(seq 75); do
        alive=
        for pid in $old_master $old_workers; do kill -0 "$pid" 2>/dev/null && alive="$alive $pid"; done
        if [ -z "$alive" ]; then gone=yes; break; fi
        sleep 0.2
    done
    check "the old master and its workers ($old_master $old_workers) are gone after the drain" test "$gone" = yes
    check "the conffile $CONF is untouched by the upgrade" test "$(md5sum <"$CONF")" = "$conf_sum"
    check "dpkg knows river $next_version-1" \
        sh -c "[ \"\$(dpkg-query -W -f='\${Version}' river)\" = '$next_version-1' ]"
    master=$new_master
else
    tail -n 30 "$work/build2.log"
    fail "build-deb.sh builds a package of version $next_version"
fi

# --- Stop.
check "$INIT status exits 0 while running" sh -c "$INIT status >/dev/null 2>&1"
stop_started=$(date +%s)
if timeout 120 "$INIT" stop >"$work/stop.log" 2>&1; then
    pass "$INIT stop ($(($(date +%s) - stop_started)) s)"
else
    cat "$work/stop.log"
    fail "$INIT stop"
fi
check "no river process is left after stop" test -z "$(package_pids)"
check "the pid file is gone after stop" test ! -e "$PIDFILE"
"$INIT" status >/dev/null 2>&1
check "$INIT status exits 3 after stop" test $? -eq 3

# --- The unit's privileges, without systemd: run the master with the unit's
# CapabilityBoundingSet and NoNewPrivileges=yes (setpriv) and check that it
# serves, drops its workers to river, reloads and stops. Catches a capability
# the master needs but the unit takes away (e.g. CAP_KILL: without it a stop
# cannot signal the workers and hangs).
if command -v setpriv >/dev/null; then
    caps=$(sed -n 's/^CapabilityBoundingSet=//p' /lib/systemd/system/river.service \
        | tr 'A-Z' 'a-z' | sed -e 's/cap_/+/g' -e 's/  */,/g' -e 's/,$//')
    install -d -m 0755 /run/river
    # shellcheck disable=SC2086
    setpriv --no-new-privs --inh-caps=-all --bounding-set=-all,$caps \
        /usr/sbin/river -c "$CONF" --pidfile "$PIDFILE" >"$work/setpriv.log" 2>&1 &
    hardened=$!
    for _ in $(seq 50); do
        riverctl -c "$CONF" status 2>/dev/null | grep -q ' serving' && break
        sleep 0.2
    done
    if get http://127.0.0.1:8080/ && [ "$(header x-served-by)" = river ]; then
        pass "with only $caps and no_new_privs, the master serves"
    else
        sed 's/^/  river: /' "$work/setpriv.log"
        fail "with only $caps and no_new_privs, the master serves"
    fi
    # shellcheck disable=SC2046
    check "... and its workers run as river" owned_by_river $(pgrep -P "$hardened")
    check "... and it reloads" sh -c "riverctl -c '$CONF' reload >/dev/null"
    riverctl -c "$CONF" stop >/dev/null 2>&1
    for _ in $(seq 50); do
        [ -z "$(package_pids)" ] && break
        sleep 0.2
    done
    if [ -z "$(package_pids)" ]; then
        pass "... and riverctl stop ends the master and its workers"
    else
        fail "... and riverctl stop ends the master and its workers (left: $(package_pids | tr '\n' ' '))"
        # shellcheck disable=SC2046
        kill -KILL $(package_pids) 2>/dev/null
    fi
    wait "$hardened" 2>/dev/null
fi

# --- Remove keeps the config; purge removes everything.
check "dpkg --remove river succeeds" sh -c 'dpkg --remove river >/dev/null 2>&1'
check "remove keeps $CONF" test -f "$CONF"
check "dpkg --purge river succeeds" sh -c 'dpkg --purge river >/dev/null 2>&1'
check "purge: no river process" test -z "$(package_pids)"
check "purge: no /etc/river" test ! -e /etc/river
check "purge: no /var/log/river" test ! -e /var/log/river
check "purge: no /run/river" test ! -e /run/river
check "purge: no river user or group" sh -c '! getent passwd river && ! getent group river'
check "purge: dpkg forgets river" sh -c '! dpkg-query -W river >/dev/null 2>&1'

echo "packaging/test.sh took $(($(date +%s) - started)) s"
# The trap prints the summary and sets the exit status.
exit 0
