#!/usr/bin/env bash
# The .rpm's scriptlets, for real: `rpm -i --root` into a scratch copy of the Debian root
# (packaging/test/rootfs.sh; rpm runs the scriptlets chrooted there, with its shell, and
# --nodeps since that root has no rpm database of its dependencies). Shows the files, the
# weir user the %pre scriptlet made and the preset the %post scriptlet applied, then an
# upgrade and an erase, which must leave /var/lib/weir alone. dnf cannot be tested here
# (no Fedora/RHEL repositories).
set -euo pipefail
cd "$(dirname "$0")/../.."
rpm=$(ls build/pkg/weir-*.x86_64.rpm)
base=$(packaging/test/rootfs.sh)
scratch=$(mktemp -d "${TMPDIR:-/tmp}/weir-rpm-root.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
cp -a "$base/." "$scratch/"
failures=0
check() { local what=$1; shift; if "$@"; then echo "ok: $what"; else echo "NOT OK: $what"; failures=$((failures + 1)); fi; }
in_root() { chroot "$scratch" "$@"; }

echo "== rpm -i --root $scratch --nodeps -vv (scriptlets)"
rpm -i --root "$scratch" --nodeps -vv "$rpm" 2>&1 | grep -E "scriptlet|%pre|%post|running" || true
check "installed" rpm -q --root "$scratch" weir
rpm -ql --root "$scratch" weir
check "weir user made by %pre" in_root getent passwd weir
in_root getent passwd weir || true
check "unit installed" test -f "$scratch/usr/lib/systemd/system/weir.service"
check "config noreplace" sh -c "rpm -q --root '$scratch' --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' weir | grep -qx 'cn /etc/weir/weir.yaml'"
echo "preset state: $(in_root systemctl is-enabled weir.service 2>&1 || true)"
check "packaged binary validates the packaged pipeline" in_root /usr/bin/weir validate /etc/weir/weir.yaml

echo "== upgrade keeps an edited %config(noreplace) file"
echo "# local edit" >>"$scratch/etc/weir/weir.yaml"
mkdir -p "$scratch/var/lib/weir" && echo state >"$scratch/var/lib/weir/keep-me"
rpm -U --root "$scratch" --nodeps --replacepkgs "$rpm"
check "edited config kept" grep -q "# local edit" "$scratch/etc/weir/weir.yaml"

echo "== rpm -e --root (scriptlets %preun/%postun)"
rpm -e --root "$scratch" -vv weir 2>&1 | grep -E "scriptlet|%preun|%postun" || true
check "erased" sh -c "! rpm -q --root '$scratch' weir"
check "/usr/bin/weir removed" test ! -e "$scratch/usr/bin/weir"
check "/var/lib/weir kept by the erase" test -f "$scratch/var/lib/weir/keep-me"
if [ "$failures" -gt 0 ]; then
	echo "RPM-ROOT-TEST: FAIL ($failures checks)"
	exit 1
fi
echo "RPM-ROOT-TEST: PASS"
