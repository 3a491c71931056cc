#!/usr/bin/env bash
# Installs the Debian packages the tests use beyond Go, when missing:
# iproute2 and iptables/nftables (simulated hosts in network namespaces,
# DNAT), Chromium (the dashboard's browser test). The engines' own needs
# (Redis, Java, Maven) are scripts/engines.sh's. Without root or apt-get it
# says what is missing and leaves the tests to skip with their reasons.
set -euo pipefail
need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[[ ${#need[@]} -eq 0 ]] && exit 0
if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
  echo "deps: missing ${need[*]} (install them as root with apt-get); the tests that need them skip" >&2
  exit 0
fi
echo "deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends "${need[@]}" >/tmp/deeptrace-deps.log 2>&1 ||
  { apt-get -o DPkg::Lock::Timeout=300 update >>/tmp/deeptrace-deps.log 2>&1 &&
    apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends "${need[@]}" >>/tmp/deeptrace-deps.log 2>&1; } ||
  { tail -20 /tmp/deeptrace-deps.log >&2; echo "deps: could not install ${need[*]}; the tests that need them skip" >&2; }
