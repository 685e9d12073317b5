#!/usr/bin/env bash
# Run the experiment grid (`failclosed reproduce`) in the background of a working session and commit what it
# finishes as it goes, so that a session (or a machine) can end at any moment without losing finished work.
#
#   scripts/reproduce_background.sh START|STOP|STATUS|COMMITS
#
# START runs the grid from a frozen copy of this checkout's HEAD (GRID_CHECKOUT, so that editing the working
# tree does not change a running grid), restarting it when it exits with an error, with its log in
# RUNS/grid.log; and a loop that every 3 minutes commits, on this checkout's current branch, the results
# files, the results page (regenerated from them) and its figures (HTML), and the finished models kept in results/grid/models/. A started
# training run's kept copy (about 10 MB a round on the embedded model) is committed only from the time
# KEEP_STARTED_FROM (any `date -d` time, e.g. "20:30": shortly before the session ends), so that history
# does not grow by every round; from then on it is also refreshed every 3 minutes with the scores of the
# searches in progress (`failclosed reproduce --keep-started`), so a new machine resumes them too.
# A submission of commits has a size limit, so the loop counts what its commits since START add (text diffs and
# binary files, e.g. adapters); past DIFF_BUDGET_MB (default 150) it commits the results files and the page
# only, and says so in RUNS/commit.log. Search logs are written one value a line, so a refresh adds lines.
# Set DATA_DIR to the public sets' folder (default ../shared/data if present).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$REPO/.venv/bin/python}
GRID_CHECKOUT=${GRID_CHECKOUT:-$REPO/../grid-checkout}
RUNS=${RUNS:-$REPO/../grid-runs}
DATA_DIR=${DATA_DIR:-$( [ -d "$REPO/../shared/data" ] && echo "$REPO/../shared/data" || echo "")}
KEEP_STARTED_FROM=${KEEP_STARTED_FROM:-}
DIFF_BUDGET_MB=${DIFF_BUDGET_MB:-150}
mkdir -p "$RUNS"

# Bytes the commits since this session's START add to a submission: their text diffs plus their binary files.
added_bytes() {
  local base text binary
  base=$(cat "$RUNS/session_base")
  text=$(git log -p --no-color --format= "$base"..HEAD | wc -c)
  binary=$(git log --raw --no-abbrev --format= "$base"..HEAD | awk '$NF ~ /\.safetensors$/ && $4 !~ /^0+$/ {print $4}' \
             | xargs -r -n1 git cat-file -s | awk '{s += $1} END {print s + 0}')
  echo $((text + binary))
}

grid_loop() {
  while true; do
    git -C "$GRID_CHECKOUT" fetch -q "$REPO" HEAD && git -C "$GRID_CHECKOUT" checkout -q -f --detach FETCH_HEAD
    if (cd "$GRID_CHECKOUT" && OMP_NUM_THREADS=2 "$PY" -m failclosed_interp.cli reproduce --runs "$RUNS" \
          --results "$REPO/results" --page "$REPO/docs/results.md" ${DATA_DIR:+--data-dir "$DATA_DIR"}); then
      echo "$(date -u +%FT%TZ) grid finished" && break
    fi
    echo "$(date -u +%FT%TZ) grid exited with an error; restarting in 60 s" && sleep 60
  done >>"$RUNS/grid.log" 2>&1
}

commit_loop() {
  while true; do
    sleep 180
    cd "$REPO"
    paths=(results/grid docs/results.md docs/figures)
    # The page from the results files as they are now, by this checkout's code (the grid writes it only at its end).
    if [ -n "$(git status --porcelain -- results/grid/*.json)" ]; then
      FAILCLOSED_NO_PNG=1 "$PY" -m failclosed_interp.cli reproduce --page-only --results results --page docs/results.md >/dev/null || true
    fi
    late=""
    if [ -n "$KEEP_STARTED_FROM" ] && [ "$(date +%s)" -ge "$(date -d "$KEEP_STARTED_FROM" +%s)" ]; then
      late=1  # refresh the kept copies of the runs in progress: their last round and their searches' scores so far
      "$PY" -m failclosed_interp.cli reproduce --keep-started --runs "$RUNS" --results results >/dev/null || true
    fi
    keep=()
    used=$(added_bytes)
    if [ "$used" -gt $((DIFF_BUDGET_MB * 1024 * 1024)) ]; then
      echo "$(date -u +%FT%TZ) commits since START add $((used / 1048576)) MB (budget ${DIFF_BUDGET_MB} MB): kept models are no longer committed"
    else
      for kept in results/grid/models/*/; do
        [ -d "$kept" ] || continue
        if [ -f "$kept/summary.json" ] || [ -n "$late" ]; then
          keep+=("$kept")
        fi
      done
    fi
    git add -- results/grid/*.json docs/results.md docs/figures "${keep[@]}" 2>/dev/null || true
    if ! git diff --cached --quiet -- "${paths[@]}"; then
      n=$(git diff --cached --name-only -- results/grid/*.json | wc -l)
      git commit -q -m "results: the grid's progress on the embedded model ($n results file(s), kept models: ${#keep[@]}); docs/results.md regenerated" -- "${paths[@]}" || true
    fi
  done
}

case "${1:-}" in
  START)
    [ -d "$GRID_CHECKOUT/.git" ] || git clone -q "$REPO" "$GRID_CHECKOUT"
    git -C "$REPO" rev-parse HEAD >"$RUNS/session_base"
    (grid_loop &) ; (commit_loop >>"$RUNS/commit.log" 2>&1 &)
    echo "grid running from $GRID_CHECKOUT; log: $RUNS/grid.log"
    [ -n "$KEEP_STARTED_FROM" ] || echo "note: KEEP_STARTED_FROM is not set, so the runs in progress are never kept and a new" \
      "machine starts them again from their beginning; restart with it set to about 30 minutes before the session ends" ;;
  COMMITS)  # the commit loop alone (e.g. restarted after editing this script, the grid left running)
    [ -f "$RUNS/session_base" ] || git -C "$REPO" rev-parse HEAD >"$RUNS/session_base"
    (commit_loop >>"$RUNS/commit.log" 2>&1 &) ;;
  STOP)
    pkill -f "reproduce_background.sh (START|COMMITS)" || true; pkill -f "failclosed_interp.cli reproduce --runs" || true ;;
  STATUS)
    cd "$GRID_CHECKOUT" && "$PY" -m failclosed_interp.cli reproduce --status --runs "$RUNS" --results "$REPO/results" \
      ${DATA_DIR:+--data-dir "$DATA_DIR"} ;;
  *) echo "usage: $0 START|STOP|STATUS|COMMITS" >&2; exit 2 ;;
esac
