#!/usr/bin/env bash
# The test command of the README (and of CI): install everything, make sure Redis and RabbitMQ
# run, lint, type-check and run the whole suite. Service tests fail (not skip) under CI=true.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {  # port, seconds
    for _ in $(seq 1 "$2"); do port_open "$1" && return 0; sleep 1; done
    return 1
}
apt_install() {
    command -v apt-get >/dev/null || return 1
    [ -n "${APT_UPDATED:-}" ] || { apt-get update -qq && APT_UPDATED=1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

log "python environment"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -m pip install -q -e '.[dev]' 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c "import taskq, kombu, redis, amqp, celery" # fail now if the install did not work

log "services"
if ! port_open 6379; then
    command -v redis-server >/dev/null || apt_install redis-server || echo "cannot install redis-server"
    redis-server --daemonize yes --port 6379 --save "" --appendonly no >/dev/null || true
    wait_port 6379 15 || echo "WARNING: Redis is not running on 127.0.0.1:6379"
fi
if ! port_open 5672; then
    command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server || echo "cannot install rabbitmq-server"
    rabbitmq-server -detached >/dev/null 2>&1 || true
    wait_port 5672 90 || echo "WARNING: RabbitMQ is not running on 127.0.0.1:5672"
fi
if ! port_open 5432 && command -v pg_ctlcluster >/dev/null; then  # db+postgresql result tests
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | tail -1)" main start || true
    wait_port 5432 30 || echo "WARNING: PostgreSQL is not running on 127.0.0.1:5432"
fi
if ! port_open 3306 && [ -x /usr/sbin/mariadbd ]; then  # db+mysql result tests (MariaDB)
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
    wait_port 3306 30 || echo "WARNING: MariaDB is not running on 127.0.0.1:3306"
fi
# Started by the tests themselves (private, on free ports): memcached, redis-server as sentinel.
command -v memcached >/dev/null || apt_install memcached || echo "cannot install memcached"
port_open 6379 && echo "Redis: up" || true
port_open 5672 && echo "RabbitMQ: up" || true

log "lint and types"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy taskq

run_pytest() {  # pytest's exit 5 (nothing collected) is a failure here
    local code=0
    .venv/bin/python -m pytest "$@" || code=$?
    if [ "$code" -eq 5 ]; then
        echo "pytest collected no tests ($*): that is a failure here" >&2
        code=1
    fi
    return "$code"
}

log "tests"
set +e
if [ "$#" -gt 0 ]; then
    run_pytest "$@"
    rc=$?
else
    # The fault tests restart the shared RabbitMQ and Redis-like servers: they run alone, first.
    # The rest runs in two processes (a test module stays in one: module-scoped workers), each
    # with its own Redis DB and RabbitMQ vhost (tests/conftest.py), to keep CI under 20 minutes.
    run_pytest --durations=10 tests/faults
    rc=$?
    run_pytest -n 2 --dist loadfile --durations=25 --ignore=tests/faults
    rc2=$?
    [ "$rc" -ne 0 ] || rc=$rc2
fi
set -e
exit "$rc"
