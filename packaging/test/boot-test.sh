#!/usr/bin/env bash
# The .deb under a real systemd: boots Debian 12 (debootstrap root, Debian's kernel) in
# qemu-system-x86_64 under TCG (no KVM, no container runtime needed) from an ext4 image
# made with `mkfs.ext4 -d`, with the packages copied in, and runs guest-test.sh there as a
# oneshot unit: install, start, /ready, readings into the file, reload (good and broken),
# stop, upgrades (conffile kept; restarted only if running), purge. Prints the guest's
# log; exits 0 only on "BOOT-TEST: PASS".
#
#   packaging/build-packages.sh --no-check && packaging/test/boot-test.sh
#
# A TCG boot plus installs take ~4 min here (~3 min more for the first debootstrap); it
# is not part of .ci/run, which already builds the dist profile. The root
# filesystem is cached (packaging/test/rootfs.sh); nothing else is kept.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=packaging/test

deb=$(ls build/pkg/weir_0.1.0-1_amd64.deb)
for tool in qemu-system-x86_64:qemu-system-x86 mkfs.ext4:e2fsprogs debugfs:e2fsprogs; do
	command -v "${tool%%:*}" >/dev/null || {
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${tool#*:}"
	}
done
base=$("$here/rootfs.sh")
work=$(mktemp -d "${TMPDIR:-/tmp}/weir-boot.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "== the root filesystem: $base → $work/root"
cp -a "$base" "$work/root"
root="$work/root"
cp "$deb" "$root/root/"
# Two later versions of the same package, for the upgrade checks.
dpkg-deb -R "$deb" "$work/repack"
for revision in 2 3; do
	sed -i "s/^Version: .*/Version: 0.1.0-$revision/" "$work/repack/DEBIAN/control"
	dpkg-deb -Zgzip -z1 --root-owner-group -b "$work/repack" "$root/root/weir_0.1.0-${revision}_amd64.deb" >/dev/null
done
install -m 755 "$here/guest-test.sh" "$root/root/guest-test.sh"
cat >"$root/etc/systemd/system/weir-boot-test.service" <<'UNIT'
[Unit]
Description=weir package test
[Service]
Type=oneshot
ExecStart=/root/guest-test.sh
TimeoutStartSec=40min
[Install]
WantedBy=multi-user.target
UNIT
ln -sf /etc/systemd/system/weir-boot-test.service "$root/etc/systemd/system/multi-user.target.wants/weir-boot-test.service"
echo "/dev/vda / ext4 defaults 0 1" >"$root/etc/fstab"
# No login prompt on the serial console, no network to wait for.
ln -sf /dev/null "$root/etc/systemd/system/serial-getty@ttyS0.service"
kernel=$(ls "$root"/boot/vmlinuz-* | sort -V | tail -1)
initrd=$(ls "$root"/boot/initrd.img-* | sort -V | tail -1)
cp "$kernel" "$work/vmlinuz"
cp "$initrd" "$work/initrd.img"

echo "== mkfs.ext4 -d ($(du -sh "$root" | cut -f1))"
truncate -s 4G "$work/disk.img"
mkfs.ext4 -q -F -L weir-test -d "$root" "$work/disk.img"
rm -rf "$root"

echo "== qemu-system-x86_64 (TCG), serial console → $work/serial.log"
started=$SECONDS
timeout 45m qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 2048 \
	-kernel "$work/vmlinuz" -initrd "$work/initrd.img" \
	-append "root=/dev/vda rw console=ttyS0 quiet systemd.show_status=0 net.ifnames=0" \
	-drive "file=$work/disk.img,format=raw,if=virtio" \
	-nic none -nographic -no-reboot -serial "file:$work/serial.log" -monitor none \
	|| echo "qemu exited with $?"
echo "== the guest ran for $((SECONDS - started)) s"

# The guest's own log (complete even when the console lost lines).
debugfs -R "cat /root/boot-test.log" "$work/disk.img" 2>/dev/null >"$work/guest.log" || true
if [ -s "$work/guest.log" ]; then
	cat "$work/guest.log"
else
	echo "no guest log; the serial console said:"
	tail -100 "$work/serial.log"
fi
grep -q "^BOOT-TEST: PASS" "$work/guest.log"
