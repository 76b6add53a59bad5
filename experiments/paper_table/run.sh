#!/usr/bin/env bash
# The paper table on a 2-core machine in one command, started or resumed (every stage resumes from its
# artifacts under $ROOT): two processes, each on one thread and niced, so that the machine stays usable:
#   main    recipe=paper_table (everything, in the engine's order), then recipe=paper_table_second_eval, then
#           arith again with another sampling and DPO seed (base and dpo rows on arith: the seed's share of
#           arith's gain)
#   beside  generate, filter and the LoRA baseline of each domain, domain by domain, in the order $BESIDE
#           (default: the reverse of the main process's, so that the two meet in the middle); then the same
#           two recipes as main with the eval's configurations in reverse order, so that the two processes
#           share the eval rows from both ends; then the rank-32 skillpacks' skillweave row (SkillZip
#           retention).
# The artifact keys are the same in both (an eval row's key does not depend on the other configurations).
# Each artifact is locked while it is made: a process that finds a domain's next artifact, or an eval row,
# being made by the other goes on with its other domains or rows first, then waits for that one and reuses
# it; an eval whose input (the multitask DPO, hours) the other is making scores the rows that do not read it
# first (the eval stage's `partial_inputs`); other artifacts (the merges) it waits for. To resume a run whose
# main process will sample the last domain while this one could train LoRAs, put that domain last:
# BESIDE=arith,code,instructions,dialogue
# Run from the repository root after `make venv vllm`:
#   bash experiments/paper_table/run.sh                 # logs: $ROOT/../logs/paper_table_{main,beside}.log
#   bash experiments/paper_table/run.sh dry_run=true    # where each process stands (arguments go to every run)
#   ONLY=beside bash experiments/paper_table/run.sh     # one of the two processes (main or beside)
# Start it as its own session (setsid nohup bash experiments/paper_table/run.sh > /dev/null 2>&1 < /dev/null &) so that
# it outlives the shell. A session's processes end with it; run it again in the next one. Memory: DPO ~12 GB and LoRA ~7 GB at
# once fit a 23 GB box (experiments/paper_table/README.md).
set -uo pipefail
cd "$(dirname "$0")/../.."
# Where the kernel groups the CPU time by session (sched_autogroup), `nice` weighs only within a session, and a
# session of its own (setsid, as below) gets as much CPU as any other: a test run beside it got a third of the
# 2 cores. As a session leader, this script lowers its own session's weight (never the caller's terminal's).
if [ "$(ps -o sid= -p $$ | tr -d ' ')" = "$$" ] && [ -w /proc/self/autogroup ]; then
  echo 10 > /proc/self/autogroup 2>/dev/null || true
fi
ROOT=${ROOT:-$HOME/.cache/skillweave/experiments/paper_table}
LOGS=$(dirname "$ROOT")/logs
mkdir -p "$LOGS"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
EXTRA=("$@")

run() {  # LOG, then the overrides: one python -m skillweave, its start and exit status in the log
  local log=$LOGS/$1.log; shift
  echo "== $(date -u +%FT%TZ) start $*" >> "$log"
  nice -n 10 .venv/bin/python -m skillweave artifacts_root="$ROOT" threads=1 "$@" "${EXTRA[@]}" >> "$log" 2>&1
  local rc=$?
  echo "== $(date -u +%FT%TZ) exit $rc" >> "$log"
  return $rc
}

BESIDE=${BESIDE:-dialogue,instructions,code,arith}
ONLY=${ONLY:-both}
case $ONLY in both|main|beside) ;; *) echo "ONLY=$ONLY: write main, beside or leave it unset (both)" >&2; exit 2 ;; esac
CONFIGURATIONS=$(.venv/bin/python -c 'import sys, yaml; print(",".join(yaml.safe_load(sys.stdin)["eval"]["configurations"]))' \
  < recipes/paper_table.yaml) || exit 1
REVERSED=$(tr , '\n' <<< "$CONFIGURATIONS" | tac | paste -sd,)
if [ "$ONLY" != main ]; then
  (
    run paper_table_beside recipe=paper_table 'pipeline=[generate,filter,lora]' "domains=[$BESIDE]" \
      hydra.run.dir="$LOGS/hydra/beside" &&
      run paper_table_beside recipe=paper_table "eval.configurations=[$REVERSED]" hydra.run.dir="$LOGS/hydra/beside_all" &&
      run paper_table_beside recipe=paper_table_second_eval "eval.configurations=[$REVERSED]" \
        hydra.run.dir="$LOGS/hydra/beside_second_eval" &&
      run paper_table_beside recipe=paper_table 'pipeline=[zip,eval]' zip.rank=32 \
        'eval.configurations=[base,dpo,skillweave]' hydra.run.dir="$LOGS/hydra/rank32"
  ) &
fi
if [ "$ONLY" != beside ]; then
  (
    run paper_table_main recipe=paper_table hydra.run.dir="$LOGS/hydra/main" &&
      run paper_table_main recipe=paper_table_second_eval hydra.run.dir="$LOGS/hydra/second_eval" &&
      run paper_table_main recipe=paper_table 'pipeline=[generate,filter,dpo,eval]' 'domains=[arith]' \
        '~domain_overrides.code' '~domain_overrides.instructions' '~domain_overrides.dialogue' \
        domain.sampling.seed=1 dpo.seed=1 'eval.configurations=[base,dpo]' 'eval.compare_to=[base]' \
        hydra.run.dir="$LOGS/hydra/seed1"
  ) &
fi
echo "paper table running under $ROOT; logs in $LOGS (dry_run=true on either recipe says where it stands)"
wait
