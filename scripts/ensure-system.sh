#!/usr/bin/env bash
# Make sure the system packages keyop needs are present: Python's venv module, Mosquitto, and
# systemd-analyze (Debian's `systemd`; the tests verify the units with it) and, for the board's
# browser tests, headless Chromium with its driver and a CJK font.
# Installs Debian packages directly as root, through sudo otherwise; says what to install if
# neither works. Quick when everything is already there.
set -euo pipefail

python=${PYTHON:-python3}
need=()

if ! "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
  echo "keyop needs Python 3.11 or newer as '$python' (set PYTHON=... to choose another)." >&2
  exit 1
fi
"$python" -c 'import venv, ensurepip' 2>/dev/null || need+=("python3-venv")
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=("mosquitto")
command -v systemd-analyze >/dev/null 2>&1 || [ -x /usr/bin/systemd-analyze ] || need+=("systemd")
[ -x /usr/bin/chromium ] || need+=("chromium")
[ -x /usr/bin/chromedriver ] || need+=("chromium-driver")
[ -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || need+=("fonts-wqy-microhei")

[ ${#need[@]} -eq 0 ] && exit 0

echo "Installing Debian packages: ${need[*]}"
if [ "$(id -u)" -eq 0 ]; then
  apt_get=(apt-get)
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  apt_get=(sudo apt-get)
else
  echo "Cannot install ${need[*]}: not root and no password-less sudo." >&2
  echo "Install them yourself: sudo apt-get install ${need[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${apt_get[@]}" update -qq
"${apt_get[@]}" install -y -qq --no-install-recommends "${need[@]}"
# The Debian package starts a system broker on :1883; keyop never uses it (tests and the demo
# start their own), so it is left as the system administrator configured it.
