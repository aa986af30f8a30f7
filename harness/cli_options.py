"""The command line's options, each defined once: help comes from the settings field it sets (harness/settings.py),
so a flag and its config-file key always say the same thing. Options that set no setting carry their help here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from manyicl.harness.settings import METHODS, EvalConfig, StudyConfig, TrainConfig, help_for


def _sentence(text: str) -> str:
    """A field's help as a sentence; a list of values (`chat | plain | auto`) keeps its lower case."""
    text = text.strip()
    if " | " not in text:
        text = text[:1].upper() + text[1:]
    return text + ("" if text.endswith(".") else ".")


def _from(cls: type, name: str, *flags: str, panel: str | None = None) -> Any:
    """A Typer option whose help is the settings field's own."""
    return typer.Option(*flags, help=_sentence(help_for(cls, name)), rich_help_panel=panel)


# --------------------------------------------------------------------------- shared by several commands
ModelOpt = Annotated[str | None, _from(EvalConfig, "model", "--model", "-m", panel="Model")]
DataDirOpt = Annotated[str | None, _from(TrainConfig, "data_dir", "--data-dir", panel="Data")]
FormatOpt = Annotated[str | None, _from(TrainConfig, "format", "--format", panel="Data")]
SeedOpt = Annotated[int | None, _from(TrainConfig, "seed", "--seed")]
MaxSeqLenOpt = Annotated[int | None, _from(TrainConfig, "max_seq_len", "--max-seq-len")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML settings; flags override it.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

# --------------------------------------------------------------------------- harness preview
PreviewMethodOpt = Annotated[str, typer.Option("--method", help=" | ".join(METHODS) + ".")]
PreviewShotsOpt = Annotated[int, _from(TrainConfig, "shots", "--shots")]

# --------------------------------------------------------------------------- harness train
TrainMethodOpt = Annotated[str | None, _from(TrainConfig, "method", "--method")]
TrainTasksOpt = Annotated[str | None, _from(TrainConfig, "tasks", "--tasks")]
TrainOutputOpt = Annotated[str | None, _from(TrainConfig, "output_dir", "--output-dir", "-o")]
MaxStepsOpt = Annotated[int | None, _from(TrainConfig, "max_steps", "--max-steps", panel="Budget")]
MaxTokensOpt = Annotated[int | None, _from(TrainConfig, "max_tokens", "--max-tokens", panel="Budget")]
MaxTargetsOpt = Annotated[int | None, _from(TrainConfig, "max_targets", "--max-targets", panel="Budget")]
TrainShotsOpt = Annotated[int | None, _from(TrainConfig, "shots", "--shots")]
LoraROpt = Annotated[int | None, _from(TrainConfig, "lora_r", "--lora-r", panel="Model")]
LoraMergeOpt = Annotated[bool | None, _from(TrainConfig, "lora_merge", "--lora-merge/--no-lora-merge", panel="Model")]
LearningRateOpt = Annotated[float | None, _from(TrainConfig, "learning_rate", "--learning-rate", "--lr")]
TrainBatchOpt = Annotated[int | None, _from(TrainConfig, "batch_size", "--batch-size")]
GradAccumOpt = Annotated[int | None, _from(TrainConfig, "grad_accum", "--grad-accum")]
ExamplesPerTaskOpt = Annotated[int | None, _from(TrainConfig, "examples_per_task", "--examples-per-task")]
ResumeOpt = Annotated[bool, _from(TrainConfig, "resume", "--resume")]
ReportToOpt = Annotated[str | None, _from(TrainConfig, "report_to", "--report-to", panel="Logging")]
EvalStepsOpt = Annotated[int | None, _from(TrainConfig, "eval_steps", "--eval-steps", panel="Logging")]
CurvePointsOpt = Annotated[str | None, _from(TrainConfig, "curve_points", "--curve-points", panel="Logging")]
EvalExamplesOpt = Annotated[int | None, _from(TrainConfig, "eval_examples_per_task", "--eval-examples-per-task",
                                          panel="Logging")]
NumProcessesOpt = Annotated[int | None, _from(TrainConfig, "num_processes", "--num-processes", panel="Scale")]
AccelerateConfigOpt = Annotated[str | None, _from(TrainConfig, "accelerate_config", "--accelerate-config", panel="Scale")]

# --------------------------------------------------------------------------- harness evaluate
EvalTasksOpt = Annotated[str | None, _from(EvalConfig, "tasks", "--tasks")]
EvalShotsOpt = Annotated[str | None, _from(EvalConfig, "shots", "--shots")]
EvalOutputOpt = Annotated[str | None, _from(EvalConfig, "output_dir", "--output-dir", "-o")]
ProbesOpt = Annotated[bool | None, _from(EvalConfig, "probes", "--probes/--no-probes", panel="Probes")]
ProbeTasksOpt = Annotated[str | None, _from(EvalConfig, "probe_tasks", "--probe-tasks", panel="Probes")]
ProbeShotsOpt = Annotated[str | None, _from(EvalConfig, "probe_shots", "--probe-shots", panel="Probes")]
HeldoutOpt = Annotated[str | None, _from(EvalConfig, "heldout", "--heldout")]
BackendOpt = Annotated[str | None, _from(EvalConfig, "backend", "--backend", panel="Backend")]
ServerUrlOpt = Annotated[str | None, _from(EvalConfig, "server_url", "--server-url", panel="Backend")]
ServedModelOpt = Annotated[str | None, _from(EvalConfig, "served_model", "--served-model", panel="Backend")]
DtypeOpt = Annotated[str | None, _from(EvalConfig, "dtype", "--dtype", panel="Backend")]
EvalBatchOpt = Annotated[int | None, _from(EvalConfig, "batch_size", "--batch-size", panel="Backend")]
SeedsOpt = Annotated[int | None, _from(EvalConfig, "seeds", "--seeds")]
DrawsOpt = Annotated[int | None, _from(EvalConfig, "draws", "--draws")]
DrawShareOpt = Annotated[str | None, _from(EvalConfig, "draw_share", "--draw-share")]
SplitOpt = Annotated[str | None, _from(EvalConfig, "split", "--split")]
EvalSeedOpt = Annotated[int | None, _from(EvalConfig, "seed", "--seed")]
LimitOpt = Annotated[int | None, _from(EvalConfig, "limit", "--limit")]
MaxLengthOpt = Annotated[int | None, _from(EvalConfig, "max_length", "--max-length")]
EvalFormatOpt = Annotated[str | None, _from(EvalConfig, "format", "--format", panel="Data")]
EvalMethodOpt = Annotated[str | None, _from(EvalConfig, "method", "--method")]
TensorParallelOpt = Annotated[int | None, _from(EvalConfig, "tensor_parallel_size", "--tensor-parallel-size",
                                            panel="Scale")]
DataParallelOpt = Annotated[int | None, _from(EvalConfig, "data_parallel_size", "--data-parallel-size", panel="Scale")]
EvalProcessesOpt = Annotated[int | None, _from(EvalConfig, "num_processes", "--num-processes", panel="Scale")]

# --------------------------------------------------------------------------- harness study
StudyOutputOpt = Annotated[str | None, _from(StudyConfig, "output_dir", "--output-dir", "-o")]
StudyModelOpt = Annotated[str | None, _from(StudyConfig, "model", "--model", "-m", panel="Model")]
