"""Multi-process training without processes: accelerate's sharding of our sequential rows, the shipped accelerate
configs, the launch command, and the guards (one-process configs, a changed global batch on --resume)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from manyicl.harness.errors import HarnessError
from manyicl.harness.settings import TrainConfig
from manyicl.train import distributed

CONFIGS = sorted(distributed.ACCELERATE_CONFIGS.glob("*.yaml"))


@pytest.mark.parametrize("processes,batch,accum", [(2, 1, 1), (2, 2, 3), (4, 1, 2)])
def test_accelerate_shards_sequential_rows_once_and_in_step_order(processes, batch, accum):
    """accelerate's own BatchSamplerShard over the Trainer's SequentialSampler: with a row count in whole
    optimizer steps (what the budget guarantees), every row goes to exactly one rank, and optimizer step t
    covers the same rows as one process with the same global batch."""
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler, SequentialSampler

    steps = 3
    rows = list(range(steps * batch * accum * processes))
    per_rank = [list(BatchSamplerShard(BatchSampler(SequentialSampler(rows), batch, drop_last=False),
                                       num_processes=processes, process_index=r)) for r in range(processes)]
    seen = sorted(i for batches in per_rank for b in batches for i in b)
    assert seen == rows
    for step in range(steps):
        micro = range(step * accum, (step + 1) * accum)
        in_step = sorted(i for batches in per_rank for m in micro for i in batches[m])
        width = batch * accum * processes
        assert in_step == rows[step * width:(step + 1) * width]


def test_the_budget_counts_rows_of_every_process():
    from manyicl.train.sequences import Budget, Row, select_rows

    row = Row(input_ids=[1] * 10, labels=[1] * 10, seq_lengths=[10], num_targets=1, num_examples=1, tasks=["t"])
    cfg = TrainConfig(max_steps=3, batch_size=2, grad_accum=1, num_processes=4)
    budget = Budget(cfg.max_steps, None, None, rows_per_step=cfg.batch_size * cfg.grad_accum * cfg.num_processes)
    rows, _ = select_rows(iter([[row] * 100]), budget)
    assert len(rows) == 3 * 2 * 4


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_accelerate_configs_load_in_accelerate(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    assert config.num_machines == 1 and not config.use_cpu
    assert config.mixed_precision == "bf16"


def test_the_four_configs_are_shipped():
    assert {p.stem for p in CONFIGS} == {"single-device", "multi-gpu", "fsdp", "deepspeed-zero3"}
    fsdp = yaml.safe_load((distributed.ACCELERATE_CONFIGS / "fsdp.yaml").read_text())
    assert fsdp["distributed_type"] == "FSDP" and fsdp["fsdp_config"]["fsdp_reshard_after_forward"] is True
    zero = yaml.safe_load((distributed.ACCELERATE_CONFIGS / "deepspeed-zero3.yaml").read_text())
    assert zero["deepspeed_config"]["zero_stage"] == 3


def test_config_by_name_or_path(tmp_path):
    assert distributed.accelerate_config_path(None).name == "multi-gpu.yaml"
    assert distributed.accelerate_config_path("fsdp").name == "fsdp.yaml"
    own = tmp_path / "mine.yaml"
    own.write_text("distributed_type: MULTI_GPU\n")
    assert distributed.accelerate_config_path(str(own)) == own
    with pytest.raises(HarnessError, match="neither a file nor a shipped config"):
        distributed.accelerate_config_path("fsdp2")


@pytest.mark.parametrize("text,needle", [("distributed_type: 'NO'\n", "distributed_type NO"),
                                         ("distributed_type: MULTI_GPU\nuse_cpu: true\n", "sets use_cpu")])
def test_configs_that_would_start_one_process_are_refused(tmp_path, text, needle):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(HarnessError, match=needle):
        distributed.check_accelerate_config(path, 2)
    distributed.check_accelerate_config(path, 1)  # one process is what they give


def test_launch_command_runs_the_harness_under_accelerate(tmp_path):
    cmd = distributed.launch_command(Path("c.yaml"), 2, tmp_path / "t.yaml", {"num_machines": 1})
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "2"
    assert "--main_process_port" in cmd and "--cpu" not in cmd
    assert cmd[-5:] == ["-m", "manyicl.harness.cli", "train", "--config", str(tmp_path / "t.yaml")]
    multi_node = distributed.launch_command(Path("c.yaml"), 16, tmp_path / "t.yaml", {"num_machines": 2})
    assert "--main_process_port" not in multi_node  # the cluster's config names the rendezvous


def test_needs_launch_only_outside_a_launcher(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv(distributed.LAUNCHED_ENV, raising=False)
    assert distributed.needs_launch(TrainConfig(num_processes=2))
    assert distributed.needs_launch(TrainConfig(accelerate_config="fsdp"))
    assert not distributed.needs_launch(TrainConfig())
    with pytest.raises(HarnessError, match="at least 1"):
        distributed.needs_launch(TrainConfig(num_processes=0))
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not distributed.needs_launch(TrainConfig(num_processes=2))


def test_a_launched_world_of_the_wrong_size_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv(distributed.LAUNCHED_ENV, "2")
    with pytest.raises(HarnessError, match="started 1 process"):
        distributed.adopt_world(TrainConfig(num_processes=2, output_dir="x"))


def test_several_processes_need_one_output_dir(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv(distributed.LAUNCHED_ENV, raising=False)
    with pytest.raises(HarnessError, match="needs --output-dir"):
        distributed.adopt_world(TrainConfig())
    cfg = TrainConfig(output_dir="run")  # launched from outside (srun): the world size is recorded
    distributed.adopt_world(cfg)
    assert cfg.num_processes == 2


def test_resume_keeps_the_rows_per_step(tmp_path):
    old = {"batch_size": 1, "grad_accum": 2, "num_processes": 2}  # the run's config.yaml
    distributed.check_resume(tmp_path, old, TrainConfig(resume=True, batch_size=2, grad_accum=2, num_processes=1))
    with pytest.raises(HarnessError, match="4 rows per optimizer step .* not 2"):
        distributed.check_resume(tmp_path, old, TrainConfig(resume=True, batch_size=1, grad_accum=2, num_processes=1))


def test_a_study_passes_processes_and_parallel_sizes_to_its_stages():
    from manyicl.harness.study import load_study, plan_stages

    stages = plan_stages(load_study(None, "paper-8gpu-fsdp", {"output_dir": "/tmp/unused"}))
    trains = [s for s in stages if s.kind == "train"]
    evals = [s for s in stages if s.kind == "eval"]
    assert trains and all(s.config["num_processes"] == 8 and s.config["accelerate_config"] == "fsdp" for s in trains)
    assert evals and all(s.config["data_parallel_size"] == 8 for s in evals)
    # each stage's settings file is what the child `harness train` reads, launch settings included
    assert TrainConfig(**trains[0].config).num_processes == 8


def test_one_summary_per_run(monkeypatch):
    monkeypatch.delenv(distributed.LAUNCHED_ENV, raising=False)
    monkeypatch.setenv("RANK", "1")
    assert not distributed.prints_summary()
    monkeypatch.setenv("RANK", "0")
    assert distributed.prints_summary()  # launched from outside (srun): rank 0 prints
    monkeypatch.setenv(distributed.LAUNCHED_ENV, "2")
    assert not distributed.prints_summary()  # the launching `harness train` prints instead
