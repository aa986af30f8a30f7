"""The real `harness` command line on the tiny model and tiny data: train (run tree, reload, refusal, resume,
dedicated, LoRA), mistakes that end in one clear line, preview, and the tasks commands."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from manyicl.harness.errors import HarnessError
from tests.helpers import one_line as _one_line
from tests.helpers import run_harness as _harness

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
HARNESS = Path(sys.executable).parent / "harness"


def _read(path: Path):
    return json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def _weights(path: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _differs(a: dict, b: dict) -> bool:
    """Whether any weight moved by more than bf16 rounding of the original (checkpoints are saved in bf16)."""
    import torch

    assert a.keys() == b.keys()
    return any(not torch.equal(a[k].to(torch.bfloat16), b[k].to(torch.bfloat16)) for k in a)


@pytest.fixture(scope="module")
def base_args(tiny_model, tiny_data) -> list[str]:
    return ["train", "--model", str(tiny_model), "--data-dir", str(tiny_data), "--max-seq-len", "256"]


@pytest.fixture(scope="module")
def trained(base_args, tmp_path_factory):
    """One two-task run: sst2,rte, manyicl, three steps."""
    run = tmp_path_factory.mktemp("train") / "run"
    args = [*base_args, "--tasks", "sst2,rte", "--max-steps", "3", "--lr", "1e-3", "-o", str(run)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        code, out, err = _harness(args, mp)
    assert code == 0, err
    return run, args, out


def test_run_directory_tree(trained, tiny_model, tiny_data):
    run, args, out = trained
    assert {p.name for p in run.iterdir()} == {"config.yaml", "manifest.json", "data_stats.json", "train_log.jsonl",
                                              "final"}
    assert "Trained:" in out

    config = _read(run / "config.yaml")
    assert config["method"] == "manyicl" and config["tasks"] == ["sst2", "rte"]
    assert config["max_steps"] == 3 and config["max_seq_len"] == 256 and config["learning_rate"] == 1e-3
    assert config["format"] == "chat"  # auto resolved: the tiny tokenizer has a chat template
    assert config["model_path"] == str(Path(tiny_model).resolve()) and config["data_dir"] == str(tiny_data)

    manifest = _read(run / "manifest.json")
    assert manifest["status"] == "complete" and manifest["kind"] == "train" and manifest["method"] == "manyicl"
    import manyicl.harness.runs

    assert manifest["git"]["sha"] == manyicl.harness.runs.git_state()["sha"]
    if manifest["git"]["sha"] is not None:  # None only in a copy of the tree with no commit
        assert re.fullmatch(r"[0-9a-f]{40}", manifest["git"]["sha"]) and isinstance(manifest["git"]["dirty"], bool)
    assert {"torch", "transformers", "trl", "peft", "datasets"} <= set(manifest["packages"])
    assert manifest["seed"] == 1234
    assert manifest["command"] == ["harness", *args]
    assert manifest["hardware"]["cpu_count"] >= 1 and "python" in manifest["hardware"]
    assert manifest["wall_time_s"] > 0 and manifest["steps"] == 3
    assert manifest["checkpoint"] == str(run / "final") and manifest["checkpoint_kind"] == "full"
    assert set(manifest["data_sources"]) == {"sst2", "rte"}

    stats = _read(run / "data_stats.json")
    assert stats["rows"] == 3 and stats["steps"] == 3
    assert set(stats["per_task"]) == {"sst2", "rte"}
    assert 0 < stats["tokens"] <= 3 * 256
    for key in ("tokens", "trained_tokens", "targets", "examples", "rows"):
        assert manifest["seen"][key] == stats[key], key
    assert 0 < stats["targets"] <= stats["examples"] and 0 < stats["trained_tokens"] < stats["tokens"]

    log = _log(run)
    steps = [row["step"] for row in log if "loss" in row]
    assert steps == [1, 2, 3]
    # TRL's own token count agrees with ours: it trained on exactly the rows the budget chose
    assert [row["num_tokens"] for row in log if "loss" in row][-1] == stats["tokens"]
    assert manifest["final_train_loss"] == [row["loss"] for row in log if "loss" in row][-1]

    info = _read(run / "final" / "harness_checkpoint.json")
    assert info["method"] == "manyicl" and info["tasks"] == ["sst2", "rte"] and info["format"] == "chat"
    assert info["adapter_only"] is False and info["base_model"] == str(Path(tiny_model).resolve())
    assert info["seed"] == 1234  # the training seed: evaluation records carry it as `train_seed`


def test_manifest_git_state(tmp_path, monkeypatch):
    import manyicl.harness.runs

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=tmp_path,
                       check=True, capture_output=True)

    monkeypatch.setattr(manyicl.harness.runs, "PROJECT_ROOT", tmp_path)
    assert manyicl.harness.runs.git_state() == {"sha": None, "dirty": None}  # not a repository
    git("init", "-q")
    assert manyicl.harness.runs.git_state() == {"sha": None, "dirty": None}  # a repository without a commit
    (tmp_path / "a.txt").write_text("1")
    git("add", "a.txt")
    git("commit", "-q", "-m", "first")
    state = manyicl.harness.runs.git_state()
    assert re.fullmatch(r"[0-9a-f]{40}", state["sha"]) and state["dirty"] is False
    (tmp_path / "a.txt").write_text("2")
    assert manyicl.harness.runs.git_state()["dirty"] is True


def test_final_reloads_with_new_weights(trained, tiny_model):
    from transformers import AutoTokenizer

    run, _, _ = trained
    before, after = _weights(tiny_model), _weights(run / "final")
    assert _differs(before, after)
    tokenizer = AutoTokenizer.from_pretrained(run / "final")
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"


def test_finished_run_returns_immediately(trained):
    run, args, _ = trained
    manifest = (run / "manifest.json").read_text()
    log = (run / "train_log.jsonl").read_text()
    code, _, err = _harness(args)
    assert code == 0, err
    assert (run / "manifest.json").read_text() == manifest
    assert (run / "train_log.jsonl").read_text() == log


def _stop_after(step: int):
    """A stand-in for Trainer._maybe_log_save_evaluate that raises KeyboardInterrupt (Ctrl-C) once optimizer step
    `step` is logged and its checkpoint written and marked complete."""
    from transformers import Trainer

    real = Trainer._maybe_log_save_evaluate

    def then_stop(self, *a, **kw):
        real(self, *a, **kw)
        if self.state.global_step == step:
            raise KeyboardInterrupt

    return then_stop


def _checkpoint_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir())  # TRL also writes a README.md model card there


def _said(caplog) -> str:
    return " ".join(r.getMessage() for r in caplog.records)


def test_interrupted_run_is_refused_without_resume_and_continues_with_it(base_args, tmp_path, caplog):
    from transformers import Trainer

    run = tmp_path / "run"
    settings = tmp_path / "settings.yaml"
    settings.write_text("save_steps: 1\ntasks: [sst2]\n")
    args = [*base_args, "--config", str(settings), "--max-steps", "3", "-o", str(run)]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "_maybe_log_save_evaluate", _stop_after(2))
        code, _, err = _harness(args)
    assert code == 130, err
    # checkpoint-1 went only once checkpoint-2 was marked complete
    assert _checkpoint_folders(run / "checkpoints") == ["checkpoint-2"]
    assert (run / "checkpoints" / "checkpoint-2" / "complete.json").is_file()
    assert _read(run / "manifest.json")["status"] == "running"
    assert not (run / "final").exists()

    code, _, err = _harness(args)
    assert code == 2
    assert "Traceback" not in err
    assert "already holds an unfinished run; pass --resume" in _one_line(err)
    assert not (run / "final").exists()

    code, _, err = _harness([*args, "--resume"])
    assert code == 0, err
    assert f"Resuming from {run / 'checkpoints' / 'checkpoint-2'} (step 2)." in _said(caplog)
    manifest = _read(run / "manifest.json")
    assert manifest["status"] == "complete" and manifest["steps"] == 3
    assert [row["step"] for row in _log(run) if "loss" in row] == [1, 2, 3], "resumed at step 3, not restarted"
    assert (run / "final" / "model.safetensors").exists()
    assert not (run / "checkpoints").exists()


# --------------------------------------------------------------------------- faults: checkpoints a crash cannot poison

FAULT_SETTINGS = "save_steps: 1\ntasks: [sst2]\ncurve_points: [0.5, 0.75]\n"  # a checkpoint after every step


def _fault_args(base_args: list[str], folder: Path) -> list[str]:
    settings = folder / "settings.yaml"
    settings.write_text(FAULT_SETTINGS)
    return [*base_args, "--config", str(settings), "--max-steps", "4", "--lr", "1e-3", "-o", str(folder / "run")]


@pytest.fixture(scope="module")
def uninterrupted(base_args, tmp_path_factory) -> Path:
    """The run the fault tests must reproduce exactly: the same settings, never stopped."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        code, _, err = _harness(_fault_args(base_args, folder), mp)
    assert code == 0, err
    return folder / "run"


def _same_run(run: Path, reference: Path) -> None:
    """The same losses step by step and bit-identical final weights (and learning-curve points)."""
    import torch

    assert _read(run / "manifest.json")["status"] == "complete" and _read(run / "manifest.json")["steps"] == 4
    losses = [(row["step"], row["loss"]) for row in _log(run) if "loss" in row]
    assert [step for step, _ in losses] == [1, 2, 3, 4], "each step logged once"
    assert losses == [(row["step"], row["loss"]) for row in _log(reference) if "loss" in row]
    for sub in ("final", "curve/0.5", "curve/0.75"):
        mine, theirs = _weights(run / sub), _weights(reference / sub)
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs), f"{sub} differs from the uninterrupted run"
    assert not (run / "checkpoints").exists()


# Run as `python -c KILLED_MID_SAVE harness-args...`: SIGKILL while checkpoint {step} is being written, after its
# weights and before its optimizer, scheduler, RNG and trainer state (what a kill or a full disk leaves).
KILLED_MID_SAVE = """
import os, signal, sys
from transformers import Trainer
real = Trainer._save_optimizer_and_scheduler
def die(self, output_dir):
    if self.state.global_step == {step}:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, output_dir)
Trainer._save_optimizer_and_scheduler = die
from manyicl.harness.cli import main
sys.argv = ["harness", *sys.argv[1:]]
main()
"""


def test_a_run_killed_while_writing_a_checkpoint_resumes_from_the_last_complete_one(base_args, uninterrupted,
                                                                                   tmp_path, caplog):
    import signal

    from transformers import Trainer

    args = _fault_args(base_args, tmp_path)
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", KILLED_MID_SAVE.format(step=3), *args], capture_output=True,
                          text=True, timeout=600, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    folder = run / "checkpoints"
    assert _checkpoint_folders(folder) == ["checkpoint-2", "checkpoint-3"]
    assert (folder / "checkpoint-2" / "complete.json").is_file(), "the complete checkpoint outlived the next one"
    broken = folder / "checkpoint-3"
    assert not (broken / "complete.json").exists() and not (broken / "optimizer.pt").exists()
    weights = broken / "model.safetensors"  # as if the kill had come while the weights were written, too
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    # A file the harness never writes, planted in both saved points: the kept point still holds it after the
    # resume, and the redone one is a new folder without it (inode numbers cannot tell: the filesystem reuses them).
    for point in ("0.5", "0.75"):
        (run / "curve" / point / "planted-before-resume").write_text(point)

    real_save = Trainer._save_checkpoint
    seen: list[tuple[int, list[str]]] = []

    def recording_save(self, *a, **kw):
        seen.append((self.state.global_step, _checkpoint_folders(folder)))
        return real_save(self, *a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "_save_checkpoint", recording_save)
        code, _, err = _harness([*args, "--resume"])
    assert code == 0, err
    assert (f"Resuming from {folder / 'checkpoint-2'} (step 2); skipped checkpoint-3 (no completion marker), set "
            "aside as incomplete-checkpoint-3.") in _said(caplog)
    # transformers never saw the broken folder, and step 3 was saved afresh beside what was set aside
    assert seen == [(3, ["checkpoint-2", "incomplete-checkpoint-3"])]
    [resumed] = [row for row in _log(run) if "resumed_from" in row]
    assert resumed["step"] == 2 and resumed["resumed_from"] == "checkpoint-2"
    assert list(resumed["skipped"]) == ["checkpoint-3"]
    # the point at step 2 came before the checkpoint and is kept; the one at step 3 was redone
    assert (run / "curve" / "0.5" / "planted-before-resume").is_file()
    assert not (run / "curve" / "0.75" / "planted-before-resume").exists()
    assert (run / "curve" / "0.75" / "config.json").is_file()
    _same_run(run, uninterrupted)


def test_a_run_whose_only_checkpoint_is_broken_starts_over_and_says_so(base_args, uninterrupted, tmp_path, caplog):
    from transformers import Trainer

    args = _fault_args(base_args, tmp_path)
    run = tmp_path / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "_maybe_log_save_evaluate", _stop_after(2))
        code, _, err = _harness(args)
    assert code == 130, err
    folder = run / "checkpoints"
    assert _checkpoint_folders(folder) == ["checkpoint-2"]
    # cut short after its marker was written (a disk fault, a copy interrupted): the marker no longer matches
    weights = folder / "checkpoint-2" / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[:100])

    code, _, err = _harness([*args, "--resume"])
    assert code == 0, err
    assert (f"No complete checkpoint in {folder}: skipped checkpoint-2 (model.safetensors has 100 bytes, not the "
            f"{size} it was written with), set aside as incomplete-checkpoint-2; starting over from step 0."
            ) in _said(caplog)
    _same_run(run, uninterrupted)


def test_checkpoints_are_saved_every_save_steps_but_not_at_the_last_step(base_args, tmp_path):
    """final/ is written right after the last step and checkpoints/ deleted, so a checkpoint there would only cost
    time (~1.6 GB of weights and optimizer state for SmolLM2); the ones --resume needs stay."""
    from transformers import Trainer

    run = tmp_path / "run"
    settings = tmp_path / "settings.yaml"
    settings.write_text("save_steps: 2\ntasks: [sst2]\n")
    real_save = Trainer._save_checkpoint
    saved: list[int] = []

    def recording_save(self, *a, **kw):
        saved.append(self.state.global_step)
        return real_save(self, *a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "_save_checkpoint", recording_save)
        code, _, err = _harness([*base_args, "--config", str(settings), "--max-steps", "4", "-o", str(run)])
    assert code == 0, err
    assert saved == [2]
    assert (run / "final" / "model.safetensors").exists() and not (run / "checkpoints").exists()


def test_foreign_files_in_the_output_dir_are_refused(base_args, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    code, _, err = _harness([*base_args, "--tasks", "sst2", "--max-steps", "1", "-o", str(run)])
    assert code == 2 and "pass --resume" in _one_line(err)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]


def test_dedicated_trains_one_model_per_task(base_args, tmp_path, tiny_model):
    run = tmp_path / "run"
    code, _, err = _harness([*base_args, "--method", "dedicated", "--tasks", "sst2,rte", "--max-steps", "2",
                             "-o", str(run)])
    assert code == 0, err
    manifest = _read(run / "manifest.json")
    assert manifest["method"] == "dedicated" and manifest["status"] == "complete"
    assert manifest["models"] == {"sst2": str(run / "sst2" / "final"), "rte": str(run / "rte" / "final")}
    assert _read(run / "config.yaml")["method"] == "dedicated"
    base = _weights(tiny_model)
    seen = {"tokens": 0, "targets": 0, "examples": 0}
    for task in ("sst2", "rte"):
        child = run / task
        assert _read(child / "config.yaml")["tasks"] == [task]
        assert _read(child / "config.yaml")["method"] == "zero-shot"
        assert set(_read(child / "data_stats.json")["per_task"]) == {task}
        info = _read(child / "final" / "harness_checkpoint.json")
        assert info["tasks"] == [task] and info["method"] == "zero-shot"
        child_manifest = _read(child / "manifest.json")
        assert child_manifest["status"] == "complete" and child_manifest["steps"] == 2
        for key in seen:
            seen[key] += child_manifest["seen"][key]
        assert _weights(child / "final").keys() == base.keys()
    assert manifest["seen"] == seen


def test_lora_merged_saves_full_weights(base_args, tmp_path, tiny_model):
    run = tmp_path / "run"
    code, _, err = _harness([*base_args, "--tasks", "sst2", "--max-steps", "2", "--lora-r", "4", "--lr", "1e-2",
                             "-o", str(run)])
    assert code == 0, err
    final = run / "final"
    assert (final / "model.safetensors").exists() and not (final / "adapter_config.json").exists()
    info = _read(final / "harness_checkpoint.json")
    assert info["lora_r"] == 4 and info["lora_merged"] is True and info["adapter_only"] is False
    assert _read(run / "manifest.json")["checkpoint_kind"] == "full"
    before, after = _weights(tiny_model), _weights(final)
    assert not any("lora" in k for k in after)
    assert _differs(before, after)


def test_lora_without_merge_saves_an_adapter(base_args, tmp_path, tiny_model):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from manyicl.harness.models import resolve_model

    run = tmp_path / "run"
    code, _, err = _harness([*base_args, "--tasks", "sst2", "--max-steps", "2", "--lora-r", "4", "--no-lora-merge",
                             "-o", str(run)])
    assert code == 0, err
    final = run / "final"
    assert (final / "adapter_config.json").exists() and not (final / "model.safetensors").exists()
    info = _read(final / "harness_checkpoint.json")
    assert info["lora_merged"] is False and info["adapter_only"] is True
    assert _read(run / "manifest.json")["checkpoint_kind"] == "adapter"
    resolved = resolve_model(str(run))
    assert resolved.adapter == str(final.resolve()) and resolved.path == str(Path(tiny_model).resolve())
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(resolved.path), resolved.adapter)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(torch.count_nonzero(p) for p in lora_b), "the adapter learned nothing"


@pytest.mark.parametrize("extra, message", [
    (["--tasks", "sst2,nope"], "Unknown task `nope`"),
    (["--tasks", "sst2,arc_easy"], "arc_easy is a probe, never trained on"),
    (["--method", "best-shot"], "--method must be one of zero-shot, few-shot, many-shot-last, manyicl, "
                                "manyicl-full, dedicated, not `best-shot`"),
    (["--data-dir", "{tmp}/no-such-folder"], "no-such-folder does not exist"),
    (["--model", "{tmp}/no/such/model"], "Model path {tmp}/no/such/model does not exist"),
    (["--max-seq-len", "8"], "--max-seq-len must be at least 16, not 8"),
    (["--max-steps", "0"], "--max-steps must be at least 1"),
])
def test_bad_input_is_one_clear_line(base_args, tmp_path, extra, message):
    run = tmp_path / "run"
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    args = [*base_args, "--tasks", "sst2", "--max-steps", "2", *extra]
    for with_output in (True, False):
        code, out, err = _harness([*args, "-o", str(run)] if with_output else args)
        assert code == 2
        assert "Traceback" not in err + out
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: "), err
        assert message.replace("{tmp}", str(tmp_path)) in _one_line(err)
        assert not run.exists(), "a refused run must leave no run directory"
        assert not (tmp_path / "results").exists()


def test_console_script_error_is_one_line_without_traceback(tiny_model, tiny_data, tmp_path):
    if not HARNESS.exists():
        pytest.skip(f"no console script at {HARNESS} (package not installed in this environment)")
    env = {**os.environ, "COLUMNS": "500", "HF_HUB_OFFLINE": "1", "HARNESS_RESULTS_DIR": str(tmp_path / "results")}
    proc = subprocess.run([str(HARNESS), "train", "--model", str(tiny_model), "--data-dir", str(tiny_data),
                           "--method", "dedicated", "--tasks", "sst2,nope", "--max-steps", "1"],
                          capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error: Unknown task `nope`")
    assert not (tmp_path / "results").exists()


def test_help_does_not_import_the_heavy_libraries():
    code = ("import sys, manyicl.harness.cli; heavy = [m for m in ('torch', 'trl', 'transformers', 'vllm', 'lm_eval') "
            "if m in sys.modules]; print(','.join(heavy))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


# --------------------------------------------------------------------------- preview and tasks


def test_preview_json_spans_decode_to_the_answers(tiny_model, tiny_data):
    from transformers import AutoTokenizer

    from manyicl.tasks.registry import load_examples, load_task

    answers = {ex.uid: ex.answer for ex in load_examples(load_task("rte"), tiny_data).train}
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    common = ["preview", "--task", "rte", "--model", str(tiny_model), "--data-dir", str(tiny_data), "--json"]

    code, out, err = _harness([*common, "--max-seq-len", "400", "--index", "1"])
    assert code == 0, err
    info = json.loads(out)
    assert info["method"] == "manyicl" and info["format"] == "chat" and info["num_examples"] >= 2
    assert info["num_targets"] == info["num_examples"] == len(info["example_uids"])
    assert info["target_texts"] == [answers[uid] + "<|im_end|>" for uid in info["example_uids"]]
    for (a, b), text in zip(info["target_spans"], info["target_texts"], strict=True):
        assert tokenizer.decode(info["input_ids"][a:b]) == text
        assert info["labels"][a:b] == info["input_ids"][a:b]
    assert info["num_tokens"] == len(info["input_ids"]) <= 400
    assert info["num_trained_tokens"] == sum(b - a for a, b in info["target_spans"])

    code, out, err = _harness([*common, "--method", "few-shot", "--shots", "2", "--format", "plain"])
    assert code == 0, err
    info = json.loads(out)
    assert info["format"] == "plain" and info["num_examples"] == 3 and info["num_targets"] == 1
    assert info["target_texts"] == [" " + answers[info["example_uids"][-1]] + "<|im_end|>"]


def test_preview_table_and_preview_errors(tiny_model, tiny_data):
    common = ["preview", "--model", str(tiny_model), "--data-dir", str(tiny_data)]
    code, out, err = _harness([*common, "--task", "sst2", "--max-seq-len", "128"])
    assert code == 0, err
    assert "not trained (labels = -100)" in out and "num_trained_tokens" in out
    code, _, err = _harness([*common, "--task", "piqa"])
    assert code == 2 and "piqa is a probe" in _one_line(err)
    code, _, err = _harness([*common, "--task", "sst2", "--index", "999"])
    assert code == 2 and "--index 999 is out of range" in _one_line(err)


def test_tasks_validate_exit_codes(tiny_data, tmp_path, monkeypatch):
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)  # CI sets it; this test needs it unset
    code, out, err = _harness(["tasks", "validate", "--data-dir", str(tiny_data)])
    assert code == 0, err
    assert out.count("✓") == 15

    code, out, err = _harness(["tasks", "validate", "sst2"])  # no data directory
    assert code == 1 and "data files not found" in _one_line(err)

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nfamily: poetry\ncolour: red\n")
    code, out, err = _harness(["tasks", "validate", "rte", str(bad), "--data-dir", str(tiny_data)])
    assert code == 1
    assert "✓ rte" in out and "✗" in err
    for snippet in ("unknown field `colour`", "`family: poetry`", "missing required field `prompt`"):
        assert snippet in _one_line(err)


def test_tasks_list_json():
    from manyicl.tasks.registry import builtin_task_files

    code, out, err = _harness(["tasks", "list", "--json"])
    assert code == 0, err
    rows = json.loads(out)
    assert [r["name"] for r in rows] == [p.stem for p in builtin_task_files()]
    probes = {r["name"] for r in rows if r["role"] == "probe"}
    assert probes == {"arc_easy", "arc_challenge", "commonsense_qa", "openbook_qa", "piqa", "winogrande", "mmlu"}
    for r in rows:
        assert r["kind"] in {"multiple_choice", "generation"} and r["metric"] and r["files"] and r["hub"]


def test_tasks_show(tiny_model, tiny_data):
    code, out, err = _harness(["tasks", "show", "sst2", "--model", str(tiny_model), "--data-dir", str(tiny_data)])
    assert code == 0, err
    assert out.count("Review:") == 3 and "metric accuracy" in out


def test_library_call_matches_cli(base_args):
    """`run_training` is the plain function the CLI calls: a HarnessError, not an exit, for a person's mistake."""
    from manyicl.harness.settings import TrainConfig
    from manyicl.train.trainer import run_training

    with pytest.raises(HarnessError, match=r"^--method must be one of zero-shot, .*, not `nope`\.$"):
        run_training(TrainConfig(method="nope", max_steps=1))


def test_curve_points_are_finished_models_with_what_they_had_seen(base_args, tmp_path):
    """issue 9: `--curve-points` keeps the model at fractions of the budget as folders every command loads,
    with the tokens and targets seen up to that step (rows train in order, so they are a prefix of the run's)."""
    from manyicl.harness.models import describe_model

    run = tmp_path / "run"
    code, _, err = _harness([*base_args, "--tasks", "sst2", "--max-steps", "4", "--lr", "1e-3",
                             "--curve-points", "0.25,0.5,1", "-o", str(run)])
    assert code == 0, err[-2000:]
    manifest = _read(run / "manifest.json")
    curve = manifest["curve"]
    assert [(p["fraction"], p["step"]) for p in curve] == [(0.25, 1), (0.5, 2), (1.0, 4)]
    assert [Path(p["path"]) for p in curve] == [run / "curve" / "0.25", run / "curve" / "0.5", run / "final"]
    assert curve[-1]["tokens"] == manifest["seen"]["tokens"] and curve[-1]["targets"] == manifest["seen"]["targets"]
    assert 0 < curve[0]["tokens"] < curve[1]["tokens"] < curve[2]["tokens"]
    assert 0 < curve[0]["targets"] < curve[1]["targets"] < curve[2]["targets"]
    for point in curve[:2]:
        mut = describe_model(point["path"])
        assert mut.method == "manyicl" and mut.is_finetuned
    # the model after one step is not the model after four
    assert _differs(_weights(run / "curve" / "0.25"), _weights(run / "final"))
    assert not (run / "curve" / "0.25.tmp").exists()
