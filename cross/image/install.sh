#!/bin/sh
# Installs the Scission device image on a Raspberry Pi (run as root from the unpacked image).
# Afterwards: copy the cluster files (see enroll.txt), benchmark the model, start the service.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
install -d /opt/scission/bin /etc/scission/cluster /var/lib/scission
install -m 0755 "$here/bin/scission-device" /opt/scission/bin/scission-device
if [ ! -f /etc/scission/device.env ]; then
    install -m 0644 "$here/device.env" /etc/scission/device.env
fi
install -m 0644 "$here/scission-device.service" /etc/systemd/system/scission-device.service
if ! id scission >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/scission --shell /usr/sbin/nologin scission
fi
chown -R scission: /var/lib/scission /etc/scission/cluster
chmod 0700 /etc/scission/cluster
systemctl daemon-reload
echo "installed. Next:"
echo "  1. enrol this device (see $here/enroll.txt) and copy its files to /etc/scission/cluster/"
echo "  2. edit /etc/scission/device.env (edge and cloud addresses, node name)"
echo "  3. benchmark once: sudo -u scission /opt/scission/bin/scission-device bench MODEL --out /etc/scission/device.json"
echo "  4. systemctl enable --now scission-device"
