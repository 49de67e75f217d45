#!/usr/bin/env bash
# Build Booklab's local test images, without any registry:
#
#   booklab-test/debian:bookworm     debootstrap (minbase + python3, python3-venv,
#                                    git, ca-certificates, tini) -> docker import
#   booklab-test/notebook:<hash>     FROM the debian image + a venv /opt/nb with
#   booklab-test/notebook:latest     jupyterhub 6.x and jupyterlab, from wheels
#                                    downloaded on the host; built --network none
#
# Idempotent and cached: the rootfs tarball and the wheels are kept under
# ${BOOKLAB_CACHE:-/var/cache/booklab-test}; <hash> is a content hash of
# notebook/Dockerfile, notebook/requirements.txt, this script and the debian
# image id, so a rerun with everything present does nothing.
#
# Logs go to stderr; the final image name (booklab-test/notebook:<hash>) is the
# only thing printed on stdout.
#
# Environment:
#   BOOKLAB_CACHE          cache directory        (/var/cache/booklab-test)
#   BOOKLAB_DEBIAN_MIRROR  Debian mirror URI      (from /etc/apt/sources.list.d/debian.sources,
#                                                  else http://deb.debian.org/debian)
#   DOCKER                 docker CLI to use      (docker)
#   PYTHON                 host python with pip   (python3)
#   BOOKLAB_REBUILD=1      ignore cached images (tarball and wheels are still reused)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${BOOKLAB_CACHE:-/var/cache/booklab-test}
DOCKER=${DOCKER:-docker}
PYTHON=${PYTHON:-python3}
SUITE=bookworm
DEBIAN_IMAGE=booklab-test/debian:$SUITE
NOTEBOOK_REPO=booklab-test/notebook
NB_DIR=$HERE/notebook
IMAGE_PYTHON_VERSION=3.11.2   # bookworm's python3
ROOTFS_TAR=$CACHE/debian-$SUITE-rootfs.tar
INCLUDE=python3,python3-venv,git,ca-certificates

log() { printf '[build.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- preflight
command -v "$DOCKER" >/dev/null 2>&1 || die "docker CLI '$DOCKER' not found"
if ! docker_err=$("$DOCKER" version --format '{{.Server.Version}}' 2>&1 >/dev/null); then
    die "docker daemon not reachable: $docker_err"
fi
[[ -f $NB_DIR/Dockerfile && -f $NB_DIR/requirements.txt ]] || die "missing $NB_DIR/{Dockerfile,requirements.txt}"

mkdir -p "$CACHE"
# One build at a time per cache (parallel test sessions share it).
exec 9>"$CACHE/.lock"
flock 9

image_id() { "$DOCKER" image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }
sha256() { sha256sum | cut -d' ' -f1; }

mirror() {
    if [[ -n ${BOOKLAB_DEBIAN_MIRROR:-} ]]; then echo "$BOOKLAB_DEBIAN_MIRROR"; return; fi
    local uri=""
    if [[ -r /etc/apt/sources.list.d/debian.sources ]]; then
        # the URIs of the first stanza that is not the security archive
        uri=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

# Unmount anything left mounted below $1 (debootstrap bind-mounts /dev nodes,
# proc and sys when it runs inside a container), deepest first.
umount_below() {
    local dir mnt
    dir=$(realpath "$1")
    awk -v d="$dir/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | while read -r mnt; do
        umount -l "$mnt" 2>/dev/null || true
    done
}
rm_tree() {
    [[ -e $1 ]] || return 0
    umount_below "$1"
    rm -rf --one-file-system "$1"
}

# ---------------------------------------------------------------- 1. rootfs tarball
build_rootfs_tar() {
    command -v debootstrap >/dev/null 2>&1 || die "debootstrap not installed (apt-get install debootstrap)"
    [[ $(id -u) == 0 ]] || die "debootstrap needs root"
    local uri rootfs include
    uri=$(mirror)
    rootfs=$CACHE/rootfs.tmp
    rm_tree "$rootfs"
    trap 'rm_tree "'"$rootfs"'"; rm -f "'"$ROOTFS_TAR"'.tmp"' EXIT
    include=$INCLUDE,tini
    log "debootstrap --variant=minbase --include=$include $SUITE $rootfs $uri"
    if ! debootstrap --variant=minbase --include="$include" "$SUITE" "$rootfs" "$uri" >&2; then
        log "debootstrap with tini failed; retrying without tini"
        rm_tree "$rootfs"
        include=$INCLUDE
        debootstrap --variant=minbase --include="$include" "$SUITE" "$rootfs" "$uri" >&2 \
            || die "debootstrap failed (mirror $uri)"
    fi
    umount_below "$rootfs"
    log "cleaning apt lists/caches, docs and man pages in the rootfs"
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/cache/debconf/*-old \
        "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* "$rootfs"/usr/share/doc/* \
        "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* \
        "$rootfs"/debootstrap
    mkdir -p "$rootfs"/var/lib/apt/lists/partial
    # docker provides these at run time
    rm -rf "${rootfs:?}"/dev/* "$rootfs"/proc/* "$rootfs"/sys/* "$rootfs"/run/* "$rootfs"/tmp/*
    : > "$rootfs"/etc/hostname
    : > "$rootfs"/etc/resolv.conf
    log "packing $ROOTFS_TAR"
    tar --numeric-owner --one-file-system -C "$rootfs" -cf "$ROOTFS_TAR.tmp" .
    mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
    rm_tree "$rootfs"
    trap - EXIT
    log "rootfs tarball: $(du -h "$ROOTFS_TAR" | cut -f1)"
}

# ---------------------------------------------------------------- 2. debian image
debian_id=$(image_id "$DEBIAN_IMAGE")
if [[ -n $debian_id && -z ${BOOKLAB_REBUILD:-} ]]; then
    log "$DEBIAN_IMAGE present ($debian_id)"
else
    if [[ -f $ROOTFS_TAR ]]; then
        log "reusing cached $ROOTFS_TAR"
    else
        build_rootfs_tar
    fi
    log "docker import $ROOTFS_TAR -> $DEBIAN_IMAGE"
    "$DOCKER" import \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' \
        --message "booklab-test: debootstrap --variant=minbase $SUITE" \
        "$ROOTFS_TAR" "$DEBIAN_IMAGE" >/dev/null
    debian_id=$(image_id "$DEBIAN_IMAGE")
    [[ -n $debian_id ]] || die "docker import did not produce $DEBIAN_IMAGE"
    log "$DEBIAN_IMAGE imported ($debian_id)"
fi

# ---------------------------------------------------------------- 3. notebook image
hash=$( {
    sha256sum "$NB_DIR/Dockerfile" "$NB_DIR/requirements.txt" "$HERE/build.sh" | cut -d' ' -f1
    echo "$debian_id"
} | sha256 | cut -c1-16)
NOTEBOOK_IMAGE=$NOTEBOOK_REPO:$hash

nb_id=$(image_id "$NOTEBOOK_IMAGE")
if [[ -n $nb_id && -z ${BOOKLAB_REBUILD:-} ]]; then
    log "$NOTEBOOK_IMAGE present ($nb_id)"
else
    # wheels, keyed by the requirements file
    req_hash=$(sha256 < "$NB_DIR/requirements.txt" | cut -c1-16)
    WHEELS=$CACHE/wheels-py$IMAGE_PYTHON_VERSION-$req_hash
    if [[ -f $WHEELS/.complete ]]; then
        log "reusing cached wheels $WHEELS"
    else
        log "downloading wheels for python $IMAGE_PYTHON_VERSION into $WHEELS"
        rm -rf "$WHEELS" "$WHEELS.tmp"
        # PIP_CONSTRAINT= : ignore a machine-wide constraints file from pip.conf
        PIP_CONSTRAINT= PIP_DISABLE_PIP_VERSION_CHECK=1 "$PYTHON" -m pip download \
            --quiet --dest "$WHEELS.tmp" \
            --python-version "$IMAGE_PYTHON_VERSION" --only-binary=:all: \
            -r "$NB_DIR/requirements.txt" >&2 || die "pip download failed"
        touch "$WHEELS.tmp/.complete"
        mv "$WHEELS.tmp" "$WHEELS"
        log "$(ls "$WHEELS" | wc -l) wheels, $(du -sh "$WHEELS" | cut -f1)"
    fi

    ctx=$(mktemp -d "$CACHE/context.XXXXXX")
    trap 'rm -rf "'"$ctx"'"' EXIT
    cp "$NB_DIR/Dockerfile" "$NB_DIR/requirements.txt" "$ctx/"
    mkdir "$ctx/wheels"
    cp -l "$WHEELS"/*.whl "$ctx/wheels/" 2>/dev/null || cp "$WHEELS"/*.whl "$ctx/wheels/"

    log "docker build --network none -t $NOTEBOOK_IMAGE (FROM $DEBIAN_IMAGE)"
    t0=$SECONDS
    "$DOCKER" build --network none \
        --build-arg BASE_IMAGE="$DEBIAN_IMAGE" \
        --label "org.booklab.test-image.hash=$hash" \
        --label "org.booklab.test-image.base=$debian_id" \
        -t "$NOTEBOOK_IMAGE" "$ctx" >&2 || die "docker build failed"
    rm -rf "$ctx"
    trap - EXIT
    nb_id=$(image_id "$NOTEBOOK_IMAGE")
    [[ -n $nb_id ]] || die "docker build did not produce $NOTEBOOK_IMAGE"
    log "built $NOTEBOOK_IMAGE ($nb_id) in $((SECONDS - t0))s"
fi

if [[ $(image_id "$NOTEBOOK_REPO:latest") != "$nb_id" ]]; then
    log "tagging $NOTEBOOK_REPO:latest"
    "$DOCKER" tag "$NOTEBOOK_IMAGE" "$NOTEBOOK_REPO:latest"
    # drop the tags of older notebook builds (an image still used by a
    # container or by another tag is left alone by docker)
    for old in $("$DOCKER" image ls --format '{{.Repository}}:{{.Tag}}' "$NOTEBOOK_REPO"); do
        [[ $old == "$NOTEBOOK_IMAGE" || $old == "$NOTEBOOK_REPO:latest" ]] && continue
        log "removing stale tag $old"
        "$DOCKER" rmi "$old" >/dev/null 2>&1 || log "could not remove $old (in use?)"
    done
fi
log "done: $NOTEBOOK_IMAGE = $NOTEBOOK_REPO:latest ($("$DOCKER" image inspect --format '{{.Size}}' "$nb_id" | awk '{printf "%.0f MB", $1/1e6}'))"
echo "$NOTEBOOK_IMAGE"
