"""Guards on the seam with TRL: the SFTTrainer that train/trainer.py builds keeps our labels and row order, its
padding-free collator only masks sequence starts, and sequences side by side in one row do not see each other."""

from __future__ import annotations

import pytest
import torch

from manyicl.harness.settings import TrainConfig
from manyicl.tasks.registry import load_examples, load_task
from manyicl.train.sequences import IGNORE_INDEX, Renderer, pack_rows, pack_task

pytestmark = pytest.mark.integration


class _Stop(Exception):
    """Raised by the spy instead of training."""


def _spy_on_trainer(monkeypatch) -> dict:
    """Let train/trainer.py build its SFTTrainer as usual, then capture it (and the rows) instead of training."""
    import trl

    import manyicl.train.trainer as trainer_module

    seen: dict = {}
    real_build = trainer_module.build_training_data

    def build(*args, **kwargs):
        seen["data"] = real_build(*args, **kwargs)
        return seen["data"]

    class Spy(trl.SFTTrainer):
        def train(self, *args, **kwargs):
            seen["trainer"] = self
            seen["batches"] = list(self.get_train_dataloader())
            raise _Stop

    monkeypatch.setattr(trainer_module, "build_training_data", build)
    monkeypatch.setattr(trl, "SFTTrainer", Spy)
    return seen


@pytest.fixture(scope="module")
def spied(tiny_model, tiny_data, tmp_path_factory):
    """The trainer of a zero-shot run (short sequences, several per row) with two rows per micro-batch."""
    from manyicl.train.trainer import run_training

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        seen = _spy_on_trainer(mp)
        cfg = TrainConfig(method="zero-shot", model=str(tiny_model), tasks=["sst2", "rte"], data_dir=str(tiny_data),
                          # 256: two or three ~100-token sequences per row (the validation split changed
                          # which rows come first; at 160 they happened to need one row each)
                          max_seq_len=256, max_steps=3, batch_size=2, seed=3,
                          output_dir=str(tmp_path_factory.mktemp("guard") / "run"))
        with pytest.raises(_Stop):
            run_training(cfg)
    return seen


def test_trainer_keeps_our_labels_and_order(spied):
    rows = spied["data"].rows
    dataset = spied["trainer"].train_dataset
    assert len(rows) == 6 and len(dataset) == 6
    assert dataset["input_ids"] == [r.input_ids for r in rows]
    assert dataset["labels"] == [r.labels for r in rows]
    assert dataset["seq_lengths"] == [r.seq_lengths for r in rows]
    assert any(len(r.seq_lengths) > 1 for r in rows), "the check needs rows holding several sequences"


def test_collated_batches_equal_our_rows_except_sequence_starts(spied):
    rows = spied["data"].rows
    batches = spied["batches"]
    assert len(batches) == 3
    for i, batch in enumerate(batches):
        group = rows[2 * i: 2 * i + 2]  # sequential sampling: our order, two rows per micro-batch
        ids = [t for r in group for t in r.input_ids]
        labels = [t for r in group for t in r.labels]
        positions = [p for r in group for n in r.seq_lengths for p in range(n)]
        assert "attention_mask" not in batch, "padding-free batches carry position ids, not a mask"
        assert batch["input_ids"].tolist() == [ids]
        assert batch["position_ids"].tolist() == [positions]
        got = batch["labels"][0].tolist()
        for pos, (ours, theirs) in enumerate(zip(labels, got, strict=True)):
            if positions[pos] == 0:
                assert theirs == IGNORE_INDEX
                assert ours == IGNORE_INDEX, "we trained the first token of a sequence, which TRL drops"
            else:
                assert theirs == ours, f"batch {i} position {pos}: TRL changed a label"
        assert sum(t != IGNORE_INDEX for t in got) == sum(r.num_trained_tokens for r in group)


@pytest.mark.parametrize("trained", ["answers", "every token"])
def test_trainer_loss_of_a_packed_row_equals_the_sum_over_its_sequences(spied, trained):
    """With the trainer's own collator and compute_loss, in fp32 (outside the bf16 autocast of a training step).
    Training every token as well makes every position's prediction count, so a leak cannot hide."""
    trainer = spied["trainer"]
    model = trainer.model.float().eval()
    collate = trainer.data_collator
    row = next(r for r in spied["data"].rows if len(r.seq_lengths) >= 2)
    labels = row.labels if trained == "answers" else row.input_ids

    def summed_loss(examples):
        batch = {k: v.to(model.device) if torch.is_tensor(v) else v for k, v in collate(examples).items()}
        n = int((batch["labels"] != IGNORE_INDEX).sum())
        with torch.no_grad():
            return float(trainer.compute_loss(model, batch)) * n, n

    packed, n_packed = summed_loss([{"input_ids": row.input_ids, "labels": labels, "seq_lengths": row.seq_lengths}])
    separate, n_separate = 0.0, 0
    start = 0
    for length in row.seq_lengths:
        part = {"input_ids": row.input_ids[start:start + length], "labels": labels[start:start + length],
                "seq_lengths": [length]}
        loss, n = summed_loss([part])
        separate, n_separate = separate + loss, n_separate + n
        start += length
    expected_n = row.num_trained_tokens if trained == "answers" else row.num_tokens - len(row.seq_lengths)
    assert n_packed == n_separate == expected_n
    assert packed == pytest.approx(separate, rel=1e-6)


# --------------------------------------------------------------------------- the model alone, in fp32


def _token_losses(logits: torch.Tensor, labels: list[int]) -> torch.Tensor:
    target = torch.tensor(labels[1:])
    losses = torch.nn.functional.cross_entropy(logits[:-1].float(), target.clamp(min=0), reduction="none")
    return torch.where(target == IGNORE_INDEX, torch.zeros_like(losses), losses)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_sequences_side_by_side_do_not_leak(tiny_model, tiny_data, attn):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation=attn).eval()
    renderer = Renderer(tokenizer, "chat")
    packing = pack_task(load_examples(load_task("sst2"), tiny_data), renderer, "manyicl", 100, seed=0)
    row = next(r for r in pack_rows(packing.sequences, 300) if len(r.seq_lengths) >= 2)
    len_a, len_b = row.seq_lengths[:2]
    ids, labels = row.input_ids[:len_a + len_b], row.labels[:len_a + len_b]
    a_ids, b_ids = ids[:len_a], ids[len_a:]
    # Train every token so that every position's prediction is compared, not only the answers.
    collator = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)
    batch = collator([{"input_ids": ids, "labels": ids, "seq_lengths": [len_a, len_b]}])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        packed = model(**inputs, use_cache=False).logits[0]
        alone_a = model(input_ids=torch.tensor([a_ids]), use_cache=False).logits[0]
        alone_b = model(input_ids=torch.tensor([b_ids]), use_cache=False).logits[0]
        leaky = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]  # one long sequence: b sees a

    torch.testing.assert_close(packed[:len_a], alone_a, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed[len_a:], alone_b, atol=1e-5, rtol=1e-4)
    assert (leaky[len_a:] - alone_b).abs().max() > 1e-3, "the check must be able to see a leak"

    packed_labels = batch["labels"][0].tolist()
    summed_packed = _token_losses(packed, packed_labels).sum()
    summed_alone = _token_losses(alone_a, a_ids).sum() + _token_losses(alone_b, b_ids).sum()
    assert float(summed_packed) == pytest.approx(float(summed_alone), rel=1e-5)

    # and with our labels (answers only): the same sum, answer tokens only
    ours = _token_losses(packed, [lab if p != len_a else IGNORE_INDEX for p, lab in enumerate(labels)]).sum()
    ours_alone = _token_losses(alone_a, labels[:len_a]).sum() + _token_losses(alone_b, labels[len_a:]).sum()
    assert float(ours) == pytest.approx(float(ours_alone), rel=1e-5)
    assert float(ours) > 0


# --------------------------------------------------------------------------- the fused head on labelled positions


def test_cpu_fused_head_scores_only_labelled_positions_with_the_same_loss_and_gradients(spied, monkeypatch):
    """train/trainer.py makes TRL's fused LM head project only labelled positions on CPU (as TRL does on CUDA).
    The guard: TRL still has the switch, the head then sees only the labelled positions, and loss, gradients and
    the logged entropy and accuracy equal TRL's own all-positions path (fp32)."""
    import trl.trainer.utils as trl_utils

    from manyicl.train.trainer import fused_head_on_trained_positions_only

    assert fused_head_on_trained_positions_only(), "TRL no longer exposes `_use_triton` in trl.trainer.utils"
    trainer = spied["trainer"]
    model = trainer.model.float().train()
    row = next(r for r in spied["data"].rows if len(r.seq_lengths) >= 2)
    batch = trainer.data_collator([{"input_ids": row.input_ids, "labels": row.labels,
                                    "seq_lengths": row.seq_lengths}])
    real = trl_utils._ChunkedLogProbFunction
    projected: list[int] = []

    class Counting:
        @staticmethod
        def apply(hidden, *args):
            projected.append(hidden.shape[0])
            return real.apply(hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", Counting)

    def loss_grads_metrics():
        model.zero_grad(set_to_none=True)
        trainer._metrics["train"].clear()
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if k in ("entropy", "mean_token_accuracy")}
        return float(loss), grads, metrics

    compact = loss_grads_metrics()
    monkeypatch.setattr(trl_utils, "_use_triton", lambda device: False)  # TRL's own CPU behaviour
    every = loss_grads_metrics()
    n_labelled = int((batch["labels"][0, 1:] != IGNORE_INDEX).sum())
    assert projected == [n_labelled, len(row.input_ids) - 1] and n_labelled < len(row.input_ids) // 2
    assert compact[0] == pytest.approx(every[0], rel=1e-6)
    assert compact[1].keys() == every[1].keys() and compact[1]
    for name, grad in compact[1].items():
        torch.testing.assert_close(grad, every[1][name], atol=1e-6, rtol=1e-5)
    assert compact[2] == pytest.approx(every[2], rel=1e-6) and set(compact[2]) == {"entropy", "mean_token_accuracy"}
