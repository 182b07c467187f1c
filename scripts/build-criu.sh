#!/usr/bin/env bash
# Suspend to disk (runc checkpoint/restore) needs a CRIU that works with the host's kernel:
# Debian 12's criu 3.17 fails `criu check` on Linux >= 6.13 (the vDSO was split in two).
# When no installed criu passes its check, build CRIU 4.2.1 from Debian's source tarball
# (checksum pinned) into /usr/local/sbin/criu. Never fatal: without it, sandport answers
# suspend requests with 501 and the reason.
#   bash scripts/build-criu.sh
set -uo pipefail

TARGET=/usr/local/sbin/criu
VERSION=4.2.1
SHA256=29ec0ee09e296479fe7048c80980e8ef1d0684d0b0204c2b101dfea19f6725b9
URL="https://deb.debian.org/debian/pool/main/c/criu/criu_${VERSION}.orig.tar.xz"

for criu in "$TARGET" "$(command -v criu || true)"; do
    if [ -n "$criu" ] && [ -x "$criu" ] && "$criu" check >/dev/null 2>&1; then
        exit 0  # a working one is there
    fi
done

warn() { echo "build-criu: $*; suspend to disk stays unavailable" >&2; exit 0; }

deps=(make gcc pkg-config xz-utils libbsd-dev libcap-dev libgnutls28-dev libnet1-dev
      libnftables-dev libnl-3-dev libprotobuf-c-dev libprotobuf-dev protobuf-c-compiler
      protobuf-compiler uuid-dev python3)
missing=()
for p in "${deps[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null ||
        { apt-get update -q >/dev/null &&
          apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; } ||
        warn "its build dependencies did not install"
fi

work=$(mktemp -d /var/tmp/sandport-criu.XXXXXX)
trap 'rm -rf "$work"' EXIT
curl -fsSL --retry 3 -o "$work/criu.tar.xz" "$URL" || warn "cannot download $URL"
echo "$SHA256  $work/criu.tar.xz" | sha256sum -c --quiet - || warn "checksum mismatch"
tar -xJf "$work/criu.tar.xz" -C "$work" || warn "cannot unpack the source"
src="$work/criu-$VERSION"
# Debian 12's protoc does not find descriptor.proto where CRIU's build looks for it.
mkdir -p "$src/images/google/protobuf"
cp /usr/include/google/protobuf/descriptor.proto "$src/images/google/protobuf/"
echo "building CRIU $VERSION (once; about a minute)" >&2
make -C "$src" -j"$(nproc)" criu >"$work/build.log" 2>&1 ||
    { tail -20 "$work/build.log" >&2; warn "the build failed"; }
install -m 0755 "$src/criu/criu" "$TARGET"
"$TARGET" check >/dev/null 2>&1 || warn "the built criu fails its check on this kernel"
echo "CRIU $VERSION installed at $TARGET" >&2
