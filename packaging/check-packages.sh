#!/usr/bin/env bash
# Checks the packages packaging/build-packages.sh left in build/pkg/: file lists,
# conffiles, scriptlets, lintian, the unit (systemd-analyze verify and security), and that
# the packaged binary validates the packaged pipeline. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

deb=$(ls build/pkg/weir_*_amd64.deb)
rpm=$(ls build/pkg/weir-*.x86_64.rpm)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
step() { printf '\n== %s\n' "$1"; }

step "dpkg-deb -I $deb"
dpkg-deb -I "$deb"
step "dpkg-deb -c $deb"
dpkg-deb -c "$deb" | tee "$root/deb-files"
for path in ./usr/bin/weir ./usr/lib/systemd/system/weir.service ./usr/lib/sysusers.d/weir.conf \
	./etc/weir/weir.yaml ./etc/default/weir ./usr/share/bash-completion/completions/weir \
	./usr/share/zsh/vendor-completions/_weir ./usr/share/fish/vendor_completions.d/weir.fish \
	./usr/share/man/man1/weir.1.gz ./usr/share/man/man1/weir-run.1.gz \
	./usr/share/weir/pipeline.schema.json ./usr/share/doc/weir/examples/quickstart.yaml \
	./usr/share/weir/grafana/weir.json ./usr/share/doc/weir/copyright; do
	grep -q " $path\$" "$root/deb-files" || fail "the deb lacks $path"
done
dpkg-deb --ctrl-tarfile "$deb" | tar -x -C "$root" ./conffiles ./postinst ./prerm ./postrm
step "deb conffiles"
cat "$root/conffiles"
for conffile in /etc/weir/weir.yaml /etc/default/weir; do
	grep -qx "$conffile" "$root/conffiles" || fail "$conffile is not a conffile"
done
step "deb postinst"
cat "$root/postinst"
grep -q systemd-sysusers "$root/postinst" || fail "postinst does not create the weir user"
grep -q 'try-restart weir.service' "$root/postinst" || fail "postinst does not try-restart on upgrade"
grep -q 'rm -rf /var/lib/weir' "$root/postrm" || fail "postrm purge does not remove the state"

step "rpm -qip / -qlp / --scripts $rpm"
rpm -qip "$rpm"
rpm -qlp "$rpm" | tee "$root/rpm-files"
for path in /usr/bin/weir /usr/lib/systemd/system/weir.service /usr/lib/sysusers.d/weir.conf \
	/etc/weir/weir.yaml /etc/sysconfig/weir /usr/share/man/man1/weir.1.gz \
	/usr/share/weir/pipeline.schema.json /usr/share/doc/weir/examples/quickstart.yaml \
	/usr/share/weir/grafana/weir.json; do
	grep -qx "$path" "$root/rpm-files" || fail "the rpm lacks $path"
done
rpm -qp --scripts "$rpm" | tee "$root/rpm-scripts"
for scriptlet in preinstall postinstall preuninstall postuninstall; do
	grep -q "^$scriptlet scriptlet" "$root/rpm-scripts" || fail "the rpm has no $scriptlet scriptlet"
done
step "rpm config files (n = noreplace)"
rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$rpm" | grep '^c' | tee "$root/rpm-config"
for conffile in /etc/weir/weir.yaml /etc/sysconfig/weir; do
	grep -q "^cn $conffile\$" "$root/rpm-config" || fail "$conffile is not %config(noreplace)"
done

step "lintian"
# Overrides, each with its reason, are in packaging/lintian-overrides (shipped in the deb).
lintian --fail-on error --info "$deb" || fail "lintian reported errors"

step "the packaged unit and pipeline"
mkdir "$root/fs"
dpkg-deb -x "$deb" "$root/fs"
# The host's units beside weir's, so the unit's dependencies (sysinit.target, ...) resolve;
# warnings (an unknown key is only one) count as failures too.
cp -an /usr/lib/systemd/system/. "$root/fs/usr/lib/systemd/system/"
if ! verify=$(systemd-analyze verify --man=no --root="$root/fs" /usr/lib/systemd/system/weir.service 2>&1) ||
	[ -n "$verify" ]; then
	echo "$verify"
	fail "systemd-analyze verify"
else
	echo "systemd-analyze verify: clean"
fi
systemd-analyze security --offline=yes --threshold=25 --root="$root/fs" weir.service | tail -1 ||
	fail "systemd-analyze security: exposure above 2.5"
"$root/fs/usr/bin/weir" validate "$root/fs/etc/weir/weir.yaml" || fail "the packaged weir.yaml does not validate"
# Crash points (WEIR_CRASH_AT) are for the tests only: the shipped binary has none.
if strings "$root/fs/usr/bin/weir" | grep -q WEIR_CRASH_AT; then
	fail "the packaged binary has crash points (built with the crash-points feature)"
fi

if [ "$failures" -gt 0 ]; then
	echo "packages: $failures check(s) failed"
	exit 1
fi
echo "packages: every check passed"
