#!/usr/bin/env bash
# Refresh the vendored front-end libraries from the npm registry (no build step at install
# time: the files are committed). Edit the versions here, run this, commit the result.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=src/sensorium/web/static/vendor
PACKAGES=(
  "uplot@1.6.32:dist/uPlot.iife.min.js:uPlot.iife.min.js"
  "uplot@1.6.32:dist/uPlot.min.css:uPlot.min.css"
  "htmx.org@2.0.11:dist/htmx.min.js:htmx.min.js"
  "alpinejs@3.17.5:dist/cdn.min.js:alpine.min.js"
)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$DEST"
{
  echo "# Vendored by scripts/vendor-static.sh from the npm registry. Do not edit by hand."
  echo "# file  package@version  sha256"
} > "$DEST/VERSIONS"
for spec in "${PACKAGES[@]}"; do
  IFS=: read -r pkg path name <<<"$spec"
  dir="$work/${pkg%@*}"
  if [ ! -d "$dir" ]; then
    mkdir -p "$dir"
    (cd "$dir" && npm pack --silent "$pkg" >/dev/null 2>&1 && tar -xzf ./*.tgz)
  fi
  cp "$dir/package/$path" "$DEST/$name"
  echo "$name  $pkg  $(sha256sum "$DEST/$name" | cut -d' ' -f1)" >> "$DEST/VERSIONS"
done
cat "$DEST/VERSIONS"
