"""What the boot test puts into the deployed copy (never into the image) and into the seed.

MAAS hands a deployed machine its metadata through cloud-init's MAAS datasource;
curtin pins it with ``datasource_list: [ MAAS ]`` in the target's cloud.cfg.d
(``curthooks``: ``95-cloudconfig-maas-*.cfg``). The boot test pins the NoCloud
seed it attaches the same way, so ds-identify probes nothing else: the seed
stands in for MAAS's metadata service. It proves cloud-init's first boot, not
MAAS's datasource.

The reporter is a systemd service of the deployed copy: at first boot it waits
for cloud-init to finish and for systemd to settle, then writes one JSON line
to the second serial port (``/dev/ttyS1``), so parsing never depends on console
noise, and powers the machine off. ``Type=simple`` keeps it out of the boot
transaction, so ``systemctl is-system-running --wait`` inside it cannot
deadlock. The seed's ``runcmd`` leaves a marker the reporter returns: proof
that the user-data ran.
"""

from __future__ import annotations

import json

REPORTER = "/usr/local/libexec/maas-chroot-boot-report"
UNIT = "/etc/systemd/system/maas-chroot-boot-report.service"
UNIT_LINK = "/etc/systemd/system/multi-user.target.wants/maas-chroot-boot-report.service"
DATASOURCE_CFG = "/etc/cloud/cloud.cfg.d/95-maas-chroot-boot-test.cfg"
RUNCMD_MARKER = "/var/lib/maas-chroot-boot-test/runcmd"
USER = "maas-test"
#: The first line of the report; anything before it on the port is ignored.
REPORT_TAG = "maas-chroot-boot-report "

DATASOURCE = "# The boot test's seed, pinned as MAAS pins its own datasource\n" \
             "datasource_list: [ NoCloud, None ]\n"

UNIT_TEXT = f"""[Unit]
Description=maas-chroot boot test: report first boot on ttyS1, then power off

[Service]
Type=simple
ExecStart={REPORTER}
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
"""

REPORTER_TEXT = r"""#!/bin/sh
# maas-chroot boot test reporter: one JSON line on /dev/ttyS1, then power off.
D=$(mktemp -d /run/maas-chroot-report.XXXXXX)
step() { echo "$1 $(cut -d' ' -f1 /proc/uptime)" >> "$D/steps"; }
step reporter
echo "maas-chroot-boot-report: waiting for cloud-init" > /dev/console
if command -v cloud-init >/dev/null; then
  timeout 1800 cloud-init status --wait --long > "$D/ci_long" 2>&1; echo $? > "$D/ci_long.rc"
  cloud-init status --format json > "$D/ci_json" 2>&1; echo $? > "$D/ci_json.rc"
fi
step cloud-init
timeout 300 systemctl is-system-running --wait > "$D/state" 2>&1
step settled
systemctl --failed --no-legend --plain > "$D/failed" 2>&1
for u in multi-user.target cloud-init-local.service cloud-init.service cloud-config.service \
         cloud-final.service; do
  printf '%s %s\n' "$u" "$(systemctl show -P ActiveEnterTimestampMonotonic "$u" 2>/dev/null)"
done > "$D/units"
ip -o -4 addr show scope global > "$D/ipv4" 2>&1
for k in /etc/ssh/ssh_host_*_key.pub; do [ -e "$k" ] && ssh-keygen -l -f "$k"; done \
  > "$D/hostkeys" 2>&1
hostname > "$D/hostname" 2>&1
cat /etc/machine-id > "$D/machine_id" 2>&1
journalctl -b -o cat _PID=1 2>/dev/null | grep -i 'machine id' | head -n 3 > "$D/machine_id_log"
getent passwd USER > "$D/user" 2>&1 && cat ~USER/.ssh/authorized_keys > "$D/user_keys" 2>&1
cat RUNCMD_MARKER > "$D/runcmd" 2>&1
cat /run/cloud-init/result.json > "$D/ci_result" 2>&1
uname -r > "$D/kernel"
step collected
if ! command -v python3 >/dev/null; then
  printf 'TAG{"no_python3": true, "state": "%s"}\n' "$(cat "$D/state")" > /dev/ttyS1
  systemctl --no-block poweroff; exit 0
fi
python3 -S - "$D" > "$D/json" <<'PY'
import json, os, sys
d = sys.argv[1]
def text(name):
    try:
        with open(os.path.join(d, name), errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None
def lines(name):
    return [line for line in (text(name) or "").splitlines() if line.strip()]
def code(name):
    value = text(name + ".rc")
    return int(value) if value and value.lstrip("-").isdigit() else None
def loaded(name):
    try:
        return json.loads(text(name) or "")
    except ValueError:
        return text(name)
units = {}
for line in lines("units"):
    unit, _, value = line.partition(" ")
    units[unit] = int(value) / 1e6 if value.strip().isdigit() and int(value) else None
with open("/proc/uptime") as f:
    uptime = float(f.read().split()[0])
print(json.dumps({
    "steps": {k: float(v) for k, v in (line.split() for line in lines("steps"))},
    "uptime": uptime, "units": units, "state": text("state"),
    "failed_units": [line.split()[0] for line in lines("failed")],
    "cloud_init_long": text("ci_long"), "cloud_init_rc": code("ci_long"),
    "cloud_init": loaded("ci_json"), "cloud_init_result": loaded("ci_result"),
    "ipv4": lines("ipv4"), "ssh_host_keys": lines("hostkeys"), "hostname": text("hostname"),
    "machine_id": text("machine_id"), "machine_id_log": lines("machine_id_log"),
    "user": text("user"), "user_keys": text("user_keys"), "runcmd": text("runcmd"),
    "kernel": text("kernel"),
}, sort_keys=True))
PY
printf 'TAG%s\n' "$(cat "$D/json")" > /dev/ttyS1
echo "maas-chroot-boot-report: reported, powering off" > /dev/console
systemctl --no-block poweroff
""".replace("RUNCMD_MARKER", RUNCMD_MARKER).replace("USER", USER).replace("TAG", REPORT_TAG)


def user_data(*, hostname: str, ssh_key: str) -> str:
    """The seed's ``#cloud-config``: what MAAS's user-data stands for (JSON is valid YAML)."""
    doc = {
        "hostname": hostname,
        "fqdn": f"{hostname}.maas-chroot.invalid",
        "users": [{"name": USER, "shell": "/bin/sh", "lock_passwd": True,
                   "ssh_authorized_keys": [ssh_key]}],
        "runcmd": [["sh", "-c", f"mkdir -p /var/lib/maas-chroot-boot-test && "
                                f"date -u +%FT%TZ > {RUNCMD_MARKER}"]],
    }
    return "#cloud-config\n" + json.dumps(doc, indent=1) + "\n"


def meta_data(*, instance_id: str, hostname: str) -> str:
    return json.dumps({"instance-id": instance_id, "local-hostname": hostname}) + "\n"


def network_config(mac: str) -> str:
    """Network config v2 for the virtio NIC (what MAAS renders for the machine's interface)."""
    return json.dumps({"version": 2, "ethernets": {"nic0": {
        "match": {"macaddress": mac}, "set-name": "eth0", "dhcp4": True}}}) + "\n"
