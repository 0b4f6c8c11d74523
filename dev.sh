#!/usr/bin/env bash
# Set up the project environment on a fresh machine (idempotent), then run one task.
#   ./dev.sh demo   - the main job end to end on the embedded default (local Ray, demo inputs, bundled model)
#   ./dev.sh test   - the test suite
#   ./dev.sh setup  - only set up
set -euo pipefail
cd "$(dirname "$0")"
VENV=${MF_VENV:-.venv}

need_ffmpeg() { ! command -v ffmpeg >/dev/null 2>&1 || ! command -v ffprobe >/dev/null 2>&1; }
if need_ffmpeg; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null) \
      || { echo "dev.sh: could not install ffmpeg with apt-get" >&2; exit 1; }
  else
    echo "dev.sh: ffmpeg/ffprobe not found; install them (e.g. sudo apt-get install ffmpeg)" >&2; exit 1
  fi
fi

stamp="$VENV/.mf-installed"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ requirements.lock -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -r requirements.lock
  "$VENV/bin/python" -m pip install -q --no-deps -e .
  touch "$stamp"
fi
export RAY_USAGE_STATS_ENABLED=0

task=${1:-demo}; shift || true
case "$task" in
  setup) ;;
  demo) exec "$VENV/bin/mf" demo "$@" ;;
  test) RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled} exec "$VENV/bin/python" -m pytest "$@" ;;  # tests start their own Ray
  *) echo "usage: ./dev.sh demo|test|setup [args]" >&2; exit 2 ;;
esac
