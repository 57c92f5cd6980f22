#!/usr/bin/env bash
# Vendor TradingView Lightweight Charts (the dashboard's chart library) from the npm registry.
#
# Usage: tools/update-lightweight-charts.sh [VERSION]  fetch VERSION (default: the pinned one), verify it,
#                                                      install it into static/vendor/lightweight-charts/
#        tools/update-lightweight-charts.sh --check    verify the vendored files (offline; the tests do this too)
#        tools/update-lightweight-charts.sh --latest   print the newest version on the registry
#        tools/update-lightweight-charts.sh --help     this help
#
# Only two files of the package are kept: the standalone production build (one script that
# defines window.LightweightCharts, no module loader, nothing fetched at run time) and its
# LICENSE (Apache-2.0). The tarball's sha512 must equal the registry's dist.integrity; the
# kept files' SHA-256 go into SHA256SUMS and the version and integrity into VERSION, so a
# changed byte is caught by --check. NOTICE (the attribution TradingView asks for, and the
# bundled third-party parts) is ours and kept as it is. The dashboard's asset URLs carry a
# content hash, so browsers fetch a new build once and nothing else needs editing. Needs npm.
set -euo pipefail

readonly PACKAGE=lightweight-charts
readonly BUILD=dist/lightweight-charts.standalone.production.js
ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
readonly ROOT
readonly DEST=$ROOT/static/vendor/lightweight-charts
WORK=""

say() { printf 'update-lightweight-charts: %s\n' "$*"; }
die() { printf 'update-lightweight-charts: ERROR: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'; }
cleanup() { if [ -n "$WORK" ]; then rm -rf "$WORK"; fi; }

pinned_version() {
  [ -f "$DEST/VERSION" ] || die "$DEST/VERSION is missing; give a version: $0 5.2.1"
  awk '$1 == "version" { print $2 }' "$DEST/VERSION"
}

check() {  # check DIR: the files match SHA256SUMS and the build is the version VERSION names
  local dir=$1 version
  if [ ! -f "$dir/SHA256SUMS" ] || [ ! -f "$dir/VERSION" ]; then
    die "$dir: SHA256SUMS or VERSION missing"
  fi
  (cd "$dir" && sha256sum --quiet --strict -c SHA256SUMS) || die "$dir: a vendored file does not match SHA256SUMS"
  version=$(awk '$1 == "version" { print $2 }' "$dir/VERSION")
  head -c 300 "$dir/$(basename "$BUILD")" | grep -qF "Lightweight Charts™ v$version" ||
    die "$dir: the build's header does not name version $version"
  say "OK: $PACKAGE $version ($(wc -c <"$dir/$(basename "$BUILD")") bytes) matches SHA256SUMS"
}

fetch() {  # fetch VERSION
  local version=$1 expected tarball actual license
  command -v npm >/dev/null 2>&1 || die "npm is needed (apt-get install npm)"
  [[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "not a release version: '$version'"
  WORK=$(mktemp -d)
  trap cleanup EXIT
  expected=$(npm view "$PACKAGE@$version" dist.integrity) || die "the registry does not know $PACKAGE@$version"
  [[ $expected == sha512-* ]] || die "the registry gave no sha512 integrity for $PACKAGE@$version"
  say "fetching $PACKAGE@$version from the npm registry"
  (cd "$WORK" && npm pack --silent "$PACKAGE@$version" >/dev/null) || die "npm pack $PACKAGE@$version failed"
  tarball="$WORK/$PACKAGE-$version.tgz"
  [ -f "$tarball" ] || die "npm pack did not write $tarball"
  actual=$(node -e 'const c = require("crypto"), fs = require("fs");
    process.stdout.write("sha512-" + c.createHash("sha512").update(fs.readFileSync(process.argv[1])).digest("base64"));' \
    "$tarball")
  [ "$actual" = "$expected" ] || die "integrity mismatch: registry $expected, tarball $actual"
  tar -xzf "$tarball" -C "$WORK" package/package.json package/LICENSE "package/$BUILD"
  license=$(node -e 'const p = require(process.argv[1]); process.stdout.write(p.name + " " + p.version + " " + p.license)' \
    "$WORK/package/package.json")
  [ "$license" = "$PACKAGE $version Apache-2.0" ] || die "unexpected package metadata: $license"

  mkdir -p "$WORK/out"
  cp "$WORK/package/$BUILD" "$WORK/package/LICENSE" "$WORK/out/"
  printf 'version %s\nintegrity %s\nsource https://registry.npmjs.org/%s/-/%s-%s.tgz\n' \
    "$version" "$expected" "$PACKAGE" "$PACKAGE" "$version" >"$WORK/out/VERSION"
  (cd "$WORK/out" && sha256sum "$(basename "$BUILD")" LICENSE >SHA256SUMS)
  check "$WORK/out"

  mkdir -p "$DEST"
  for f in "$(basename "$BUILD")" LICENSE VERSION SHA256SUMS; do
    install -m 0644 "$WORK/out/$f" "$DEST/$f"
  done
  check "$DEST"
  say "installed into ${DEST#"$ROOT"/}; now run: python -m pytest tests/test_dashboard.py tests/test_dashboard_browser.py"
}

case ${1:-} in
  -h | --help) usage ;;
  --check) check "$DEST" ;;
  --latest) npm view "$PACKAGE" version ;;
  "") fetch "$(pinned_version)" ;;
  -*) usage >&2; exit 2 ;;
  *) fetch "$1" ;;
esac
