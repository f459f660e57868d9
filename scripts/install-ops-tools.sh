#!/usr/bin/env bash
# Installs the tools the operations tests need on Debian 12:
#   systemd     -> systemd-analyze (verify + offline security score of systemd/cdc-agent.service)
#   prometheus  -> promtool (check rules config/alerts.yml, check metrics on our exposition)
# Idempotent: installs only what is missing. Called by scripts/bootstrap.sh; run as root.
set -euo pipefail

need_apt=()
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
[ ${#need_apt[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ]; then
  echo "install-ops-tools: missing packages ${need_apt[*]}; run as root or install them" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# The prometheus package would start a Prometheus server after install; policy-rc.d keeps it down
# (we only want promtool). Keep an existing policy-rc.d as it is.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
