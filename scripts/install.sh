#!/usr/bin/env bash
# Install what sandport needs on Debian 12, as root: host packages and a virtualenv in .venv.
#   bash scripts/install.sh server   # what `sandport serve` needs
#   bash scripts/install.sh test     # that, plus the test and lint tools
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-server}"

# runc: the OCI runtime. iproute2/iptables: per-sandbox netns, veth and host filter rules.
# conntrack: a policy change ends the flows the host's NAT had let past the name gate.
# mmdebstrap: builds the built-in images from Debian packages. tini: the sandboxes' init.
# golang-github-containers-common: the seccomp profile. libnss-myhostname: *.localhost names.
# gcc, libc6-dev: build the in-sandbox agent (static C) once. curl: the README's examples.
# python3-venv: the virtualenv below. e2fsprogs: mkfs.ext4 for each sandbox's own disk (the
# filesystem that enforces diskSizeMiB).
packages=(runc iproute2 iptables conntrack mmdebstrap tini golang-github-containers-common gcc
          libc6-dev libnss-myhostname curl ca-certificates python3 python3-venv e2fsprogs)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# *.localhost resolves to loopback for every glibc client (Python, the hyperbrowser SDK),
# not only curl and browsers: nss-myhostname must be on the hosts line.
if ! grep -Eq '^hosts:.*[[:space:]]myhostname' /etc/nsswitch.conf; then
    sed -i -E '/^hosts:/ s/^(hosts:[[:space:]]+files)/\1 myhostname/' /etc/nsswitch.conf
    grep -Eq '^hosts:.*[[:space:]]myhostname' /etc/nsswitch.conf ||
        sed -i -E '/^hosts:/ s/$/ myhostname/' /etc/nsswitch.conf
fi

# The console's browser tests drive Debian's Chromium (test tools only).
if [ "$extra" = "test" ] && ! dpkg-query -W -f='${Status}' chromium 2>/dev/null |
        grep -q "install ok installed"; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium ||
        { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
          apt-get install -y -q --no-install-recommends chromium; }
fi

# Image pull tests (test tools only): docker-registry is CNCF distribution 2.8, run by the
# tests as real plain, basic-auth and token-auth registries on loopback; skopeo is a second,
# independent registry client that reads back what the tests push; busybox-static is the
# tests' images' base layer (one static binary, no libc to copy); dnsmasq-base is the
# upstream resolver of the tests' own "world" namespace (sandboxes' lookups go there, never
# to the host's resolvers).
test_packages=(docker-registry skopeo busybox-static dnsmasq-base)
if [ "$extra" = "test" ]; then
    missing=()
    for p in "${test_packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$p")
    done
    if ((${#missing[@]})); then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            "${missing[@]}" ||
            { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
              apt-get install -y -q --no-install-recommends "${missing[@]}"; }
    fi
    # Debian's package enables a system registry on :5000; the tests start their own on
    # free ports, and a stray one only gets in the way, so it is stopped and kept off.
    if [ -d /run/systemd/system ]; then
        systemctl stop docker-registry.service >/dev/null 2>&1 || true
    else
        /etc/init.d/docker-registry stop >/dev/null 2>&1 || true
    fi
    systemctl disable docker-registry.service >/dev/null 2>&1 ||
        update-rc.d docker-registry disable >/dev/null 2>&1 || true
fi

# Suspend to disk: a CRIU that works with this kernel (built once if Debian's does not).
bash scripts/build-criu.sh

# The console's terminal: xterm.js, bundled by esbuild with the machine's Node.js from the
# npm registry (versions pinned by console/package-lock.json) into the package's static/.
if ! command -v npm >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nodejs npm
fi
(cd console && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build)
# The official E2B JS SDK, run unchanged by tests/e2e/test_e2b_js.py (test tools only;
# pinned by tests/e2e/js/package-lock.json).
# It wants Node 20.18.1+ or 22+ (undici 7): an older system Node gets Node 22 beside it,
# from the npm registry's node package, in tests/e2e/js/.node (the test prefers that one).
if [ "$extra" = "test" ]; then
    if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number);
                  process.exit((a === 20 && b >= 18) || a >= 22 ? 0 : 1)' 2>/dev/null &&
            [ ! -x tests/e2e/js/.node/node_modules/.bin/node ]; then
        npm install --prefix tests/e2e/js/.node --no-audit --no-fund --loglevel=error node@22
    fi
    (cd tests/e2e/js && npm ci --no-audit --no-fund --loglevel=error)
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[$extra]"
