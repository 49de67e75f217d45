#!/usr/bin/env bash
# Install and start everything Booklab needs on a Debian bookworm machine:
# Debian packages, docker-buildx and docker-compose (from trixie), dockerd, configurable-http-proxy,
# and a Python venv with Booklab installed. Idempotent: rerun at will.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BOOKLAB_VENV:-$ROOT/.venv}"
STATE="${BOOKLAB_STATE:-/var/lib/booklab-dev}"
mkdir -p "$STATE"
log() { printf '[setup] %s\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" != 0 ]; then log "must run as root (apt-get, dockerd)"; exit 1; fi
}

install_debian_packages() {
  local pkgs=(docker.io redis-server openssh-server debootstrap git chromium curl ca-certificates iproute2 openssl)
  local missing=()
  for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # the distribution's services are started by our scripts, not by init
  systemctl disable --now redis-server ssh >/dev/null 2>&1 || true
}

create_git_user() {
  # the GitLab double's sshd (tests/gitlab_double/ssh_server.py) logs in as `git`, as GitLab does
  if ! id git >/dev/null 2>&1; then
    log "creating the system user git (for the GitLab double's sshd)"
    useradd --system --create-home --home-dir /home/git --shell /bin/sh git
  fi
  # password '*': no password login, yet not a locked account (sshd refuses locked ones)
  case "$(getent shadow git | cut -d: -f2)" in '!'*) usermod -p '*' git ;; esac
}

install_from_trixie() {
  # Install Debian trixie's package $1 on bookworm (idempotent). Used for what bookworm
  # lacks and whose trixie .deb depends only on libc6 >= 2.34: docker-buildx (repo2docker
  # builds with `docker buildx`) and docker-compose (Compose v2, the `docker compose`
  # plugin); both work with docker.io 20.10.
  local pkg=$1 uri d o
  if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed"; then return; fi
  log "installing $pkg from Debian trixie"
  uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  uri=${uri:-http://deb.debian.org/debian}
  d="$STATE/trixie"; mkdir -p "$d/lists/partial"
  printf 'Types: deb\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" >"$d/trixie.sources"
  o=(-oDir::Etc::SourceList=/dev/null "-oDir::Etc::SourceParts=$d" "-oDir::State::Lists=$d/lists")
  apt-get "${o[@]}" update -qq
  (cd "$d" && rm -f "${pkg}"_*.deb && apt-get "${o[@]}" download "$pkg" >/dev/null)
  dpkg -i "$d/${pkg}"_*.deb >/dev/null
}

check_compose() {
  # the compose test (tests/test_compose.py) and the deployment guide use `docker compose`
  local v
  v=$(/usr/bin/docker compose version --short 2>/dev/null) \
    || { log "docker compose does not answer after installing docker-compose"; exit 1; }
  log "docker compose $v"
}

start_dockerd() {
  if /usr/bin/docker info >/dev/null 2>&1; then return; fi
  log "starting dockerd (log: $STATE/dockerd.log)"
  nohup /usr/sbin/dockerd >"$STATE/dockerd.log" 2>&1 &
  for _ in $(seq 1 60); do
    /usr/bin/docker info >/dev/null 2>&1 && return
    sleep 0.5
  done
  log "dockerd did not come up; see $STATE/dockerd.log"; tail -20 "$STATE/dockerd.log" >&2; exit 1
}

install_chp() {
  if command -v configurable-http-proxy >/dev/null 2>&1; then return; fi
  log "installing configurable-http-proxy (npm)"
  npm install -g --silent configurable-http-proxy >/dev/null
}

install_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating venv $VENV"
    python3 -m venv "$VENV"
  fi
  local stamp="$VENV/.booklab-installed" want
  want=$(cat "$ROOT/setup.cfg" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "installing Booklab into the venv"
    "$VENV/bin/pip" install -q --upgrade pip >/dev/null
    "$VENV/bin/pip" install -q -e "$ROOT[test]"
    echo "$want" >"$stamp"
  fi
}

need_root
install_debian_packages
create_git_user
install_from_trixie docker-buildx
install_from_trixie docker-compose
start_dockerd
check_compose
install_chp
install_venv
log "system ready"
