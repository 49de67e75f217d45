#!/usr/bin/env bash
# Set up and run Booklab on this machine: Redis, dockerd, the hub (behind Traefik,
# which the hub starts and which reads its routes from Redis, as deployed) and one
# runner. Idempotent; Ctrl-C stops everything.
#
# Without $BOOKLAB_CONFIG it runs a demo against a stand-in GitLab (the test
# double) on 127.0.0.1:8929: log in as demo / demo and launch demo/hello.
# With BOOKLAB_CONFIG=/path/to/config.yml it uses your GitLab; export the
# secrets it does not hold (JUPYTERHUB_CRYPT_KEY, BOOKLAB_RUNNER_TOKEN, ...).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$ROOT/.booklab/local"
HUB_PORT="${BOOKLAB_HUB_PORT:-8000}"
REDIS_PORT="${BOOKLAB_REDIS_PORT:-6379}"
TRAEFIK_API_PORT="${BOOKLAB_TRAEFIK_API_PORT:-8099}"
GITLAB_PORT="${BOOKLAB_DEMO_GITLAB_PORT:-8929}"
PY="$ROOT/.venv/bin"
log() { printf '[booklab] %s\n' "$*" >&2; }

cd "$ROOT"
bash scripts/setup-system.sh
mkdir -p "$STATE"/{redis,hub,runner,gitlab}
chmod 700 "$STATE"

# secrets, generated once and kept private
if [ ! -f "$STATE/secrets.env" ]; then
  umask 077
  {
    echo "JUPYTERHUB_CRYPT_KEY=$(openssl rand -hex 32)"
    echo "BOOKLAB_RUNNER_TOKEN=$(openssl rand -hex 32)"
    echo "DEMO_CLIENT_SECRET=$(openssl rand -hex 16)"
  } >"$STATE/secrets.env"
fi
# Redis is behind a password (hex: safe in a URL); added to secrets made before it was
if ! grep -q '^REDIS_PASSWORD=' "$STATE/secrets.env"; then
  (umask 077; echo "REDIS_PASSWORD=$(openssl rand -hex 32)" >>"$STATE/secrets.env")
fi
# the runner logs in as its own Redis user, which cannot touch Traefik's routes
if ! grep -q '^REDIS_RUNNER_PASSWORD=' "$STATE/secrets.env"; then
  (umask 077; echo "REDIS_RUNNER_PASSWORD=$(openssl rand -hex 32)" >>"$STATE/secrets.env")
fi
set -a; . "$STATE/secrets.env"; set +a
if [ -z "${BOOKLAB_REDIS_URL:-}" ]; then   # our own Redis (below), with the runners' user
  BOOKLAB_REDIS_URL="redis://:$REDIS_PASSWORD@127.0.0.1:$REDIS_PORT/0"
  RUNNER_REDIS_URL="redis://booklab-runner:$REDIS_RUNNER_PASSWORD@127.0.0.1:$REDIS_PORT/0"
  export BOOKLAB_REDIS_RUNNER_USER=booklab-runner   # the hub checks it at start
fi
: "${RUNNER_REDIS_URL:=$BOOKLAB_REDIS_URL}"
export BOOKLAB_REDIS_URL

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$HUB_PORT" "$REDIS_PORT" "$TRAEFIK_API_PORT"; do
  if port_busy "$p"; then log "port $p is in use: is Booklab already running? (stop it first)"; exit 1; fi
done

pids=()        # started in order; stopped in reverse, so the runner and hub go before Redis
cleanup() {
  trap - EXIT INT TERM
  log "stopping"
  local i
  for ((i=${#pids[@]}-1; i>=0; i--)); do
    kill "${pids[$i]}" 2>/dev/null || true
    timeout 30 tail --pid="${pids[$i]}" -f /dev/null 2>/dev/null || kill -9 "${pids[$i]}" 2>/dev/null || true
  done
}
trap cleanup EXIT INT TERM

# the password goes in a private config file, not on the command line (ps shows that)
(umask 077; cat >"$STATE/redis.conf" <<CONF
port $REDIS_PORT
bind 127.0.0.1
dir $STATE/redis
appendonly yes
notify-keyspace-events KEA
requirepass $REDIS_PASSWORD
$(BOOKLAB_REDIS_RUNNER_PASSWORD="$REDIS_RUNNER_PASSWORD" "$PY/booklab-redis-acl")
CONF
)
redis-server "$STATE/redis.conf" >"$STATE/redis.log" 2>&1 &
pids+=($!)

if [ -z "${BOOKLAB_CONFIG:-}" ]; then
  log "demo mode: building the demo base image (cached after the first run)"
  bash tests/images/build.sh >/dev/null
  if port_busy "$GITLAB_PORT"; then log "port $GITLAB_PORT is in use"; exit 1; fi
  cat >"$STATE/seed.json" <<JSON
{"users": [{"username": "demo", "password": "demo", "name": "Demo Scientist"}],
 "projects": [{"path": "demo/hello", "files_dir": "$ROOT/examples/hello", "default_branch": "main"}],
 "members": [{"path": "demo/hello", "user": "demo", "access_level": 40}],
 "oauth_apps": [{"client_id": "booklab-demo", "client_secret": "$DEMO_CLIENT_SECRET",
   "redirect_uri": "http://127.0.0.1:$HUB_PORT/hub/oauth_callback",
   "scopes": ["api", "read_api", "read_user", "read_repository"]}]}
JSON
  rm -rf "$STATE/gitlab"; mkdir -p "$STATE/gitlab"
  "$PY/python" -m tests.gitlab_double --port "$GITLAB_PORT" --data-dir "$STATE/gitlab" \
    --seed "$STATE/seed.json" >"$STATE/gitlab.log" 2>&1 &
  pids+=($!)
  cat >"$STATE/config.yml" <<YAML
hub: {ip: 127.0.0.1, port: $HUB_PORT, hub_ip: 127.0.0.1, admin_users: [demo], data_dir: $STATE/hub,
      db_url: "sqlite:///$STATE/hub/jupyterhub.sqlite"}
gitlab: {url: "http://127.0.0.1:$GITLAB_PORT", client_id: booklab-demo, allow_all: true}
runners: {network: host}
proxy: {kind: traefik, api_url: "http://127.0.0.1:$TRAEFIK_API_PORT"}
YAML
  export BOOKLAB_CONFIG="$STATE/config.yml" GITLAB_CLIENT_SECRET="$DEMO_CLIENT_SECRET"
fi

(cd "$STATE/hub" && exec "$PY/jupyterhub" -f "$ROOT/jupyterhub_config.py") >"$STATE/hub.log" 2>&1 &
pids+=($!)
BOOKLAB_REDIS_URL="$RUNNER_REDIS_URL" "$PY/booklab-runner" --runner-id local-1 --advertise-host 127.0.0.1 \
  --work-dir "$STATE/runner" >"$STATE/runner.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 120); do
  if curl -fs -o /dev/null "http://127.0.0.1:$HUB_PORT/hub/login"; then break; fi
  for pid in "${pids[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then log "a service exited; logs in $STATE/*.log"; tail -20 "$STATE"/hub.log >&2; exit 1; fi
  done
  sleep 0.5
done
log "Booklab is up: http://127.0.0.1:$HUB_PORT/ (logs: $STATE/*.log)"
[ -n "${DEMO_CLIENT_SECRET:-}" ] && [ "$BOOKLAB_CONFIG" = "$STATE/config.yml" ] && \
  log "demo GitLab: http://127.0.0.1:$GITLAB_PORT — log in as demo / demo"
log "press Ctrl-C to stop"
wait -n "${pids[@]}"
log "a service exited; see $STATE/*.log"
