"""One device resolver for the pipeline and the trainer (clipsam.precision.resolve_device)."""

from __future__ import annotations

import torch

from clipsam.precision import resolve_device


def test_auto_is_cuda_when_present_else_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_other_names_and_devices_pass_through():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    device = torch.device("cpu")
    assert resolve_device(device) is device
