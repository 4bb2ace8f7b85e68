"""Checkpoint reading/writing: every format round-trips into a real model; bad files fail clearly."""

from __future__ import annotations

import builtins
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from compressor.errors import CheckpointError
from compressor.loading import load_model
from compressor.models import ModelSpec, build_model
from compressor.weight_files import (
    find_classifier,
    load_weights,
    load_weights_file,
    read_checkpoint,
    read_safetensors_metadata,
    save_weights,
    strip_prefixes,
)


def _cnn() -> nn.Module:
    return build_model(ModelSpec("cnn", 10, (1, 8, 8))).eval()


def _trained_like(model: nn.Module) -> nn.Module:
    """Give BatchNorm non-default running stats so that buffers are checked too."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(7)
    return model.eval()


def _same_outputs(a: nn.Module, b: nn.Module, shape: tuple[int, ...]) -> bool:
    x = torch.randn(4, *shape)
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


# ---------------------------------------------------------------------------------------- formats

def _write(fmt: str, sd: dict, path: Path) -> Path:
    optimizer = {"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    if fmt == "plain":
        torch.save(sd, path)
    elif fmt == "state_dict":
        torch.save({"state_dict": sd, "epoch": 3, "rng_state": torch.get_rng_state(), "scale": torch.tensor(2.0)}, path)
    elif fmt == "model":
        torch.save({"model": sd, "optimizer": optimizer}, path)
    elif fmt == "model_state_dict":
        torch.save({"epoch": 9, "model_state_dict": sd, "optimizer_state_dict": optimizer, "loss": 0.5}, path)
    elif fmt == "ddp":
        torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    elif fmt == "compile":
        torch.save({f"_orig_mod.{k}": v for k, v in sd.items()}, path)
    elif fmt == "ddp+compile":
        torch.save({f"module._orig_mod.{k}": v for k, v in sd.items()}, path)
    elif fmt == "legacy":
        torch.save(sd, path, _use_new_zipfile_serialization=False)
    elif fmt == "numpy-extras":
        torch.save({"state_dict": sd, "best_acc": np.float64(0.91), "dtype": np.dtype("float32")}, path)
    elif fmt == "safetensors":
        path = path.with_suffix(".safetensors")
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    elif fmt == "safetensors-other-suffix":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path.with_suffix(".bin")))
        path = path.with_suffix(".bin")
    else:  # pragma: no cover
        raise AssertionError(fmt)
    return path


FORMATS = ["plain", "state_dict", "model", "model_state_dict", "ddp", "compile", "ddp+compile", "legacy",
           "numpy-extras", "safetensors", "safetensors-other-suffix"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_round_trips_into_the_small_cnn(fmt: str, tmp_path: Path) -> None:
    source = _trained_like(_cnn())
    path = _write(fmt, source.state_dict(), tmp_path / "ckpt.pt")
    sd = read_checkpoint(path)
    assert set(sd) == set(source.state_dict())
    assert all(torch.equal(sd[k], v) for k, v in source.state_dict().items())
    torch.manual_seed(123)  # a different fresh init: only loading can make the outputs equal
    loaded = load_model("cnn", path)
    assert not loaded.training
    assert _same_outputs(source, loaded, (1, 8, 8))


def test_torchvision_resnet18_round_trip_plain_and_ddp(tmp_path: Path) -> None:
    source = _trained_like(torchvision.models.resnet18(num_classes=10))
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "r.pth")
    loaded = load_model("resnet18", tmp_path / "r.pth", input_size=32)
    assert loaded.demp_spec.num_classes == 10
    assert _same_outputs(source, loaded, (3, 32, 32))


def test_prefix_is_stripped_only_when_every_key_has_it() -> None:
    t = torch.zeros(1)
    assert strip_prefixes({"module.a": t, "module.b": t}) == {"a": t, "b": t}
    # a model that really has a submodule called "module" keeps its names
    assert set(strip_prefixes({"module.a": t, "head.b": t})) == {"module.a", "head.b"}


def test_missing_num_batches_tracked_is_tolerated(tmp_path: Path) -> None:
    source = _trained_like(_cnn())
    sd = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "old.pt")
    assert _same_outputs(source, load_model("cnn", tmp_path / "old.pt"), (1, 8, 8))


# ---------------------------------------------------------------------------------------- pickle policy

class _Payload:
    """Unpickling this runs ``exec`` that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_malicious_pickle_is_refused_without_executing_it(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": _Payload(marker)}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="--trust-pickle") as info:
        read_checkpoint(path)
    assert "exec" in str(info.value)
    assert not marker.exists(), "read_checkpoint executed code from the checkpoint"
    with pytest.raises(CheckpointError, match="--trust-pickle"):
        load_model("cnn", path)
    assert not marker.exists()
    # Control: the payload is real — an unrestricted unpickler does run it.
    control = tmp_path / "control.pt"
    shutil.copy(path, control)
    torch.load(control, weights_only=False)
    assert marker.read_text() == "pwned"


def test_whole_pickled_module_needs_trust_pickle(tmp_path: Path) -> None:
    source = _trained_like(torchvision.models.resnet18(num_classes=10))
    path = tmp_path / "whole.pt"
    torch.save(source, path)
    with pytest.raises(CheckpointError, match="whole pickled model.*--trust-pickle") as info:
        read_checkpoint(path)
    assert "torchvision.models.resnet.ResNet" in str(info.value)
    sd = read_checkpoint(path, trust_pickle=True)
    assert all(torch.equal(sd[k], v) for k, v in source.state_dict().items())
    loaded = load_model("resnet18", path, input_size=32, trust_pickle=True)
    assert _same_outputs(source, loaded, (3, 32, 32))


def test_pickled_module_nested_under_model_key_with_trust(tmp_path: Path) -> None:
    source = _trained_like(_cnn())
    torch.save({"model": source, "epoch": 1}, tmp_path / "nested.pt")
    with pytest.raises(CheckpointError, match="--trust-pickle"):
        read_checkpoint(tmp_path / "nested.pt")
    assert _same_outputs(source, load_model("cnn", tmp_path / "nested.pt", trust_pickle=True), (1, 8, 8))


# ---------------------------------------------------------------------------------------- bad files

def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pt")


def test_directory_without_plan(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="directory without plan.json"):
        read_checkpoint(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        read_checkpoint(tmp_path / "empty.pt")


def test_truncated_checkpoint(tmp_path: Path) -> None:
    torch.save(_cnn().state_dict(), tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError,
                       match="cut.pt is truncated or corrupt: it starts like a PyTorch checkpoint") as info:
        read_checkpoint(tmp_path / "cut.pt")
    assert "weights_only" not in str(info.value) and "miniz" not in str(info.value)  # none of PyTorch's cut-off text


def test_truncated_safetensors(tmp_path: Path) -> None:
    save_weights(_cnn().state_dict(), tmp_path / "w.safetensors")
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "w.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(tmp_path / "w.safetensors")


@pytest.mark.parametrize("content", [b"hello world\nthis is not a checkpoint\n", np.random.default_rng(0).bytes(4096),
                                     __import__("pickle").dumps({"weights": [1.0, 2.0]})],
                         ids=["text", "random-bytes", "a-plain-pickle"])
def test_garbage_files(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "junk.pt").write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(tmp_path / "junk.pt")
    assert str(info.value) == (f"{tmp_path / 'junk.pt'} is not a checkpoint: expected a PyTorch checkpoint (a file "
                               "written by torch.save) or a .safetensors file")


def test_both_formats_of_torch_save_are_checkpoints(tmp_path: Path) -> None:
    state = _cnn().state_dict()
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)  # PyTorch < 1.6's format
    torch.save(state, tmp_path / "zip.pt")
    for name in ("legacy.pt", "zip.pt"):
        assert read_checkpoint(tmp_path / name).keys() == state.keys()


def test_empty_dict_and_dict_without_weights(tmp_path: Path) -> None:
    torch.save({}, tmp_path / "empty_dict.pt")
    with pytest.raises(CheckpointError, match="empty dict"):
        read_checkpoint(tmp_path / "empty_dict.pt")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pt")
    with pytest.raises(CheckpointError, match="no state dict.*'epoch'"):
        read_checkpoint(tmp_path / "meta.pt")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list"):
        read_checkpoint(tmp_path / "list.pt")


# ---------------------------------------------------------------------------------------- load_weights

def test_wrong_architecture_names_keys(tmp_path: Path) -> None:
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "r18.pt")
    with pytest.raises(CheckpointError) as info:
        load_model("cnn", tmp_path / "r18.pt", num_classes=10)
    message = str(info.value)
    assert "missing key(s): features.0.weight" in message
    assert "unexpected key(s): conv1.weight" in message
    assert "--arch" in message


def test_shape_mismatch_is_reported() -> None:
    model = build_model(ModelSpec("cnn", 10, (1, 8, 8), {"channels": [8, 16]}))
    other = build_model(ModelSpec("cnn", 10, (1, 8, 8), {"channels": [8, 32]}))
    with pytest.raises(CheckpointError,
                       match=r"shape mismatch.*features\.4\.weight checkpoint \[32, 8, 3, 3\] "
                             r"vs model \[16, 8, 3, 3\]"):
        load_weights(model, other.state_dict())


def test_classifier_mismatch_suggests_num_classes(tmp_path: Path) -> None:
    seven = build_model(ModelSpec("resnet18-cifar", 7, (3, 32, 32)))
    model = build_model(ModelSpec("resnet18-cifar", 10, (3, 32, 32)))
    with pytest.raises(CheckpointError, match="--num-classes 7"):
        load_weights(model, seven.state_dict())


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tmp_path: Path, bad: float) -> None:
    sd = _cnn().state_dict()
    sd["features.1.weight"][3] = bad
    torch.save(sd, tmp_path / "diverged.pt")
    with pytest.raises(CheckpointError, match=r"NaN or Inf.*features\.1\.weight"):
        load_model("cnn", tmp_path / "diverged.pt")


def test_find_classifier_linear_and_squeezenet_conv() -> None:
    assert find_classifier(torchvision.models.resnet18(num_classes=3))[0] == "fc"
    assert find_classifier(torchvision.models.squeezenet1_1(num_classes=3))[0] == "classifier.1"


# ---------------------------------------------------------------------------------------- saving

def test_save_weights_handles_shared_and_noncontiguous_tensors(tmp_path: Path) -> None:
    base = torch.randn(4, 6)
    sd = {"tied.a": base, "tied.b": base, "transposed": base.t(), "slice": base[1:3], "bias": torch.randn(4)}
    out = save_weights(sd, tmp_path / "w.safetensors", metadata={"arch": "test", "epoch": 3})
    loaded = load_weights_file(out)
    assert set(loaded) == set(sd)
    assert all(torch.equal(loaded[k], v) for k, v in sd.items())
    assert read_safetensors_metadata(out) == {"arch": "test", "epoch": "3"}
    # the saved file is a checkpoint too
    assert torch.equal(read_checkpoint(out)["transposed"], base.t())


def test_save_weights_is_atomic_and_replaces(tmp_path: Path) -> None:
    model = _trained_like(_cnn())
    path = tmp_path / "w.safetensors"
    save_weights({"x": torch.zeros(3)}, path)
    save_weights(model.state_dict(), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]  # no temp files left
    assert _same_outputs(model, load_model("cnn", path), (1, 8, 8))
    with pytest.raises(TypeError):
        save_weights({"x": torch.zeros(1), "y": 3}, path)
    assert _same_outputs(model, load_model("cnn", path), (1, 8, 8))  # old file intact


def test_load_weights_file_missing(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights_file(tmp_path / "missing.safetensors")
