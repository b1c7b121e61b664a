"""The weight average: what it averages, and that a run using it resumes exactly."""

from __future__ import annotations

import torch

from hemoseg.cli.main import main
from hemoseg.models.attention_unet import build_model
from hemoseg.models.config import ModelConfig
from hemoseg.training.checkpoint import load_checkpoint
from hemoseg.training.weight_average import WeightAverage
from test_resume import make_coco, read_history


def test_average_follows_weights_and_batchnorm_statistics():
    torch.manual_seed(0)
    model = build_model(ModelConfig(out_channels=2, width=4, depth=2))
    avg = WeightAverage(model, decay=0.5)
    start = {k: v.clone() for k, v in avg.model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.train()(torch.randn(2, 1, 16, 16))  # moves BN running stats and its batch counter
    avg.update()  # first update: decay min(0.5, 2/11)
    w = 1 - 2 / 11
    for name, v in avg.model.state_dict().items():
        now = model.state_dict()[name]
        if v.is_floating_point():
            torch.testing.assert_close(v, start[name] + w * (now - start[name]))
        else:
            assert torch.equal(v, now)
    assert not any(p.requires_grad for p in avg.model.parameters())
    assert model.encoders[0][0].weight.requires_grad  # the trained model is untouched


def test_run_with_weight_average_resumes_exactly(tmp_path, one_thread):
    data = make_coco(tmp_path / "data", n_train=8, n_valid=4)
    # The paper preset: its constant LR makes 2 epochs resumed to 3 the same computation as 3.
    args = ["--preset", "paper", "--size", "64", "--width", "4", "--batch-size", "4", "--ema", "0.9",
            "--workers", "0", "--quiet"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["train", str(data), "--out", str(straight), "--epochs", "3", *args]) == 0
    assert main(["train", str(data), "--out", str(resumed), "--epochs", "2", *args]) == 0
    assert main(["train", "--resume", str(resumed), "--epochs", "3", "--quiet"]) == 0
    a, b = read_history(straight), read_history(resumed)
    for ra, rb in zip(a, b):
        for key in ("train_loss", "val_loss", "val_dice"):
            assert float(ra[key]) == float(rb[key]) or abs(float(ra[key]) - float(rb[key])) < 1e-6, key
    sa, sb = load_checkpoint(straight / "last.safetensors"), load_checkpoint(resumed / "last.safetensors")
    assert sa.meta["ema_updates"] == sb.meta["ema_updates"] == 3 * 2
    for k, v in sa.model_state.items():
        torch.testing.assert_close(v, sb.model_state[k], rtol=1e-6, atol=1e-7)
    # The saved weights are the average, not the trained ones.
    _, extra = load_checkpoint(straight / "last.safetensors", with_extra=True)
    raw = extra["raw.head.weight"]
    assert not torch.equal(raw, sa.model_state["head.weight"])
