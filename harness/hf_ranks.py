"""lm-eval's transformers model on N processes (`harness evaluate --num-processes N`): each process scores every
N-th document and lm-eval gathers the results on rank 0.

lm-eval 0.4's `HFLM` shards requests only when it counts more than one GPU (`gpus > 1` in `HFLM.__init__`), and
then by `accelerator.local_process_index`. Under `accelerate launch` that leaves two gaps: on CPUs, or with one
visible GPU per process (Slurm's usual binding), every process scores every document and each one returns the
results as rank 0; on several machines, the processes of each node share local ranks 0..7 and score the same
shard. `adopt_launcher_world` sets rank and world size from the launcher's global numbering instead, so the
evaluator's `build_all_requests(rank, world_size)` splits the documents once across all processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM


@dataclass
class Share:
    """What this process was given: lm-eval's rank and world size and the requests it scored (lm-eval pads the
    shorter shares with repeats of their last request, so the shares can sum to a few more than the whole)."""

    rank: int = 0
    world_size: int = 1
    requests: int = 0


SHARE = Share()  # this process's; harness/score_worker.py reports it


def adopt_launcher_world(lm: HFLM) -> None:
    """Give an `HFLM` built under `accelerate launch` the launcher's global rank and world size (call after its
    __init__; `HFLM` keeps the Accelerator whenever it finds more than one process)."""
    accelerator = getattr(lm, "accelerator", None)
    if accelerator is None or accelerator.num_processes <= 1:
        return
    lm._rank = accelerator.process_index
    lm._world_size = accelerator.num_processes
    SHARE.rank, SHARE.world_size = lm._rank, lm._world_size
    # The evaluator calls getattr(lm, request_type)(requests): count what reaches this process.
    for kind in ("loglikelihood", "generate_until"):
        method = getattr(lm, kind)

        def counted(requests: list[Any], *args: Any, _method: Any = method, **kwargs: Any) -> Any:
            SHARE.requests += len(requests)
            return _method(requests, *args, **kwargs)

        setattr(lm, kind, counted)


@register_model("harness-hf")
class LaunchedHFLM(HFLM):
    """lm-eval's `hf` model, sharded over the processes `accelerate launch` started (any device, any node count)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        adopt_launcher_world(self)
