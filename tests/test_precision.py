"""bf16 vs fp32 is decided by hardware and, on a bf16-capable CPU, by timing."""

import torch

from hemoseg.models.attention_unet import build_model
from hemoseg.models.config import ModelConfig
from hemoseg.training import precision


def _tiny():
    return build_model(ModelConfig(out_channels=3, width=4, depth=3, deep_supervision=1))


def test_probe_leaves_weights_and_batchnorm_statistics_alone():
    model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fp32, bf16 = precision.step_seconds(model, torch.randn(2, 1, 32, 32), rounds=1)
    assert fp32 > 0 and bf16 > 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_faster_precision_wins_on_a_bf16_cpu(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    x = torch.randn(2, 1, 32, 32)
    for times, want in (((0.5, 0.7), False), ((0.7, 0.5), True), ((0.5, 0.47), False)):
        monkeypatch.setattr(precision, "step_seconds", lambda m, x, t=times: t)
        use, why = precision.choose_bf16(_tiny(), x, allowed=True)
        assert use is want
        assert f"fp32 {times[0] * 1000:.0f} ms, bf16 {times[1] * 1000:.0f} ms" in why


def test_no_probe_when_bf16_is_off_or_emulated(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("probe should not run")

    monkeypatch.setattr(precision, "step_seconds", boom)
    x = torch.randn(2, 1, 32, 32)
    assert precision.choose_bf16(_tiny(), x, allowed=False) == (False, "fp32 (--fp32)")
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    use, why = precision.choose_bf16(_tiny(), x, allowed=True)
    assert not use and "no native bf16" in why


def test_a_resumed_run_keeps_its_precision_without_a_second_stopwatch(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("probe should not run on resume")

    monkeypatch.setattr(precision, "step_seconds", boom)
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    x = torch.randn(2, 1, 32, 32)
    for previous in ("bf16", "fp32"):
        use, why = precision.choose_bf16(_tiny(), x, allowed=True, previous=previous)
        assert use is (previous == "bf16") and "as before the interruption" in why
    # a device without bf16 units cannot keep it, and --fp32 still wins
    assert precision.choose_bf16(_tiny(), x, allowed=False, previous="bf16")[0] is False
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert precision.choose_bf16(_tiny(), x, allowed=True, previous="bf16")[0] is False


def test_gpus_before_ampere_train_in_fp32(monkeypatch):
    monkeypatch.setattr(torch.version, "hip", None)
    for major, want in ((7, False), (8, True), (9, True)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None, m=major: (m, 0))
        assert precision.native_bf16(torch.device("cuda")) is want
