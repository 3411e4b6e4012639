#!/usr/bin/env bash
# Prints the path of a cached Debian 12 root filesystem (debootstrap) with systemd, Debian's
# kernel and curl, made on first use under $WEIR_ROOTFS_CACHE (default ~/.cache/weir-boot).
# The mirror is the machine's own: the first `deb` source of bookworm in
# /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list.
set -euo pipefail

cache="${WEIR_ROOTFS_CACHE:-$HOME/.cache/weir-boot}"
base="$cache/bookworm-base"
suite=bookworm
packages=systemd,systemd-sysv,udev,dbus,linux-image-amd64,curl,ca-certificates,procps,passwd,init-system-helpers

mirror() {
	local uri
	uri=$(awk -v suite="$suite" '
		/^URIs:/ { uris = $2 }
		/^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) found = 1 }
		/^$/ { if (found && uris != "") { print uris; exit } found = 0; uris = "" }
		END { if (found && uris != "") print uris }
	' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
	if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
		uri=$(awk -v suite="$suite" '$1 == "deb" && $3 == suite { print $2; exit }' /etc/apt/sources.list)
	fi
	[ -n "$uri" ] || { echo "no apt source for $suite on this machine" >&2; exit 1; }
	echo "$uri"
}

# Made again when the package list changes.
if ! [ -f "$base/.complete" ] || [ "$(cat "$base/.complete")" != "$packages" ]; then
	command -v debootstrap >/dev/null || {
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap
	}
	rm -rf "$base"
	mkdir -p "$cache"
	echo "debootstrap $suite from $(mirror) into $base" >&2
	debootstrap --variant=minbase --include="$packages" "$suite" "$base" "$(mirror)" >&2
	# Offline in the guest: no apt lists are needed to install a local .deb whose
	# dependencies are installed.
	rm -f "$base"/var/lib/apt/lists/*_Packages
	echo weir-test >"$base/etc/hostname"
	echo "$packages" >"$base/.complete"
fi
echo "$base"
