"""The forward pass never reads the device back (issue 17): no ``.item()``, ``.tolist()``,
``bool()``, ``.nonzero()``, boolean-mask indexing or ``.cpu()`` on a device tensor in the model,
its layout or the task heads. On the CPU this runs the model on the ``meta`` device, whose
tensors hold no data: any such read raises there, exactly where it would stall a GPU. With
CUDA, the same pass runs under ``torch.cuda.set_sync_debug_mode("error")``."""
from __future__ import annotations

import pytest
import torch

from memotrain.config import preset
from memotrain.data import HOST_KEYS, to_device
from memotrain.model import MemoBert
from memotrain.tasks import TASKS, Pretrainer
from test_joint import TINY_CNN, WIDTH, crops_batch
from test_tasks import MASK_ID, SPEECH, V_RANGE, gen, make_batch

pytestmark = pytest.mark.usefixtures("one_thread")
JOINT_TASKS = ("mlm", "vnce", "itm")


@pytest.fixture
def meta_autocast(monkeypatch):
    """torch.autocast knows no ``meta`` device: the vnce task's fp32 block runs under the CPU's
    (disabled) autocast there; nothing else changes."""
    real = torch.autocast
    monkeypatch.setattr(torch, "autocast", lambda device_type, **kw: real(
        "cpu" if device_type == "meta" else device_type, **kw))


def text_faces_speech(seed=0):
    torch.manual_seed(seed)
    return Pretrainer(MemoBert(preset("tiny", speech_dim=SPEECH)), list(TASKS), MASK_ID, V_RANGE)


def joint(frozen):
    torch.manual_seed(0)
    model = MemoBert(preset("tiny", face_backbone=TINY_CNN, face_dim=WIDTH))
    model.face_cnn.set_frozen_blocks(frozen)
    return Pretrainer(model, list(JOINT_TASKS), MASK_ID, V_RANGE)


def joint_batch():
    b = crops_batch((5, 2, 0, 3))
    b["word_ids"] = torch.arange(6).expand(4, 6).clone()
    return b


def test_meta_tensors_refuse_every_read_back():
    """The premise: each way of reading a device tensor back fails on ``meta``."""
    x, m = torch.zeros(3, device="meta"), torch.ones(3, dtype=torch.bool, device="meta")
    for read in (lambda: x[0].item(), lambda: x.tolist(), lambda: bool(m.all()),
                 lambda: int(x[0]), lambda: x[m], lambda: m.nonzero(), lambda: x.cpu(),
                 lambda: torch.where(m), lambda: x.max().item()):
        with pytest.raises((RuntimeError, NotImplementedError)):
            read()


@pytest.mark.parametrize("task", TASKS)
def test_task_forward_reads_nothing_back(task, meta_autocast):
    pre = text_faces_speech().train()
    ref = pre(task, make_batch(), gen(3))  # the same pass on the CPU, for the shapes
    out = pre.to("meta")(task, make_batch(), gen(3))  # a host batch, as the loader gives
    assert out.loss.device.type == "meta" and out.loss.shape == ()
    assert out.n_targets == ref.n_targets and set(out.values) == set(ref.values)
    out.loss.backward()  # the backward pass does not read back either


@pytest.mark.parametrize("frozen", [0, 2])
@pytest.mark.parametrize("task", JOINT_TASKS)
def test_joint_forward_reads_nothing_back(task, frozen, meta_autocast):
    pre = joint(frozen).train().to("meta")
    out = pre(task, joint_batch(), gen(1))
    assert out.loss.device.type == "meta" and out.n_targets > 0
    out.loss.backward()


def test_model_forward_with_host_lengths_reads_nothing_back():
    torch.manual_seed(0)
    model = MemoBert(preset("tiny", speech_dim=SPEECH)).eval()
    b = make_batch()
    cpu = model(b["input_ids"], b["text_lens"], b["faces"], b["face_lens"], None,
                b["speech"], b["speech_lens"])
    dev = to_device(b, "meta")
    assert all(dev[k].device.type == "cpu" for k in HOST_KEYS)  # lengths stay on the host
    out = model.to("meta")(dev["input_ids"], dev["text_lens"], dev["faces"], dev["face_lens"],
                           None, dev["speech"], dev["speech_lens"])
    assert out.hidden.device.type == "meta" and out.hidden.shape == cpu.hidden.shape
    assert out.layout.full is False and out.layout.host_lens["faces"] == [2, 6, 0, 4]
    assert out.layout.index.device.type == "meta"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("task", TASKS)
def test_cuda_forward_and_loss_do_not_synchronise(task):
    pre = text_faces_speech().train().cuda()
    pre(task, make_batch(), gen(2)).loss.backward()  # warm-up: lazy CUDA initialisations
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = pre(task, make_batch(), gen(2))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.loss.device.type == "cuda" and torch.isfinite(out.loss)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("frozen", [0, 2])
def test_cuda_joint_forward_does_not_synchronise(frozen):
    pre = joint(frozen).train().cuda()
    for task in JOINT_TASKS:
        pre(task, joint_batch(), gen(2)).loss.backward()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = pre(task, joint_batch(), gen(2))
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert torch.isfinite(out.loss)
