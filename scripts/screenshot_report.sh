#!/usr/bin/env bash
# The first screen of a report as a new user sees it: headless Chromium at 1400 px wide (issue 11's check that the
# answers and the recommendation table come first). Full page too with --full.
#
#   scripts/screenshot_report.sh [REPORT.html] [OUT.png] [--full]     (defaults: results/report.html, report.png)
#
# Needs Debian's chromium (`apt-get install chromium`).
set -euo pipefail
report=${1:-results/report.html}
out=${2:-report.png}
height=900
if [[ "${3:-}" == "--full" ]]; then height=20000; fi
command -v chromium >/dev/null || { echo "screenshot_report: chromium not found (apt-get install chromium)" >&2; exit 2; }
[[ -f "$report" ]] || { echo "screenshot_report: no report at $report (run \`make figures\` first)" >&2; exit 2; }
chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size="1400,$height" \
  --screenshot="$out" "file://$(realpath "$report")" 2>/dev/null
echo "$out: 1400x$height screenshot of $report"
