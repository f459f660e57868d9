#!/usr/bin/env bash
# Installs what the demo and the tests need on a fresh Debian 12 machine, then the venv (.venv).
# Idempotent: installs only what is missing. The apt part needs root; as a normal user the
# packages must already be there (the script says which are missing).
#
# Servers: the tests start their own PostgreSQL and MariaDB in temporary directories, so the
# packaged services must not start. An existing /usr/sbin/policy-rc.d is left alone; if there
# is none, a temporary "deny everything" one is in place during the install only.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  python3 python3-venv            # the venv (Debian's python3, not whatever is first on PATH)
  postgresql-15 postgresql-client-15
  mariadb-server mariadb-client
  make ca-certificates
)

installed() {
  [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

deny_service_starts() {
  # Until this script exits, invoke-rc.d refuses to start services (exit 101).
  [ "$(id -u)" = 0 ] && [ ! -e /usr/sbin/policy-rc.d ] || return 0
  printf '#!/bin/sh\n# cdc-agent bootstrap: keep packaged servers down\nexit 101\n' \
    > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
}

install_packages() {
  local missing=()
  for pkg in "${PACKAGES[@]}"; do
    installed "$pkg" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "bootstrap: missing packages: ${missing[*]}; run as root or install them" >&2
    exit 1
  fi
  echo "bootstrap: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  local log=/tmp/cdc-agent-bootstrap-apt.log
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
      > "$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "bootstrap: apt-get failed; full log in $log" >&2
    exit 1
  fi
}

install_ops_tools() {
  # systemd-analyze and promtool for the operations tests (their own script; root only).
  [ -f scripts/install-ops-tools.sh ] || return 0
  if [ "$(id -u)" = 0 ]; then
    bash scripts/install-ops-tools.sh
  else
    bash scripts/install-ops-tools.sh || echo "bootstrap: ops tools missing" >&2
  fi
}

install_venv() {
  if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv .venv
    rm -f .venv/.installed
  fi
  if [ ! -e .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
    echo "bootstrap: installing Python dependencies into .venv"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[dev]'
    touch .venv/.installed
  fi
}

deny_service_starts
install_packages
install_ops_tools
install_venv
