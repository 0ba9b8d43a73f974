#!/usr/bin/env bash
# Paper-budget runs for the reproduction bundle (docs/reproduction.md), one lane: each METHOD:SHOTS in turn, Omniglot
# 5-way, conv4, seed 0, the paper profile, one PyTorch thread, at the lowest CPU priority, so other work goes on.
# Stopping a run (Ctrl-C in the foreground; SIGTERM to its python process in the background, where SIGINT is
# ignored) keeps its checkpoint and ends the lane; the same command resumes. Run it from a worktree at a
# fixed commit so that later changes cannot touch a run in flight, e.g.
#   git worktree add ../paper-wt COMMIT && cd ../paper-wt
#   scripts/paper_runs.sh ../paper-results ../paper-logs/a matching-nofce:1 matching:1 tadam:1 &
#   scripts/paper_runs.sh ../paper-results ../paper-logs/b matching-nofce:5 matching:5 tadam:5 &
# Each run's wall clock (GNU time) goes to LOG.METHOD.SHOTS.out; add finished runs to the bundle with
#   python -m benchmark.reproduce add RESULTS/RUN --command "..." --wall-seconds S
set -u
if [ $# -lt 3 ]; then echo "usage: $0 RESULTS LOG METHOD:SHOTS..." >&2; exit 2; fi
results=$1 log=$2; shift 2
# nice alone does not yield to other sessions where the kernel groups processes by session (autogroup scheduling,
# e.g. a lane started with setsid): lower this session's group too, where the kernel allows it
[ -w /proc/self/autogroup ] && echo 19 > /proc/self/autogroup 2>/dev/null
mkdir -p "$results" "$(dirname "$log")"
for spec in "$@"; do
  method=${spec%%:*} shots=${spec##*:}
  echo "$(date -u +%FT%TZ) start $method $shots-shot" >> "$log.log"
  PYTHONPATH="$PWD" nice -n 19 /usr/bin/time -v python -m benchmark.run --methods "$method" --shots "$shots" \
    --profile paper --seeds 0 --threads 1 --results-dir "$results" --no-report --no-progress \
    >> "$log.$method.$shots.out" 2>&1
  rc=$?
  echo "$(date -u +%FT%TZ) end $method $shots-shot rc=$rc" >> "$log.log"
  [ $rc -eq 130 ] || [ $rc -eq 143 ] && exit $rc  # stopped: keep the queue for the same command
done
