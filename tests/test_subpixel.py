"""Sub-pixel training pieces: the pooling stem, label fractions in the loss,
majority-label shrinking and scoring on the label grid."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from blob_data import make_blob_export
from hemoseg.cli.main import main
from hemoseg.data.preprocessing import resize_mask
from hemoseg.evaluation.metrics import batch_confusion, confusion, to_onehot
from hemoseg.inference.predictor import Predictor
from hemoseg.models.attention_unet import build_model
from hemoseg.models.config import ModelConfig
from hemoseg.models.heads import channel_argmax
from hemoseg.training.checkpoint import load_checkpoint
from hemoseg.training.losses import SegmentationLoss, soft_targets


def test_stem_runs_the_network_on_a_coarser_grid():
    torch.manual_seed(0)
    m = build_model(ModelConfig(out_channels=3, width=4, depth=3, stem=2)).eval()
    assert m.stride == 8
    x = torch.randn(2, 1, 32, 32)
    assert m(x).shape == (2, 3, 16, 16)
    # The stem averages, it does not subsample: every input pixel counts.
    y = x.clone()
    y[0, 0, 10, 11] += 5
    assert not torch.allclose(m(x)[0], m(y)[0])


@pytest.mark.parametrize("weighted", [False, True])
def test_loss_on_labels_of_the_logit_grid_is_torch_cross_entropy_plus_dice(weighted):
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    w = torch.tensor([0.5, 1.0, 2.0]) if weighted else None
    ours = SegmentationLoss("multiclass", 2, w)(logits, labels)
    ce = F.cross_entropy(logits, labels, weight=w)
    probs = logits.softmax(1)[:, 1:]
    onehot = F.one_hot(labels, 3).permute(0, 3, 1, 2)[:, 1:].float()
    from hemoseg.training.losses import soft_dice_loss
    assert float(ours) == pytest.approx(float(ce + soft_dice_loss(probs, onehot)), rel=1e-5)


def test_finer_labels_become_class_fractions():
    fine = torch.zeros(1, 4, 4, dtype=torch.long)
    fine[0, 0, 0] = 1          # one pixel of the top-left 2x2 block
    fine[0, 2:, 2:] = 2        # the whole bottom-right block
    soft = soft_targets(fine, 3, (2, 2))
    assert soft[0, :, 0, 0].tolist() == [0.75, 0.25, 0.0]
    assert soft[0, :, 1, 1].tolist() == [0.0, 0.0, 1.0]
    assert torch.allclose(soft.sum(1), torch.ones(1, 2, 2))
    # A network that outputs exactly those fractions minimises the CE term, so it
    # beats one that rounds them to hard labels.
    loss = SegmentationLoss("multiclass", 2)
    exact = loss(soft.clamp_min(1e-6).log(), fine)
    rounded = loss(F.one_hot(soft.argmax(1), 3).permute(0, 3, 1, 2).float().clamp_min(1e-6).log(), fine)
    assert exact < rounded
    with pytest.raises(ValueError, match="integer multiple"):
        soft_targets(torch.zeros(1, 5, 5, dtype=torch.long), 3, (2, 2))
    # sigmoid heads take the same fractions
    sig = SegmentationLoss("binary", 1)(torch.zeros(1, 1, 2, 2), (fine > 0).float()[:, None])
    assert torch.isfinite(sig)


def test_shrinking_a_mask_takes_the_block_majority():
    blocks = np.zeros((8, 8), np.uint8)
    blocks[2:4, 2:6] = 5
    big = np.kron(blocks, np.ones((3, 3), np.uint8))  # 24 px, exact 3x3 blocks
    assert (resize_mask(big, 8) == blocks).all()
    q = np.zeros((4, 4), np.uint8)
    q[0, 0] = q[0, 1] = q[1, 0] = 1  # 3 of 4 pixels win; one of 4 does not
    q[3, 3] = 2
    assert resize_mask(q, 2).tolist() == [[1, 0], [0, 0]]
    # A 2-row line in the lower rows of a 3-row block survives; nearest neighbour
    # (the first row of each block) drops it.
    line = np.zeros((24, 24), np.uint8)
    line[4:6, :] = 1
    assert resize_mask(line, 8)[1].all() and resize_mask(line, 8).sum() == 8
    assert not line[::3, ::3].any()
    assert resize_mask(np.stack([q, q]), 2).shape == (2, 2, 2)


def test_channel_argmax_matches_torch_argmax_including_ties():
    torch.manual_seed(0)
    x = torch.randint(0, 3, (2, 5, 6, 7)).float()  # many ties
    assert torch.equal(channel_argmax(x), x.argmax(1))


def test_batch_confusion_matches_boolean_counts_and_scores_on_the_label_grid():
    torch.manual_seed(0)
    logits, labels = torch.randn(3, 4, 8, 8), torch.randint(0, 4, (3, 8, 8))
    ref = confusion(to_onehot(logits, "multiclass", 3), to_onehot(labels, "multiclass", 3))
    assert torch.equal(batch_confusion(logits, labels, "multiclass", 3), ref)
    # On a 2x finer label grid the prediction is upsampled, not the labels shrunk.
    fine = labels.repeat_interleave(2, 1).repeat_interleave(2, 2)
    perfect = F.one_hot(labels, 4).permute(0, 3, 1, 2).float() * 20
    c = batch_confusion(perfect, fine, "multiclass", 3)
    assert c[..., 0].sum() > 0
    # Constant blocks upsampled bilinearly only disagree at block borders, never on block centres.
    sig = batch_confusion(torch.randn(2, 2, 8, 8), (torch.rand(2, 2, 16, 16) > 0.5).float(), "multilabel", 2)
    assert sig.shape == (2, 2, 3) and int(sig.sum(-1).min()) > 0


def test_stem_training_end_to_end_predicts_full_resolution(tmp_path, one_thread):
    blobs = make_blob_export(tmp_path / "blobs")
    run = tmp_path / "run"
    assert main(["train", str(blobs), "--out", str(run), "--size", "64", "--stem", "2", "--width", "8",
                 "--epochs", "8", "--batch-size", "8", "--quiet"]) == 0
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert max(float(r["val_dice"]) for r in rows) > 0.75  # scored on the 64 px labels
    ckpt = load_checkpoint(run)
    assert ckpt.model_config.stem == 2
    img = np.full((64, 64, 1), 100, np.uint8)
    probs = Predictor.from_run(run, backend="torch").probabilities(ckpt.preprocessing.resize_image(img)[None])
    assert probs.shape[-2:] == (32, 32)
    assert main(["train", str(blobs), "--out", str(tmp_path / "bad"), "--size", "80", "--stem", "2", "--quiet"]) != 0


def test_a_run_saved_before_the_stem_existed_resumes_without_one(tmp_path, one_thread):
    """Old checkpoints carry no `stem` in their train config; the default preset now says 2."""
    from hemoseg.training.checkpoint import save_checkpoint

    blobs = make_blob_export(tmp_path / "blobs", n={"train": 8, "valid": 2, "test": 2})
    run = tmp_path / "run"
    args = ["--size", "64", "--width", "4", "--batch-size", "4", "--quiet"]
    assert main(["train", str(blobs), "--out", str(run), "--stem", "1", "--epochs", "1", *args]) == 0
    last = run / "last.safetensors"
    ckpt, extra = load_checkpoint(last, with_extra=True)
    meta = dict(ckpt.meta)
    meta["train_config"] = {k: v for k, v in meta["train_config"].items() if k != "stem"}
    save_checkpoint(last, ckpt.model_state, ckpt.model_config, ckpt.classes, ckpt.mode, ckpt.preprocessing,
                    meta, extra_tensors=extra)
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 0
    resumed = load_checkpoint(last)
    assert resumed.meta["epoch"] == 2 and resumed.model_config.stem == 1
    assert resumed.meta["train_config"]["stem"] == 1
