"""Whether a study's prompts fit its context, checked by `harness study --dry-run` before anything runs.

Evaluation refuses a k-shot setting where a document cannot hold k demonstrations (prompts.build_prompts), but
only inside an evaluation stage, after training. The dry run builds the same prompts here for the documents each
stage would score, with the base model's tokenizer, so a preset whose context is too short for its tasks' real
documents is refused in seconds instead of failing every evaluation stage.
"""

from __future__ import annotations

from manyicl.harness.errors import HarnessError
from manyicl.harness.models import DEFAULT_MODEL, default_model_folder, load_tokenizer, resolve_model
from manyicl.harness.prompts import build_prompts, parse_shots
from manyicl.harness.settings import DEFAULT_MAX_LENGTH, DEFAULT_SEED, STUDY_DRAWS, StudyConfig, split_list
from manyicl.tasks.registry import load_examples, parse_task_list
from manyicl.train.sequences import Renderer, resolve_format

# Without `eval.limit` every test document would be tokenized; the first this many show a too-short context.
UNLIMITED_SAMPLE = 200


def check_prompts_fit(cfg: StudyConfig) -> str:
    """Build the prompts of every (task, shots, demonstration seed) the study scores, on the documents it scores
    (the first `eval.limit`), in the context the stages use; raises the evaluation's own HarnessError, prefixed
    with the study, where they do not fit. Returns one line for the dry run: what was checked, or why not."""
    tokenizer, why_not = _base_tokenizer(cfg)
    if tokenizer is None:
        return f"Prompt fit: not checked ({why_not})."
    ev = cfg.eval
    # as study_stages.plan_stages sets it: every model is scored in its training context
    max_length = int(ev.get("max_length") or cfg.train.get("max_seq_len") or DEFAULT_MAX_LENGTH)
    limit = ev.get("limit") or UNLIMITED_SAMPLE
    seed, seeds = int(ev.get("seed", DEFAULT_SEED)), int(ev.get("seeds", 1))
    draws = int(ev.get("draws", STUDY_DRAWS))  # every block's draw must fit, as each block is prompted from its own
    renderer = Renderer(tokenizer, resolve_format(tokenizer, ev.get("format", "auto")))
    shots = parse_shots(split_list(ev.get("shots", ["0", "5", "many"])))
    curve_shots = parse_shots(split_list(cfg.curve_eval.get("shots", ["many"])))
    probe_shots = parse_shots(split_list(ev.get("probe_shots", ["0"])), "--probe-shots")
    plan = [(name, shots + [s for s in curve_shots if s not in shots]) for name in cfg.tasks]
    plan += [(name, shots) for name in cfg.heldout] + [(name, probe_shots) for name in cfg.probes]
    checked, unread = 0, []
    for name, settings in plan:
        [task] = parse_task_list([name])
        try:
            data = load_examples(task, cfg.data_dir)
        except HarnessError:
            unread.append(task.name)  # no data here (a hub task offline): the estimate uses the limit for it too
            continue
        for k in settings:
            for draw in [seed] if k == "0" else [seed + i for i in range(seeds)]:
                try:
                    build_prompts(data, renderer, k, draw, max_length, limit, draws)
                except HarnessError as err:
                    raise HarnessError(f"Study `{cfg.name}` cannot score {task.name} as set (demonstration seed "
                                       f"{draw}): {err}") from None
                checked += 1
    line = (f"Prompt fit: {checked} task x shots x seed settings fit in {max_length} tokens "
            f"(first {limit} documents each)")
    return line + (f"; not checked, no data here: {', '.join(unread)}." if unread else ".")


def _base_tokenizer(cfg: StudyConfig):
    """The base model's tokenizer, or (None, why) where it is not here: a hub model offline, or the default model
    not yet converted (the dry run does not spend minutes converting it; the study's first stage does)."""
    if cfg.model in (None, DEFAULT_MODEL) and not (default_model_folder() / "config.json").exists():
        return None, "the default model is converted on the study's first run"
    try:
        return load_tokenizer(resolve_model(cfg.model)), ""
    except HarnessError:  # offline, or not downloaded: checked wherever the model can be loaded
        return None, f"the tokenizer of {cfg.model} cannot be loaded here"
