#!/bin/sh
# Installs the Scission device image on a Raspberry Pi (run as root from the unpacked image).
# Afterwards: copy the cluster files (see enroll.txt), benchmark the model, start the service.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
install -d /opt/scission/bin /etc/scission/cluster /var/lib/scission
install -m 0755 "$here/bin/scission-device" /opt/scission/bin/scission-device
if [ ! -f /etc/scission/device.toml ]; then
    install -m 0644 "$here/device.toml" /etc/scission/device.toml
fi
install -m 0644 "$here/example.png" /var/lib/scission/example.png
install -m 0644 "$here/scission-device.service" /etc/systemd/system/scission-device.service
if ! id scission >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/scission --shell /usr/sbin/nologin scission
fi
chown -R scission: /var/lib/scission /etc/scission/cluster
chmod 0700 /etc/scission/cluster
systemctl daemon-reload
echo "installed."
# What the configuration still lacks (certificates, model, profile), in the service's own words.
if /opt/scission/bin/scission-device check-config --config /etc/scission/device.toml; then
    echo "Next: systemctl enable --now scission-device"
else
    echo "Next:"
    echo "  1. enrol this device (see $here/enroll.txt) and copy its files to /etc/scission/cluster/"
    echo "  2. edit /etc/scission/device.toml (edge and cloud addresses, node name, model)"
    echo "  3. benchmark once: sudo -u scission /opt/scission/bin/scission-device bench MODEL --out /etc/scission/device.json"
    echo "  4. check again: /opt/scission/bin/scission-device check-config -c /etc/scission/device.toml"
    echo "  5. systemctl enable --now scission-device"
fi
echo "Then: curl --data-binary @/var/lib/scission/example.png -H 'Content-Type: image/png' http://127.0.0.1:8080/v2/models/model/infer"
