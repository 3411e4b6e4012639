#!/usr/bin/env bash
# Builds the .deb and the .rpm from the `dist` profile binary, stripped, into build/pkg/:
#   packaging/build-packages.sh            # build, then check (what .ci/run does)
#   packaging/build-packages.sh --no-check # build only
# Installs what it needs when missing: cargo-deb and cargo-generate-rpm (cargo install
# --locked), lintian and rpm (apt-get). amd64 only.
set -euo pipefail
cd "$(dirname "$0")/.."

# Versions as requirements (cargo install --version): the newest 3.8.x, exactly 0.21.1.
CARGO_DEB_VERSION="~3.8"
CARGO_GENERATE_RPM_VERSION="=0.21.1"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir-target}"
check=yes
[ "${1:-}" = "--no-check" ] && check=no

step() { printf '\n== %s (%s)\n' "$1" "$(date -u +%T)"; }

need_tool() { # <cargo subcommand binary> <crate> <version requirement>
	local want=${3#[~=]}
	if ! "$1" --version 2>/dev/null | grep -q " $want"; then
		step "installing $2 $3"
		# Its own target dir, removed after: the tools' build must not evict weir's.
		CARGO_TARGET_DIR="$HOME/.cache/weir-tools-target" cargo install --locked "$2" --version "$3"
		rm -rf "$HOME/.cache/weir-tools-target"
	fi
}
need_tool cargo-deb cargo-deb "$CARGO_DEB_VERSION"
need_tool cargo-generate-rpm cargo-generate-rpm "$CARGO_GENERATE_RPM_VERSION"
missing=()
command -v lintian >/dev/null || missing+=(lintian)
command -v rpm >/dev/null || missing+=(rpm)
command -v systemd-analyze >/dev/null || missing+=(systemd)
if [ ${#missing[@]} -gt 0 ]; then
	step "installing ${missing[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

step "cargo build --profile dist"
cargo build --profile dist --locked --bin weir

step "staging build/pkg-assets"
assets=build/pkg-assets
rm -rf "$assets" build/pkg
mkdir -p "$assets/completions" "$assets/man" build/pkg
strip --strip-all -o "$assets/weir" "$CARGO_TARGET_DIR/dist/weir"
"$assets/weir" completions bash >"$assets/completions/weir.bash"
"$assets/weir" completions zsh >"$assets/completions/_weir"
"$assets/weir" completions fish >"$assets/completions/weir.fish"
"$assets/weir" man --dir "$assets/man"
# Reproducible: no time stamp or name in the gzip header.
gzip -9n "$assets"/man/*.1
size=$(stat -c %s "$assets/weir")
echo "stripped binary: $size bytes ($((size / 1024 / 1024)) MiB)"
echo "glibc floor: $(objdump -T "$assets/weir" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)"

step "cargo deb"
cargo deb --no-build --no-strip --output build/pkg/
step "cargo generate-rpm"
cargo generate-rpm --output build/pkg/
ls -l build/pkg/

[ "$check" = yes ] && packaging/check-packages.sh
exit 0
