#!/bin/bash
# Runs inside the booted Debian guest (see boot-test.sh), as the oneshot unit
# weir-boot-test.service; every line goes to the serial console and /root/boot-test.log.
# Ends with "BOOT-TEST: PASS" or "BOOT-TEST: FAIL (<n> checks)", then powers off.
exec > >(tee /root/boot-test.log >/dev/ttyS0) 2>&1
set -u
export SYSTEMD_PAGER= SYSTEMD_COLORS=0 DEBIAN_FRONTEND=noninteractive
cd /root
failures=0
say() { printf '\n### %s\n' "$*"; }
ok() { echo "ok: $*"; }
bad() { echo "NOT OK: $*"; failures=$((failures + 1)); }
check() { # <what> <command...>
	local what=$1
	shift
	if "$@"; then ok "$what"; else bad "$what"; fi
}
wait_for() { # <seconds> <command...>: true once the command succeeds
	local until=$((SECONDS + $1))
	shift
	while [ $SECONDS -lt $until ]; do
		"$@" >/dev/null 2>&1 && return 0
		sleep 1
	done
	return 1
}
ready() { curl -sf http://127.0.0.1:8686/ready; }
post() { # <device> <json>: prints the HTTP status
	curl -s -o /dev/null -w '%{http_code}' -H "Authorization: $TOKEN" \
		-H 'content-type: application/json' -d "$2" "http://127.0.0.1:8080/v1/devices/$1/messages"
}
main_pid() { systemctl show -p MainPID --value weir.service; }

say "systemd $(systemctl --version | head -1), kernel $(uname -r)"
say "apt install ./weir_0.1.0-1_amd64.deb"
check "apt install" apt-get install -y ./weir_0.1.0-1_amd64.deb
check "weir user exists" getent passwd weir
check "weir.service enabled on install" systemctl is-enabled --quiet weir.service
check "weir.service started on install" wait_for 120 systemctl is-active --quiet weir.service
check "/ready answers" wait_for 120 ready
systemctl status --no-pager weir.service | head -12

say "readings land in the file"
check "the first admin token is the weir user's alone" [ "$(stat -c '%a %U' /var/lib/weir/initial-admin-token)" = "600 weir" ]
export WEIR_TOKEN="$(cat /var/lib/weir/initial-admin-token)"
check "/v1 needs a token (401)" [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8686/v1/devices)" = 401 ]
weir devices add engine-1 --tag site=plant-1 >/dev/null
TOKEN=$(weir devices token engine-1 --ttl 1h)
check "reading accepted (200)" [ "$(post engine-1 '{"temperature": 71.5, "seq": 1001}')" = 200 ]
check "reading in readings.ndjson" wait_for 30 grep -q '1001' /var/lib/weir/readings.ndjson
check "a token-less reading is refused (401)" [ "$(TOKEN=x post engine-1 '{"seq": 0}')" = 401 ]

say "edit /etc/weir/weir.yaml, systemctl reload"
cp /etc/weir/weir.yaml /root/weir.yaml.orig
cat >>/etc/weir/weir.yaml <<'YAML'
  hot:
    type: file
    inputs: [hot_readings]
    path: /var/lib/weir/hot.ndjson
YAML
sed -i 's/^transforms:$/transforms:\n  hot_readings: { type: filter, inputs: [devices], condition: "temperature > 100" }/' /etc/weir/weir.yaml
pid=$(main_pid)
check "systemctl reload (good edit) succeeds" systemctl reload weir.service
check "same process after reload" [ "$(main_pid)" = "$pid" ]
check "hot reading accepted" [ "$(post engine-1 '{"temperature": 120, "seq": 1002}')" = 200 ]
check "the new sink is live" wait_for 30 grep -q '1002' /var/lib/weir/hot.ndjson
cp /etc/weir/weir.yaml /root/weir.yaml.good

say "a broken edit: reload fails, the old topology keeps running"
sed -i 's/inputs: \[hot_readings\]/inptus: [hot_readings]/' /etc/weir/weir.yaml
if systemctl reload weir.service; then bad "a broken reload fails"; else ok "a broken reload fails"; fi
check "still active" systemctl is-active --quiet weir.service
check "same process" [ "$(main_pid)" = "$pid" ]
check "readings still flow" [ "$(post engine-1 '{"temperature": 130, "seq": 1003}')" = 200 ]
check "…into the old topology's sinks" wait_for 30 grep -q '1003' /var/lib/weir/hot.ndjson
journalctl -u weir.service --no-pager -n 15
check "the journal says why" sh -c "journalctl -u weir.service --no-pager | grep -q inptus"
say "journalctl -u weir -p warning (priorities from weir's <N> prefixes)"
journalctl -u weir.service -p warning --no-pager -o short-monotonic | tail -8
check "-p warning shows the refusal" sh -c "journalctl -u weir.service -p warning --no-pager | grep -q inptus"
check "-p warning hides info lines" sh -c "! journalctl -u weir.service -p warning --no-pager | grep -q 'topology running'"
cp /root/weir.yaml.good /etc/weir/weir.yaml
check "reload after the fix" systemctl reload weir.service

say "systemctl stop drains"
check "systemctl stop" systemctl stop weir.service
journalctl -u weir.service --no-pager -n 6
check "drained and stopped" sh -c "journalctl -u weir.service --no-pager | grep -q 'stopping: draining the topology'"
check "stopped cleanly (not failed)" sh -c "[ \"\$(systemctl show -p Result --value weir.service)\" = success ]"
check "table committed" sh -c "ls /var/lib/weir/lake/_delta_log/*.json >/dev/null"

say "upgrade while stopped: the edited conffile stays, weir stays stopped"
check "apt install 0.1.0-2" apt-get install -y ./weir_0.1.0-2_amd64.deb
check "version 0.1.0-2" sh -c "dpkg-query -W -f '\${Version}' weir | grep -qx 0.1.0-2"
check "local edit kept" cmp -s /etc/weir/weir.yaml /root/weir.yaml.good
check "not started by the upgrade" sh -c "! systemctl is-active --quiet weir.service"

say "upgrade while running: restarted"
systemctl start weir.service
check "running again" wait_for 120 ready
pid=$(main_pid)
check "apt install 0.1.0-3" apt-get install -y ./weir_0.1.0-3_amd64.deb
check "restarted by the upgrade" wait_for 60 sh -c "[ \"\$(systemctl show -p MainPID --value weir.service)\" != $pid ] && systemctl is-active --quiet weir.service"
check "ready after the upgrade" wait_for 120 ready
check "readings kept across the upgrade" grep -q '1001' /var/lib/weir/readings.ndjson

say "systemd-analyze security weir.service"
systemd-analyze security --no-pager weir.service | tail -1

say "apt purge"
check "apt purge" apt-get purge -y weir
check "state removed" [ ! -e /var/lib/weir ]
check "config removed" [ ! -e /etc/weir/weir.yaml ]
check "unit gone" sh -c "! systemctl cat weir.service >/dev/null 2>&1"

if [ "$failures" -eq 0 ]; then
	echo "BOOT-TEST: PASS"
else
	echo "BOOT-TEST: FAIL ($failures checks)"
fi
sync
systemctl poweroff
