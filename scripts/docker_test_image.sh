#!/usr/bin/env bash
# Local Docker images for repro's container tests, built without any image registry.
#
#   usage: scripts/docker_test_image.sh [base|vllm|gb10|arm64-base|arm64|all]...   (default: gb10)
#
#   base        repro-test/debian:bookworm-amd64   Debian 12 minbase from Debian's packages (debootstrap),
#                                                  Python 3.11 in a venv at /opt/venv (on PATH)
#   vllm        repro-test/vllm-cpu:latest         base + the CPU vLLM of a local virtualenv ($REPRO_VENV,
#                                                  default ./.venv: vllm-cpu, torch CPU) copied into /opt/venv;
#                                                  no repro in it: a stand-in for vllm/vllm-openai
#   gb10        repro-test/gb10:cpu                Dockerfile.gb10 built with BASE_IMAGE=repro-test/vllm-cpu
#   arm64-base  repro-test/debian:bookworm-arm64   the same base from Debian's arm64 packages (debootstrap
#                                                  --foreign, unpacked), repro's dependencies as aarch64 wheels;
#                                                  runs under qemu-user-static (binfmt_misc)
#   arm64       repro-test/gb10:arm64              Dockerfile.gb10 built --platform linux/arm64 on arm64-base
#
# Each image carries the label org.repro.test.hash, a hash of everything it is built from (this script, the
# Dockerfile, the package list, the virtualenv's package list, repro's sources). An image whose label matches is
# reused: a second run on one machine builds nothing. A rebuilt image's predecessor is removed.
# Prints one line per image: "<image> built in N s" or "<image> cached". Needs root (debootstrap, chroot,
# binfmt_misc) and a running Docker engine (scripts/docker_engine.sh start); the Debian mirror ($DEBIAN_MIRROR)
# and PyPI (for the packages Dockerfile.gb10 installs) must be reachable.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SCRIPT="$ROOT/scripts/docker_test_image.sh"
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
VENV=${REPRO_VENV:-$ROOT/.venv}
HOST_PYTHON=${PYTHON:-$( [ -x "$VENV/bin/python" ] && echo "$VENV/bin/python" || command -v python3 )}
LABEL=org.repro.test.hash
# What the images need from Debian: Python 3.11 with venv, CA certificates; for the CPU vLLM also ps (py-spy and
# watchdog.sh read the process table) and libnuma (vLLM's CPU kernels). The arm64 base runs repro only.
PACKAGES_AMD64=python3,python3-venv,ca-certificates,procps,libnuma1
PACKAGES_ARM64=python3,python3-venv,ca-certificates
WORK=${REPRO_DOCKER_WORK:-/var/tmp/repro-docker-build}

BASE_AMD64=repro-test/debian:$SUITE-amd64
BASE_ARM64=repro-test/debian:$SUITE-arm64
VLLM_IMAGE=repro-test/vllm-cpu:latest
GB10_CPU=repro-test/gb10:cpu
GB10_ARM64=repro-test/gb10:arm64

say() { printf '%s\n' "$*" >&2; }
die() { printf 'docker_test_image.sh: %s\n' "$*" >&2; exit 1; }

sha() { sha256sum | cut -c1-16; }
# The recipe of one image: the source of the functions that build it (`declare -f`), not the whole script,
# so that editing one recipe rebuilds only the images that depend on it.
recipe() { declare -f "$@"; }
# The hash of repro's sources as Dockerfile.gb10 copies them (the build context it uses).
sources_hash() {
    (cd "$ROOT" && { cat Dockerfile.gb10 pyproject.toml README.md ISSUE_TEMPLATE.md ISSUE_TEMPLATE_STORAGE.md \
                         scripts/watchdog.sh
                     find repro -name '*.py' -o -name '*.md' -o -name py.typed | LC_ALL=C sort | xargs cat; }) | sha
}
label_of() { docker image inspect --format "{{ index .Config.Labels \"$LABEL\" }}" "$1" 2>/dev/null || true; }
cached() { [ "$(label_of "$1")" = "$2" ]; }
# The image id a tag points at now (to remove it once a rebuilt image has taken the tag).
image_id() { docker image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }
drop_old() {
    local old=$1 new
    new=$(image_id "$2")
    if [ -n "$old" ] && [ "$old" != "$new" ]; then
        docker image rm "$old" >/dev/null 2>&1 || true
    fi
}

# One image build at a time on a machine: a second caller (the test fixtures while .ci/run builds in the
# background) waits for the image being built, then finds it by its label; the lock is taken per image, so the
# amd64 images are usable while the arm64 ones are still being built.
mkdir -p "$WORK"
exec 9>"$WORK/.build.lock"
locked() { flock 9; "$@"; local rc=$?; flock -u 9; return $rc; }

command -v docker >/dev/null || die "the docker command is missing (scripts/docker_engine.sh start installs it)"
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 || die "no Docker engine answers (scripts/docker_engine.sh start)"

# --- binfmt_misc + qemu-aarch64: arm64 programs run on this x86-64 machine (inside chroots and containers) ---
ensure_qemu() {
    if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null; then
        flock /tmp/apt.lock env DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user-static binfmt-support \
            debootstrap >/dev/null
    fi
    [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
        update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || update-binfmts --import qemu-aarch64
    fi
    # F (fix binary): the interpreter is opened at registration, so it works in chroots and containers.
    grep -q 'flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 || die "qemu-aarch64 is registered without the F flag"
}

# A root filesystem as a one-layer image of the given architecture. `docker import` would do, but before
# Docker 23 it stamps the engine's own architecture on the image; `docker load` of an image archive (a layer tar,
# a config naming the architecture, a manifest) says what the files are.
load_rootfs() {
    local rootfs=$1 arch=$2 image=$3 hash=$4 dir diff
    dir="$WORK/image-$arch"
    rm -rf "$dir"; mkdir -p "$dir"
    tar --numeric-owner -C "$rootfs" -cf "$dir/layer.tar" .
    diff=$(sha256sum < "$dir/layer.tar" | cut -d' ' -f1)
    cat > "$dir/config.json" <<JSON
{"architecture": "$arch", "os": "linux", "created": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
 "config": {"Env": ["PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"],
            "Cmd": ["/bin/bash"], "Labels": {"$LABEL": "$hash"}},
 "rootfs": {"type": "layers", "diff_ids": ["sha256:$diff"]},
 "history": [{"created_by": "scripts/docker_test_image.sh: Debian $SUITE minbase ($arch) + /opt/venv"}]}
JSON
    printf '[{"Config": "config.json", "RepoTags": ["%s"], "Layers": ["layer.tar"]}]\n' "$image" > "$dir/manifest.json"
    tar -C "$dir" -c manifest.json config.json layer.tar | docker load -q >/dev/null
    rm -rf "$dir"
}

# --- base: Debian minbase from Debian's packages, Python in /opt/venv, this host's CA bundle -------------------
native_rootfs() {  # rootfs arch packages
    debootstrap --variant=minbase --cache-dir="$WORK/debs-$2" --include="$3" "$SUITE" "$1" "$MIRROR" \
        >"$WORK/debootstrap-$2.log" 2>&1 || die "debootstrap $2 failed: see $WORK/debootstrap-$2.log"
    # The virtualenv every image uses (as vLLM's own images do); pip comes from Debian's ensurepip wheel.
    chroot "$1" /usr/bin/python3 -m venv /opt/venv
}

# Another architecture: debootstrap --foreign downloads the packages; they are unpacked here instead of
# configured one by one by the second stage under QEMU (8 CPU-minutes on a 2-core x86-64 VM, for maintainer
# scripts that a Python runtime does not need). The accounts base-passwd would create, the loader cache and the
# venv are made explicitly; pip and repro's dependencies (aarch64 wheels, as a vLLM image has them) are put
# into the venv by this host's pip, so that only Dockerfile.gb10's own install (repro, py-spy) runs emulated.
# apt is not usable in this image (no dpkg database): it is a runtime for repro, nothing more.
foreign_rootfs() {  # rootfs arch packages
    local rootfs=$1 arch=$2 deb sp deps
    ensure_qemu
    debootstrap --arch="$arch" --foreign --variant=minbase --cache-dir="$WORK/debs-$arch" --include="$3" "$SUITE" \
        "$rootfs" "$MIRROR" >"$WORK/debootstrap-$arch.log" 2>&1 \
        || die "debootstrap --foreign $arch failed: see $WORK/debootstrap-$arch.log"
    for deb in "$rootfs"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$rootfs"; done
    cp "$rootfs/usr/share/base-passwd/passwd.master" "$rootfs/etc/passwd"
    cp "$rootfs/usr/share/base-passwd/group.master" "$rootfs/etc/group"
    chroot "$rootfs" /sbin/ldconfig
    chroot "$rootfs" /usr/bin/python3 -m venv --without-pip /opt/venv
    sp="$rootfs/opt/venv/lib/python3.11/site-packages"
    deps=$("$HOST_PYTHON" - "$ROOT/pyproject.toml" <<'PY'
import sys, tomllib
from pip._vendor.packaging.requirements import Requirement
target = {"python_version": "3.11", "python_full_version": "3.11.2", "platform_machine": "aarch64"}
for d in tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]:
    r = Requirement(d)
    if r.name != "py-spy" and (r.marker is None or r.marker.evaluate(target)):
        print(f"{r.name}{r.specifier}")
PY
)
    # shellcheck disable=SC2086
    "$HOST_PYTHON" -m pip install -q --no-cache-dir --target "$sp" --python-version 3.11 --implementation cp \
        --abi cp311 --only-binary=:all: --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 \
        --platform manylinux2014_aarch64 --platform any pip $deps >"$WORK/pip-$arch.log" 2>&1 \
        || { tail -20 "$WORK/pip-$arch.log" >&2; die "pip could not fetch the $arch wheels of repro's dependencies"; }
    rm -rf "$sp/bin"
}

build_base() {
    local arch=$1 image=$2 packages=$3 hash t0 rootfs old how=native_rootfs
    [ "$arch" = "$(dpkg --print-architecture)" ] || how=foreign_rootfs
    hash=$( { recipe build_base "$how"; echo "$arch $SUITE $packages"; [ "$how" = native_rootfs ] \
              || sed -n '/^dependencies = \[/,/^]/p' "$ROOT/pyproject.toml"; } | sha)
    if cached "$image" "$hash"; then echo "$image cached"; return; fi
    command -v debootstrap >/dev/null || flock /tmp/apt.lock env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q debootstrap >/dev/null
    t0=$(date +%s)
    rootfs="$WORK/rootfs-$arch"
    rm -rf "$rootfs"
    mkdir -p "$WORK/debs-$arch"
    "$how" "$rootfs" "$arch" "$packages"
    # This host's CA bundle: pip inside a build must trust what the host trusts (an egress proxy's CA included).
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
        cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    fi
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs/debootstrap"
    old=$(image_id "$image")
    load_rootfs "$rootfs" "$arch" "$image" "$hash"
    drop_old "$old" "$image"
    rm -rf "$rootfs"
    echo "$image built in $(( $(date +%s) - t0 )) s"
}

# --- vllm: the CPU vLLM of $VENV in /opt/venv (no repro: it plays the part of vllm/vllm-openai) ----------------
# The virtualenv (about 2.5 GB) is copied in by a container that has it mounted, then committed: one copy, no
# build context to stream. Left out: repro's own editable install, Ray and pytest (vLLM needs none of them).
VLLM_INSTALL='set -e
rm -rf /opt/venv/lib/python3.11/site-packages
tar -C /src -c --exclude="__editable__*repro*" --exclude="repro-*.dist-info" --exclude="site-packages/ray" \
    --exclude="ray-*.dist-info" --exclude="_pytest" --exclude="site-packages/pytest" --exclude="pytest-*.dist-info" \
    site-packages | tar -C /opt/venv/lib/python3.11 -x
# Console scripts (vllm, py-spy, ...) with their #! line pointed at this venv; the python links stay the image own.
cd /src/bin
for f in *; do
    if [ -L "$f" ] || [ ! -f "$f" ] || [ -e "/opt/venv/bin/$f" ]; then continue; fi
    if head -c 2 "$f" | grep -q "#!"; then sed "1s|^#!.*python.*$|#!/opt/venv/bin/python3|" "$f" > "/opt/venv/bin/$f"
    else cp "$f" "/opt/venv/bin/$f"; fi
    chmod 755 "/opt/venv/bin/$f"
done
vllm --version'

build_vllm() {
    local hash t0 sp old cid
    [ -x "$VENV/bin/python" ] || die "no virtualenv at $VENV (scripts/install_vllm_cpu.sh $VENV, or set REPRO_VENV)"
    sp=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    case $sp in */python3.11/site-packages) ;; *) die "$VENV is not a Python 3.11 virtualenv (the image has 3.11)" ;; esac
    hash=$( { recipe build_vllm; echo "$VLLM_INSTALL"; label_of "$BASE_AMD64"; "$VENV/bin/python" -m pip freeze \
              --exclude-editable 2>/dev/null | grep -v -i -E '^(repro|ray|pytest)\b' | LC_ALL=C sort; } | sha)
    if cached "$VLLM_IMAGE" "$hash"; then echo "$VLLM_IMAGE cached"; return; fi
    t0=$(date +%s)
    old=$(image_id "$VLLM_IMAGE")
    cid=$(docker create --network none -v "$sp:/src/site-packages:ro" -v "$VENV/bin:/src/bin:ro" \
          --entrypoint sh "$BASE_AMD64" -c "$VLLM_INSTALL")
    if ! docker start -a "$cid" >"$WORK/vllm-build.log" 2>&1; then
        docker rm -f "$cid" >/dev/null; tail -20 "$WORK/vllm-build.log" >&2; die "installing vLLM into $VLLM_IMAGE failed"
    fi
    docker commit --change 'ENV VLLM_NO_USAGE_STATS=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1' \
        --change 'ENTRYPOINT ["vllm"]' --change 'CMD ["--help"]' --change "LABEL $LABEL=$hash" \
        --message "the CPU vLLM of $VENV, by scripts/docker_test_image.sh" "$cid" "$VLLM_IMAGE" >/dev/null
    docker rm "$cid" >/dev/null
    drop_old "$old" "$VLLM_IMAGE"
    echo "$VLLM_IMAGE built in $(( $(date +%s) - t0 )) s"
}

# --- gb10: Dockerfile.gb10 itself, on a local base image --------------------------------------------------------
build_gb10() {
    local image=$1 base=$2 platform=$3 hash t0 old
    hash=$( { recipe build_gb10 sources_hash; label_of "$base"; sources_hash; echo "$platform"; } | sha)
    if cached "$image" "$hash"; then echo "$image cached"; return; fi
    t0=$(date +%s)
    old=$(image_id "$image")
    docker build --network host --platform "$platform" -f Dockerfile.gb10 --build-arg "BASE_IMAGE=$base" \
        --label "$LABEL=$hash" -t "$image" . >"$WORK/gb10-${platform#linux/}-build.log" 2>&1 \
        || { tail -30 "$WORK/gb10-${platform#linux/}-build.log" >&2; die "docker build -f Dockerfile.gb10 ($platform) failed"; }
    drop_old "$old" "$image"
    echo "$image built in $(( $(date +%s) - t0 )) s"
}

amd64_base() { locked build_base amd64 "$BASE_AMD64" "$PACKAGES_AMD64"; }
arm64_base() { ensure_qemu; locked build_base arm64 "$BASE_ARM64" "$PACKAGES_ARM64"; }
amd64_images() { amd64_base; locked build_vllm; locked build_gb10 "$GB10_CPU" "$VLLM_IMAGE" linux/amd64; }
arm64_images() { arm64_base; locked build_gb10 "$GB10_ARM64" "$BASE_ARM64" linux/arm64; }

[ $# -gt 0 ] || set -- gb10
for what in "$@"; do
    case $what in
        base) amd64_base ;;
        vllm) amd64_base; locked build_vllm ;;
        gb10) amd64_images ;;
        arm64-base) arm64_base ;;
        arm64) arm64_images ;;
        all) amd64_images; arm64_images ;;
        *) die "unknown image '$what' (base, vllm, gb10, arm64-base, arm64, all)" ;;
    esac
done
