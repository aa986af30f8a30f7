"""A study's plan before it runs: training seeds, learning-curve stages, and the dry run's arithmetic from the
throughput constants (hand-computed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from manyicl.harness.errors import HarnessError
from manyicl.harness.settings import StudyConfig
from manyicl.harness.study_estimate import dry_run_text, estimate_study, memory
from manyicl.harness.study_stages import plan_stages

THROUGHPUT = {"train_tokens_per_s": 100, "eval_documents_per_s": {"0": 10, "k": 5, "many": 2},
              "stage_start_s": {"train": 20, "eval": 10}, "peak_memory_gib": 3.0, "source": "made up for a test"}


def study(tmp_path: Path, **changes) -> StudyConfig:
    base = dict(name="t", tasks=["sst2", "rte"], heldout=["cb"], probes=["arc_easy"],
                arms=["base", "zero-shot", "manyicl"],
                train={"max_seq_len": 100, "max_steps": 10, "max_tokens": 800},
                eval={"shots": ["0", "4", "many"], "limit": 20, "seeds": 3}, output_dir=str(tmp_path / "s"),
                throughput=THROUGHPUT)
    return StudyConfig(**(base | changes))


def test_dry_run_arithmetic_by_hand(tmp_path):
    cfg = study(tmp_path)
    est = estimate_study(cfg, documents={"sst2": 20, "rte": 20, "cb": 10, "arc_easy": 20})
    by = {s.name: s for s in est.stages}
    # training: the smaller budget binds (800 tokens < 10 steps x 100), 800 / 100 tokens/s + 20 s start
    assert by["train:manyicl"].seconds == pytest.approx(28.0)
    # evaluation: sst2, rte, cb at 0 (one seed), 4 and many (3 seeds), arc_easy at 0; 10 s start
    docs = by["eval:manyicl"].documents
    assert docs == {"sst2 @0": 20, "sst2 @4": 60, "sst2 @many": 60, "rte @0": 20, "rte @4": 60, "rte @many": 60,
                    "cb @0": 10, "cb @4": 30, "cb @many": 30, "arc_easy @0": 20}
    assert by["eval:manyicl"].seconds == pytest.approx(10 + 50 / 10 + 150 / 5 + 150 / 2 + 20 / 10)
    assert by["eval:base"].seconds == by["eval:manyicl"].seconds
    assert est.seconds == pytest.approx(3 * 122.0 + 2 * 28.0)
    text = dry_run_text(cfg, est)
    assert "demonstration seeds: 3 for k > 0, 1 at 0 shots" in text and "made up for a test" in text
    assert "sst2 20, rte 20, cb 10, arc_easy 20" in text and "train:manyicl" in text
    assert not (tmp_path / "s").exists()  # a dry run writes nothing


def test_a_dedicated_run_trains_and_scores_once_per_task(tmp_path):
    cfg = study(tmp_path, arms=["dedicated"])
    est = estimate_study(cfg, documents={"sst2": 20, "rte": 20, "cb": 10, "arc_easy": 20})
    by = {s.name: s for s in est.stages}
    assert by["train:dedicated"].seconds == pytest.approx(2 * 28.0)
    assert by["eval:dedicated"].documents["arc_easy @0"] == 40  # every per-task model scores the probe
    assert "cb @0" not in by["eval:dedicated"].documents  # held-out tasks belong to the mixture's models


def test_missing_constants_are_one_sentence(tmp_path):
    with pytest.raises(HarnessError, match="no `throughput.train_tokens_per_s`"):
        estimate_study(study(tmp_path, throughput={"eval_documents_per_s": {"0": 1, "k": 1, "many": 1}}), {})
    with pytest.raises(HarnessError, match="`throughput.tokens` is unknown"):
        estimate_study(study(tmp_path, throughput=THROUGHPUT | {"tokens": 1}), {})


def test_memory_from_the_model_shape():
    cfg = StudyConfig(train={"max_seq_len": 1000, "lora_r": 8, "gradient_checkpointing": True},
                      throughput={"model_shape": {"params_b": 1.0, "layers": 10, "hidden": 100, "vocab": 1000,
                                                  "lora_params_m": 10}})
    gib, note = memory(cfg, cfg.throughput)
    expected = (2e9 + 10e6 * 16 + 10 * 1000 * 100 * 2 + 1000 * 100 * 34 + 1000 * 1000 * 4 * 3) / 1024**3 + 2
    assert gib == pytest.approx(expected) and note.startswith("computed")


def test_training_seeds_give_one_run_per_arm_and_seed(tmp_path):
    cfg = study(tmp_path, arms=["base", "manyicl"], train={"max_steps": 2, "seeds": [7, 8]})
    stages = plan_stages(cfg)
    assert [s.name for s in stages] == ["eval:base", "train:manyicl:seed7", "eval:manyicl:seed7",
                                        "train:manyicl:seed8", "eval:manyicl:seed8", "report"]
    assert stages[1].config["seed"] == 7 and "seeds" not in stages[1].config
    assert stages[1].config["output_dir"].endswith("runs/manyicl-seed7")
    assert stages[4].config["output_dir"].endswith("evals/manyicl-seed8")
    single = plan_stages(study(tmp_path, arms=["manyicl"], train={"max_steps": 2, "seeds": [7]}))
    assert [s.name for s in single] == ["train:manyicl", "eval:manyicl", "report"]
    with pytest.raises(HarnessError, match="distinct integers"):
        plan_stages(study(tmp_path, arms=["manyicl"], train={"max_steps": 2, "seeds": [7, 7]}))


def test_curve_points_add_one_evaluation_each_outside_evals(tmp_path):
    cfg = study(tmp_path, arms=["manyicl", "dedicated"], train={"max_steps": 4, "curve_points": [0.5, 1.0]},
                curve_eval={"limit": 5})
    stages = {s.name: s for s in plan_stages(cfg)}
    half, full = stages["curve:manyicl@0.5"], stages["curve:manyicl@1"]
    assert half.needs == ["train:manyicl"]
    assert half.config["model"].endswith("runs/manyicl/curve/0.5") and full.config["model"].endswith("runs/manyicl")
    assert half.config["output_dir"].endswith("curves/manyicl@0.5")
    assert half.config["shots"] == ["many"] and half.config["seeds"] == 1 and half.config["limit"] == 5
    assert half.config["probes"] is False and half.config["heldout"] == [] and half.config["method"] == "manyicl@0.5"
    assert not any(name.startswith("curve:dedicated") for name in stages)


def test_zero_shots_need_one_demonstration_seed():
    from manyicl.harness.evaluate import demonstration_seeds
    from manyicl.harness.settings import EvalConfig

    cfg = EvalConfig(seeds=3, seed=10)
    assert demonstration_seeds(cfg, "0") == [10]
    assert demonstration_seeds(cfg, "4") == demonstration_seeds(cfg, "many") == [10, 11, 12]


LORA_VLLM = dict(train={"max_steps": 4, "lora_r": 8, "lora_merge": False}, eval={"backend": "vllm", "limit": 20})


def test_lora_arms_share_one_server_stage(tmp_path):
    cfg = study(tmp_path, arms=["base", "zero-shot", "manyicl", "dedicated"], **LORA_VLLM)
    stages = {s.name: s for s in plan_stages(cfg)}
    assert "eval:zero-shot" not in stages and "eval:manyicl" not in stages
    shared = stages["eval:adapters"]
    assert shared.needs == ["train:zero-shot", "train:manyicl"]
    assert shared.config["model"].split(",") == [str(tmp_path / "s" / "runs" / a) for a in ("zero-shot", "manyicl")]
    assert shared.config["output_dir"] == str(tmp_path / "s" / "evals")  # each arm into evals/<arm>/, as alone
    assert "eval:base" in stages and "eval:dedicated" in stages  # full weights / one model per task: their own
    # the dry run: both arms' documents, one server start
    est = {s.name: s for s in estimate_study(cfg, documents={"sst2": 20, "rte": 20, "cb": 10, "arc_easy": 20}).stages}
    assert est["eval:adapters"].documents["sst2 @0"] == 2 * 20
    assert est["eval:adapters"].seconds == pytest.approx(10 + 2 * (est["eval:base"].seconds - 10))


def test_shared_server_only_where_arms_can_share_one(tmp_path):
    names = lambda cfg: [s.name for s in plan_stages(cfg)]  # noqa: E731
    merged = dict(LORA_VLLM, train=LORA_VLLM["train"] | {"lora_merge": True})
    assert "eval:adapters" not in names(study(tmp_path, **merged))
    assert "eval:adapters" not in names(study(tmp_path, **LORA_VLLM, shared_server=False))
    assert "eval:adapters" not in names(study(tmp_path, train=LORA_VLLM["train"], eval={"backend": "prefix"}))
    with pytest.raises(HarnessError, match="shared_server: true, but eval.backend is not vllm"):
        plan_stages(study(tmp_path, train=LORA_VLLM["train"], shared_server=True))
    with pytest.raises(HarnessError, match="shared_server: true, but the adapters are merged"):
        plan_stages(study(tmp_path, **merged, shared_server=True))
    with pytest.raises(HarnessError, match="fewer than two arms are adapters"):
        plan_stages(study(tmp_path, **LORA_VLLM, arms=["base", "manyicl"], shared_server=True))


def test_a_failed_arm_leaves_the_shared_stage_to_the_others(tmp_path):
    from manyicl.harness.study_stages import without_failed_arms

    cfg = study(tmp_path, arms=["zero-shot", "few-shot", "manyicl"], **LORA_VLLM)
    shared = {s.name: s for s in plan_stages(cfg)}["eval:adapters"]
    runs = tmp_path / "s" / "runs"
    two = without_failed_arms(shared, ["train:few-shot"])
    assert two.needs == ["train:zero-shot", "train:manyicl"]
    assert two.config["model"] == f"{runs / 'zero-shot'},{runs / 'manyicl'}"
    assert two.config["output_dir"] == shared.config["output_dir"] and two.config != shared.config  # rerun redoes it
    one = without_failed_arms(shared, ["train:few-shot", "train:zero-shot"])
    # one arm is scored alone, into the folder it has on the shared server
    assert one.config["model"] == str(runs / "manyicl") and one.config["output_dir"].endswith("evals/manyicl")


def test_steps_count_the_rows_of_every_process(tmp_path):
    # 10 steps x 1 row x 4 processes x 100 tokens: 4,000 tokens, as the trainer takes them (the step budget binds)
    cfg = study(tmp_path, train={"max_seq_len": 100, "max_steps": 10, "max_tokens": 8000, "num_processes": 4})
    est = {s.name: s for s in estimate_study(cfg, documents={"sst2": 20, "rte": 20, "cb": 10, "arc_easy": 20}).stages}
    assert est["train:manyicl"].seconds == pytest.approx(20 + 4000 / 100)


def test_training_seeds_score_disjoint_shares_of_the_draw_blocks(tmp_path):
    cfg = study(tmp_path, arms=["base", "zero-shot", "manyicl"], train={"max_steps": 2, "seeds": [7, 8, 9]},
                eval={"shots": ["0", "many"], "limit": 20, "draws": 6})
    evals = {s.name: s.config for s in plan_stages(cfg) if s.kind == "eval"}
    assert evals["eval:base"]["draws"] == 6 and "draw_share" not in evals["eval:base"]  # the base scores all
    assert [evals[f"eval:manyicl:seed{s}"]["draw_share"] for s in (7, 8, 9)] == ["1/3", "2/3", "3/3"]
    assert [evals[f"eval:zero-shot:seed{s}"]["draw_share"] for s in (7, 8, 9)] == ["1/3", "2/3", "3/3"]
    assert plan_stages(study(tmp_path))[0].config["draws"] == 16  # a study's default
    with pytest.raises(HarnessError, match="set eval.draws to at least the seeds"):
        plan_stages(study(tmp_path, train={"max_steps": 2, "seeds": [1, 2, 3]}, eval={"draws": 2}))
    # each seed's stage scores a third of the documents
    est = estimate_study(cfg, documents={"sst2": 18, "rte": 18, "cb": 9, "arc_easy": 18})
    stage = next(s for s in est.stages if s.name == "eval:manyicl:seed8")
    assert stage.documents["sst2 @many"] == 6 and stage.documents["arc_easy @0"] == 6


def test_dry_run_states_the_variance_components_and_the_power(tmp_path):
    planned = {"per_document": 0.3, "per_draw": 0.002, "per_seed": 0.001, "effect": 8, "source": "a pilot"}
    cfg = study(tmp_path, train={"max_steps": 2, "seeds": [1, 2, 3, 4]}, eval={"shots": ["0", "many"], "draws": 8},
                planned_variance=planned)
    text = dry_run_text(cfg, estimate_study(cfg, documents={"sst2": 200, "rte": 200, "cb": 10, "arc_easy": 20}))
    # SE^2 = 0.3 / 400 + 0.002 / 16 + 0.001 / 4 = 0.001125: SE 3.354 points. Documents and draws: 16 blocks in
    # 2 tasks x 4 seeds = 8 strata, 8 degrees of freedom; the seed term is read from 4 seed estimates (3), so
    # Satterthwaite: 0.001125^2 / (2 x 0.000875^2 / 8 + 0.001125^2 / 3) = 2.06; t(0.975, 2.06) = 4.17: ±14.0, and
    # an 8-point effect has about 4% power
    assert "document 0.3000, draw 0.0020, training seed 0.0010" in text and "(a pilot)" in text
    assert "standard error 3.35 points, about 2 degrees of freedom, 95% half-width about ±14.0" in text
    assert "power 4% for a 8-point effect (80% wanted)" in text
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "variance.json").write_text('{"per_document": 0.2, "per_draw": 0.0, "per_seed": 0.0}')
    again = dry_run_text(cfg, estimate_study(cfg, documents={"sst2": 200, "rte": 200, "cb": 10, "arc_easy": 20}))
    # without a seed variance the documents' and draws' 8 degrees of freedom stand: t = 2.31, SE 2.24 -> ±5.2
    assert "measured by the last study" in again and "standard error 2.24 points, about 8 degrees" in again
    assert "half-width about ±5.2" in again
