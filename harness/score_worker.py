"""One process of `harness evaluate --num-processes N`, started by `accelerate launch` (harness/lm_eval_bridge.py,
`_score_on_processes`): it loads the model, scores its share of the documents through lm-eval, and rank 0 writes
the gathered results to the file the launching process reads. It writes nothing else."""

from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path

from manyicl.harness import launch
from manyicl.harness.errors import HarnessError
from manyicl.harness.lm_eval_bridge import run_lm_eval
from manyicl.harness.models import describe_model
from manyicl.harness.settings import EvalConfig


def main(call_file: str) -> int:
    call = json.loads(Path(call_file).read_text(encoding="utf-8"))
    cfg = EvalConfig(**call["settings"])
    try:
        launch.check_world(cfg.num_processes)
        launch.join_world()  # before lm-eval's Accelerator(): CPU processes must form one world, not N worlds of one
        mut = describe_model(cfg.model, cfg.method)
        results = run_lm_eval(call["task_names"], Path(call["include_path"]), mut, cfg, call["backend"],
                              call["max_length"], Path(call["log_dir"]))
    except HarnessError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 1
    from manyicl.harness.hf_ranks import SHARE

    print(f"Scoring process {launch.rank() + 1} of {launch.world_size()}: lm-eval rank {SHARE.rank} of "
          f"{SHARE.world_size}, {SHARE.requests} requests scored.", flush=True)
    if launch.is_main_process():  # lm-eval returns the gathered results on rank 0 only
        target = Path(call["result_file"])
        partial = target.with_name(target.name + ".partial")
        with open(partial, "wb") as handle:
            pickle.dump(results, handle)
        os.replace(partial, target)  # the launching process reads a whole file or none
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
