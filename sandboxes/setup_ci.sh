#!/usr/bin/env bash
# Prepare a fresh Debian 12 machine (as root) for the sandbox and viewer tests; safe to run again.
#
#   1. installs bubblewrap, docker.io, util-linux (prlimit, setpriv), libseccomp2 (the bubblewrap
#      sandbox's seccomp filter, through the pyseccomp dependency), python3 and chromium (the
#      viewer's tests open its pages in it, headless) if any is missing;
#   2. starts dockerd with no bridge and no iptables (overlay2, falling back to vfs), its data,
#      socket and log under $MAMBA_AGENT_DOCKER_DIR (default /tmp/mamba-agent-docker), unless an
#      engine already answers on that socket;
#   3. builds the sandbox image offline (mamba_agent.sandboxes.docker.build_image);
#   4. writes "$MAMBA_AGENT_DOCKER_DIR/env" (export DOCKER_HOST=unix://...) and prints that line last.
#
# The tests find the engine through DOCKER_HOST, so after this script:
#   . /tmp/mamba-agent-docker/env        # or: export DOCKER_HOST=unix:///tmp/mamba-agent-docker/docker.sock
# Needs the project installed (the image is built by mamba_agent.sandboxes.docker.build_image);
# $PYTHON (default: python3) is the interpreter that has it. Finishes in about 15 s from scratch,
# plus the download of chromium (about 113 MB, 414 MB installed, on 2026-12-07).
# Stop the engine with: kill "$(cat /tmp/mamba-agent-docker/dockerd.pid)"; then
#   umount /tmp/mamba-agent-docker/exec/netns/default   (dockerd leaves this mount behind)
set -euo pipefail

D="${MAMBA_AGENT_DOCKER_DIR:-/tmp/mamba-agent-docker}"
PYTHON="${PYTHON:-python3}"
SOCK="unix://$D/docker.sock"

log() { echo "setup_ci: $*" >&2; }
die() { echo "setup_ci: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts dockerd)"

# 1. Packages. No recommends: neither the engine nor the headless browser needs them.
need=()
command -v bwrap >/dev/null || need+=(bubblewrap)
command -v dockerd >/dev/null || need+=(docker.io)
{ command -v prlimit && command -v setpriv; } >/dev/null || need+=(util-linux)
ldconfig -p | grep -q 'libseccomp\.so\.2 ' || need+=(libseccomp2)
[ -x /usr/bin/python3 ] || need+=(python3)  # the image is built from Debian's python3
command -v chromium >/dev/null || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

"$PYTHON" -c 'import docker, mamba_agent.sandboxes' \
    || die "$PYTHON cannot import docker-py and mamba_agent: install the project first (pip install -e .)"

# 2. Engine. A bounded wait: the engine answers in about 1 s on these machines.
ping_engine() { DOCKER_HOST="$SOCK" "$PYTHON" -c 'import docker; docker.from_env(timeout=5).ping()' 2>/dev/null; }

start_dockerd() {  # $1: storage driver; returns 0 once the engine answers
    mkdir -p "$D"
    log "starting dockerd (storage driver $1), log in $D/dockerd.log"
    setsid nohup dockerd --bridge=none --iptables=false --ip6tables=false --storage-driver="$1" \
        --data-root "$D/root" --exec-root "$D/exec" --pidfile "$D/dockerd.pid" \
        -H "$SOCK" >"$D/dockerd.log" 2>&1 </dev/null &
    local pid=$! deadline=$((SECONDS + 30))
    while [ "$SECONDS" -lt "$deadline" ]; do
        ping_engine && return 0
        kill -0 "$pid" 2>/dev/null || return 1  # it exited: the driver does not work here
        sleep 0.5
    done
    kill "$pid" 2>/dev/null || true
    return 1
}

if ping_engine; then
    log "engine already answers at $SOCK"
else
    if [ -f "$D/dockerd.pid" ] && kill -0 "$(cat "$D/dockerd.pid")" 2>/dev/null; then
        die "a dockerd (pid $(cat "$D/dockerd.pid")) runs but does not answer at $SOCK; see $D/dockerd.log"
    fi
    start_dockerd overlay2 || start_dockerd vfs \
        || die "dockerd did not answer at $SOCK within 30 s; last log lines:
$(tail -n 20 "$D/dockerd.log")"
fi

# 3. Image (skipped when the tag already exists).
DOCKER_HOST="$SOCK" "$PYTHON" -c 'from mamba_agent.sandboxes.docker import build_image; print("setup_ci: image", build_image())' >&2

# 4. Tell the tests where the engine is.
echo "export DOCKER_HOST=$SOCK" >"$D/env"
echo "export DOCKER_HOST=$SOCK"
