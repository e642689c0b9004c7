#!/usr/bin/env bash
# Drain studies before a deadline: after SECONDS, hold the LOCK of every unstarted run of the
# given study folders as this process, so that the studies' workers finish the runs they are in
# and start no new one (a run they would have to abandon at the deadline, wasting its GPU time).
# The studies then exit as interrupted, resumable; this script removes the locks it made (and
# the run folders it created for them) when the studies are done or it is stopped.
#   bash scripts/gpu-drain.sh SECONDS FOLDER...   (FOLDER: results/<study>/<stamp>-<sha>)
# Works with any harness binary that takes run locks (`harness study --devices`): a LOCK held by
# a live process of this host is busy to every worker. Typical use in one device call:
#   harness study anneal --devices 0,0 & S=$!; bash scripts/gpu-drain.sh 380 results/anneal/2026* & D=$!
#   wait $S; kill $D; wait $D
set -uo pipefail
secs=${1:?usage: gpu-drain.sh SECONDS FOLDER...}; shift
made=()
cleanup() {
  for d in "${made[@]}"; do
    rm -f "$d/LOCK"
    rmdir "$d" 2>/dev/null || true
  done
  exit 0
}
trap cleanup INT TERM EXIT
sleep "$secs" & wait $!
host=$(cat /proc/sys/kernel/hostname 2>/dev/null || hostname)
now=$(date +%s)
for f in "$@"; do
  [ -f "$f/manifest.json" ] || { echo "gpu-drain: $f has no manifest.json" >&2; continue; }
  while IFS= read -r id; do
    d="$f/runs/$id"
    [ -e "$d/DONE" ] || [ -e "$d/FAILED" ] || [ -e "$d/LOCK" ] && continue
    created=0; [ -d "$d" ] || { mkdir -p "$d" && created=1; }
    # exclusive create: a worker that took the run a moment ago keeps it
    if ( set -o noclobber; printf '{"pid": %d, "host": "%s", "start_unix": %d, "heartbeat_unix": %d}\n' $$ "$host" "$now" "$now" > "$d/LOCK" ) 2>/dev/null; then
      made+=("$d")
    elif [ $created = 1 ]; then rmdir "$d" 2>/dev/null || true; fi
  done < <(python3 -c 'import json,sys; [print(p["id"]) for p in json.load(open(sys.argv[1]))["points"]]' "$f/manifest.json")
done
echo "gpu-drain: holding ${#made[@]} unstarted runs; the studies finish their current runs" >&2
# Hold the locks until stopped, refreshing their heartbeat (a lock silent for 10 minutes is stale).
while true; do
  sleep 60 & wait $!
  now=$(date +%s)
  for d in "${made[@]}"; do
    printf '{"pid": %d, "host": "%s", "start_unix": %d, "heartbeat_unix": %d}\n' $$ "$host" "$now" "$now" > "$d/LOCK.beat" && mv -f "$d/LOCK.beat" "$d/LOCK"
  done
done
