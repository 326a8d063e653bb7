#!/usr/bin/env bash
# One-shot set-up on a fresh Debian machine: system packages, a virtualenv with storaged installed.
#   ./setup.sh           what the daemon needs
#   ./setup.sh --test    also the peers the tests and benchmarks use (libiscsi, qemu-img, tgt, strace)
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")"

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

pkgs=(python3 python3-venv python3-dev gcc)
if [ "$want_test" = 1 ]; then
  pkgs+=(libiscsi-bin qemu-utils qemu-block-extra qemu-system-common tgt strace iproute2 e2fsprogs fuse3 util-linux
         prometheus libfuse2)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -q
  # Keep the tgt package's own tgtd from starting on 127.0.0.1:3260, storaged's default portal.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    echo 'exit 101' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  # Where systemd runs, Debian's tgt unit would hold port 3260: keep it off.
  $SUDO systemctl disable --now tgt.service >/dev/null 2>&1 || true
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
extras="fast"
[ "$want_test" = 1 ] && extras="fast,test"
.venv/bin/pip install -q --disable-pip-version-check -e ".[${extras}]"
echo "setup: done (.venv/bin/storaged)"
