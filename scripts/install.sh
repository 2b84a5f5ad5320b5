#!/usr/bin/env bash
# Install keyop as a service (docs/operations.md, "Installing"): the service user, the folders
# with their modes, a virtualenv under /opt/keyop with keyop in it, and the systemd units.
#
#   sudo scripts/install.sh [--wheel FILE | --source DIR] [--root DIR] [--no-venv]
#                           [--no-systemctl]
#
# --wheel/--source  what to pip-install into the venv (default: this checkout); its
#                   dependencies come from the package index pip is configured with
# --root DIR        install under DIR instead of / (packaging, tests): no user is created,
#                   nothing is chowned, systemctl is not called
# --no-venv         folders and units only (the venv is built another way)
# --no-systemctl    do not run `systemctl daemon-reload`
# Run again to upgrade: folders and user are kept, the venv gets the new version.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
root=""
package="$here"
venv=1
systemctl=1
user=keyop
python=${PYTHON:-python3}

while [ $# -gt 0 ]; do
  case "$1" in
    --wheel|--source) package="$2"; shift 2 ;;
    --root) root="${2%/}"; shift 2 ;;
    --no-venv) venv=0; shift ;;
    --no-systemctl) systemctl=0; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

etc="$root/etc/keyop"
secrets="$etc/secrets"
state="$root/var/lib/keyop"
opt="$root/opt/keyop"
units="$root/etc/systemd/system"

if [ -z "$root" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (or give --root DIR)" >&2
    exit 1
  fi
  if ! id "$user" >/dev/null 2>&1; then
    # A system account without a login shell or home of its own; dialout reaches serial lines.
    useradd --system --user-group --home-dir /var/lib/keyop --no-create-home \
      --shell /usr/sbin/nologin --comment "keyop gateway and hub" "$user"
    echo "created system user $user"
  fi
  getent group dialout >/dev/null && usermod -a -G dialout "$user"
  owner=(-o root -g "$user")
  mine=(-o "$user" -g "$user")
else
  owner=()
  mine=()
  systemctl=0
fi

# Configuration: readable by the service, writable by root only.
install -d -m 0750 "${owner[@]}" "$etc"
# Secrets: the service user's alone (each file 0600, owned by it).
install -d -m 0700 "${mine[@]}" "$secrets"
# State: the outbox and the hub's SQLite database, the only place the units may write.
install -d -m 0750 "${mine[@]}" "$state"

if [ "$venv" -eq 1 ]; then
  [ -x "$opt/bin/python" ] || "$python" -m venv "$opt"
  "$opt/bin/python" -m pip install -q --upgrade pip
  "$opt/bin/python" -m pip install -q --upgrade "$package"
  echo "installed $("$opt/bin/keyop" --help >/dev/null && "$opt/bin/python" -m pip show keyop \
    | sed -n 's/^Version: /keyop /p') in $opt"
fi

install -d -m 0755 "$units"
install -m 0644 "$here/packaging/systemd/keyop-gateway@.service" \
  "$here/packaging/systemd/keyop-hub.service" "$units/"
echo "units in $units: keyop-gateway@.service, keyop-hub.service"

if [ "$systemctl" -eq 1 ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi
cat <<NEXT
next:
  keyop init gateway --id GATEWAY_ID   (writes $etc/GATEWAY_ID/), edit, keyop check
  systemctl enable --now keyop-gateway@GATEWAY_ID
  keyop init hub                       (writes $etc/hub.yaml), edit, keyop check
  systemctl enable --now keyop-hub
NEXT
