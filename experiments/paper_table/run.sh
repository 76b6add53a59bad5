#!/usr/bin/env bash
# The paper table on a 2-core machine in one command, started or resumed (every stage resumes from its
# artifacts under $ROOT): two processes, each on one thread and niced, so that the machine stays usable:
#   main    recipe=paper_table (everything, in the engine's order), then recipe=paper_table_second_eval
#   beside  generate, filter and the LoRA baseline of each domain, domain by domain, in the order $BESIDE
#           (default: the reverse of the main process's, so that the two meet in the middle). The artifact
#           keys are the same; each artifact is locked while it is made, and a process that finds a domain's
#           next artifact being made by the other goes on with its other domains, then waits for that one and
#           reuses it. To resume a run whose main process will sample the last domain while this one could
#           train LoRAs, put that domain last: BESIDE=arith,code,instructions,dialogue bash .../run.sh
# Run from the repository root after `make venv vllm`:
#   bash experiments/paper_table/run.sh                 # logs: $ROOT/../logs/paper_table_{main,beside}.log
#   bash experiments/paper_table/run.sh dry_run=true    # where each process stands (arguments go to every run)
# A session's processes end with it; run it again in the next one. Memory: DPO ~12 GB and LoRA ~7 GB at
# once fit a 23 GB box (experiments/paper_table/README.md).
set -uo pipefail
cd "$(dirname "$0")/../.."
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
run paper_table_beside recipe=paper_table 'pipeline=[generate,filter,lora]' "domains=[$BESIDE]" hydra.run.dir="$LOGS/hydra/beside" &
(
  run paper_table_main recipe=paper_table hydra.run.dir="$LOGS/hydra/main" &&
    run paper_table_main recipe=paper_table_second_eval hydra.run.dir="$LOGS/hydra/second_eval"
) &
echo "paper table running under $ROOT; logs in $LOGS (dry_run=true on either recipe says where it stands)"
wait
