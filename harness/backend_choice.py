"""Which backend `harness evaluate --backend auto` scores with, and the reason recorded in the manifest: the
fastest one bench/eval_many_shot.py measured for this kind of hardware and these request kinds."""

from __future__ import annotations

# Measured by bench/eval_many_shot.py --quick on a 2-core CPU (bench/RESULTS.md, 2026-11-29): SmolLM2-135M, sst2,
# documents/s. Generation was not in that run; vLLM's server also needs ~95 s to start on this CPU.
CPU_EVIDENCE = ("bench/RESULTS.md, 2-core CPU: the prefix scorer was fastest at 0, 8, 32 and many shots (many: 7.86 "
                "documents/s, lm-eval hf 0.48, vLLM server 0.28); generation speed there is not benchmarked")


def auto_backend(request_kinds: set[str], on_gpu: bool | None = None, vllm_ok: bool | None = None) -> tuple[str, str]:
    """(backend, reason) for `--backend auto`. `request_kinds` holds the tasks' kinds (multiple_choice,
    generation); `on_gpu` and `vllm_ok` default to what this machine has."""
    if on_gpu is None:
        import torch

        on_gpu = torch.cuda.is_available()
    if not on_gpu:
        return "prefix", f"auto: no GPU; {CPU_EVIDENCE}"
    if vllm_ok is None:
        from manyicl.harness.serve import vllm_available

        vllm_ok = vllm_available()
    if "generation" in request_kinds and vllm_ok:
        # Not measured here (no GPU): vLLM's prefix cache and continuous batching serve greedy decoding well.
        return "vllm", "auto: GPU and generation tasks; vLLM with prefix caching (GPU speed not yet benchmarked)"
    # vLLM skips its prefix cache for prompt-logprob requests, so it would recompute the demonstrations per request.
    return "prefix", ("auto: GPU and log-likelihood tasks only; the prefix scorer computes the demonstrations once, "
                      "vLLM once per request (GPU speed not yet benchmarked)")
