#!/usr/bin/env bash
# CI artifact: the fleet example's HTML report (`gantry study --report`,
# with its plots and the sensitivity tables) rendered by headless Chromium,
# saved as ci-artifacts/fleet_report.png next to the report itself
# (ci-artifacts/report/report.html). Installs Chromium (Debian's
# `chromium` package) when it is missing; needs root for that, as CI has.
#
#   bash tests/ci/report_screenshot.sh [path/to/gantry]
#
# The binary defaults to target/release/gantry, else target/debug/gantry
# (CARGO_TARGET_DIR is honoured). Exits non-zero when the report cannot
# be written, Chromium cannot be installed or started, or the PNG is not
# written or is not a PNG.
set -euo pipefail
cd "$(dirname "$0")/../.."

target=${CARGO_TARGET_DIR:-target}
bin=${1:-}
if [[ -z $bin ]]; then
    for b in "$target/release/gantry" "$target/debug/gantry"; do
        if [[ -x $b ]]; then bin=$b; break; fi
    done
fi
if [[ -z $bin || ! -x $bin ]]; then
    echo "report_screenshot: no gantry binary (build it, or pass its path)" >&2
    exit 1
fi

browser=$(command -v chromium || command -v chromium-browser || true)
if [[ -z $browser ]]; then
    echo "report_screenshot: installing chromium" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
    browser=$(command -v chromium)
fi

out=ci-artifacts
mkdir -p "$out"
"$bin" study examples/fleet_study.gantry --sensitivity --report "$out/report" >/dev/null

profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
png="$out/fleet_report.png"
rm -f "$png"
# No network, no GPU, no first-run or background work: the page is
# self-contained (no script, nothing fetched).
timeout 120 "$browser" --headless --no-sandbox --disable-gpu \
    --disable-background-networking --disable-component-update \
    --disable-sync --no-first-run --hide-scrollbars \
    --user-data-dir="$profile" --window-size=1600,2400 \
    --screenshot="$PWD/$png" "file://$PWD/$out/report/report.html" \
    >/dev/null 2>&1 || true
if [[ ! -s $png ]] || [[ $(head -c 8 "$png" | od -An -tx1 | tr -d ' \n') != 89504e470d0a1a0a ]]; then
    echo "report_screenshot: Chromium wrote no PNG to $png" >&2
    exit 1
fi
echo "report_screenshot: $png ($(wc -c < "$png") bytes) from $out/report/report.html"
