"""The published CIFAR-10 ResNets (akamaster/pytorch_resnet_cifar10, option-A shortcuts) load by ``--arch``
with the normalization their weights expect, on the real shared data (../shared/data, see its README.md).

The CIFAR-10 JPEGs are the stratified subset unpacked once per session (``cifar_subset_root``, conftest):
1,000 test images and 5,000 training images, never written beside the shared data.
"""

from __future__ import annotations

import copy
import json
import logging
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import compressor
from compressor.cli import main
from compressor.data import IMAGENET_MEAN, IMAGENET_STD, load_data
from compressor.data.sources import parse_normalize
from compressor.errors import UsageError
from compressor.graph import DependencyAnalyzer
from compressor.graph.tp_compat import channel_padding
from compressor.models import build_model, data_normalization, make_spec

#: The published files and the paper's parameter counts at 10 classes (0.27 M / 0.85 M).
CHECKPOINTS = {20: ("akamaster-resnet20-12fca82f.th", 269_722), 56: ("akamaster-resnet56-4bfd9763.th", 853_018)}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _weights(shared_data: Path, depth: int) -> Path:
    return shared_data / "weights" / CHECKPOINTS[depth][0]


def _raw_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The file as published, read without demp: a legacy zip with CUDA storages, 'module.'-prefixed keys."""
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    assert all(k.startswith("module.") for k in state)
    return {k[len("module."):]: v for k, v in state.items()}


def _reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, blocks: int) -> torch.Tensor:
    """akamaster's ResNet forward written out with functional ops on the raw state dict (eval mode)."""
    def bn(t, p):
        return F.batch_norm(t, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"])

    out = F.relu(bn(F.conv2d(x, sd["conv1.weight"], padding=1), "bn1"))
    for stage, planes in enumerate((16, 32, 64), 1):
        for b in range(blocks):
            p, stride = f"layer{stage}.{b}", 2 if stage > 1 and b == 0 else 1
            h = F.relu(bn(F.conv2d(out, sd[f"{p}.conv1.weight"], stride=stride, padding=1), f"{p}.bn1"))
            h = bn(F.conv2d(h, sd[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
            short = out if stride == 1 else F.pad(out[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))
            out = F.relu(h + short)
    out = F.avg_pool2d(out, out.size()[3]).view(out.size(0), -1)
    return F.linear(out, sd["linear.weight"], sd["linear.bias"])


# ---------------------------------------------------------------------------------------- loading

@pytest.mark.parametrize("depth", [20, 56])
def test_the_published_checkpoints_load_strictly_with_the_papers_parameter_counts(shared_data: Path,
                                                                                  depth: int) -> None:
    path = _weights(shared_data, depth)
    model = compressor.load_model(f"resnet{depth}-cifar-a", checkpoint=path)
    assert sum(p.numel() for p in model.parameters()) == CHECKPOINTS[depth][1]
    raw = _raw_state_dict(path)
    ours = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert set(ours) == set(raw)  # every key of the file is used, and every weight of the model comes from it
    assert all(torch.equal(ours[k], raw[k]) for k in raw)
    assert model.demp_spec.arch == f"resnet{depth}-cifar-a" and model.demp_spec.num_classes == 10
    assert "PadShortcut(pad=8)" in repr(model.layer2[0].shortcut)
    pickle.loads(pickle.dumps(copy.deepcopy(model)))  # a module, not akamaster's lambda: copies and pickles


def test_every_depth_of_the_family_builds_with_its_parameter_count() -> None:
    counts = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962}
    for depth, count in counts.items():
        model = build_model(make_spec(f"ResNet{depth}_CIFAR_A"))
        assert sum(p.numel() for p in model.parameters()) == count, depth


# ---------------------------------------------------------------------------------------- accuracy, reference

def test_resnet20_scores_about_81_percent_with_imagenet_statistics_and_matches_the_reference(
        shared_data: Path, cifar_subset_root: Path) -> None:
    path = _weights(shared_data, 20)
    model = compressor.load_model("resnet20-cifar-a", checkpoint=path).eval()
    data = load_data(f"imagefolder:{cifar_subset_root}", normalize=data_normalization("resnet20-cifar-a"))
    assert (data.mean, data.std) == (IMAGENET_MEAN, IMAGENET_STD)
    x = torch.stack([data.test[i][0] for i in range(len(data.test))])
    with torch.no_grad():
        logits = model(x)
        reference = _reference_forward(_raw_state_dict(path), x[:16], blocks=3)
    accuracy = float((logits.argmax(1) == data.test.targets).float().mean())
    print(f"published ResNet-20 on {len(x)} CIFAR-10 JPEG test images: {accuracy:.4f}")
    assert len(x) == 1000 and 0.76 <= accuracy <= 0.86  # 80.4% measured; 81.0% on all 10,000 (README)
    torch.testing.assert_close(logits[:16], reference, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------- normalization

def test_normalize_values_and_the_architecture_default(caplog) -> None:
    assert parse_normalize("auto") is None and parse_normalize("ImageNet") == (IMAGENET_MEAN, IMAGENET_STD)
    assert parse_normalize("0.5,0.4,0.3/0.2,0.2,0.25") == ((0.5, 0.4, 0.3), (0.2, 0.2, 0.25))
    for bad in ("imagenett", "0.5,0.5/0.2", "0.5/0", "0.5", "a,b,c/d,e,f", ""):
        with pytest.raises(UsageError) as info:
            parse_normalize(bad)
        assert repr(bad) in str(info.value)
        assert "imagenet, cifar10, cifar100, mnist, M1,M2,M3/S1,S2,S3" in str(info.value)
    with caplog.at_level(logging.INFO):
        assert data_normalization("resnet56_cifar_a") == "imagenet"
    assert "imagenet statistics for --arch resnet56_cifar_a" in caplog.text
    assert data_normalization("resnet56-cifar-a", "cifar10") == "cifar10"  # an explicit choice wins
    assert data_normalization("resnet56-cifar", "auto") == "auto" and data_normalization(None) == "auto"
    digits = load_data("digits", normalize="0.25/0.5")
    assert (digits.mean, digits.std) == ((0.25,), (0.5,)) and "normalize=0.25/0.5" in digits.info["normalization"]
    with pytest.raises(UsageError, match="--normalize 0.1,0.2,0.3/1,1,1: mean/std have 3 values"):
        load_data("digits", normalize="0.1,0.2,0.3/1,1,1")


def test_a_bad_normalize_on_the_command_line_names_the_valid_forms(capsys) -> None:
    code = main(["inspect", "--arch", "cnn", "--data", "digits", "--normalize", "imagenet21k"])
    err = capsys.readouterr().err
    assert code == 2 and "'imagenet21k'" in err and "auto, imagenet, cifar10, cifar100, mnist, M1,M2,M3/S1,S2,S3" in err


def test_the_recipe_default_follows_the_architecture(cifar_subset_root: Path) -> None:
    from compressor.training.config import recipe_from_dict
    from compressor.training.splits import TrainingSplits

    data = {"spec": f"imagefolder:{cifar_subset_root}"}
    published = TrainingSplits(recipe_from_dict({"model": {"arch": "resnet20-cifar-a"}, "data": data})).bundle
    measured = TrainingSplits(recipe_from_dict({"model": {"arch": "resnet20-cifar"}, "data": data})).bundle
    chosen = TrainingSplits(recipe_from_dict({"model": {"arch": "resnet20-cifar-a"},
                                              "data": {**data, "normalize": "cifar10"}})).bundle
    assert published.mean == IMAGENET_MEAN and measured.mean != IMAGENET_MEAN
    assert chosen.mean == (0.4914, 0.4822, 0.4465)


# ---------------------------------------------------------------------------------------- what is prunable

def test_the_channel_padding_blocks_the_residual_streams_only() -> None:
    x = torch.randn(1, 16, 8, 8, requires_grad=True)
    assert channel_padding(SimpleNamespace(grad_fn=F.pad(x, (1, 1, 1, 1)).grad_fn)) is None  # spatial: fine
    assert "8 + 8 channels" in channel_padding(SimpleNamespace(grad_fn=F.pad(x, (0, 0, 0, 0, 8, 8)).grad_fn))
    model = build_model(make_spec("resnet20-cifar-a")).eval()
    groups = {g.root: g for g in DependencyAnalyzer(model, torch.zeros(1, 3, 32, 32)).groups}
    assert "zero-padding of the channel dimension" in groups["conv1"].blocked
    internal = [f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)]
    assert all(groups[name].blocked is None for name in internal)
    assert set(groups) == {"conv1", "linear", *internal}


def test_demp_compress_removes_the_dead_channels_of_the_published_resnet20(
        shared_data: Path, cifar_subset_root: Path, tmp_path: Path, capsys, caplog) -> None:
    out = tmp_path / "r20-slim"
    with caplog.at_level(logging.INFO):
        code = main([str(a) for a in ("compress", _weights(shared_data, 20), "--arch", "resnet20-cifar-a", "--data",
                                      f"imagefolder:{cifar_subset_root}", "--round-to", 1, "--no-bench",
                                      "--calib-samples", 512, "--heldout-samples", 128, "--no-progress", "--out", out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "imagenet statistics for --arch resnet20-cifar-a" in caplog.text
    report = json.loads((out / "report.json").read_text())
    assert 0 < report["pruning"]["removed"] <= 20  # 13 of the 336 block channels on these images
    torch_parity = report["parity"]["torch"]
    assert torch_parity["lossless"] and torch_parity["passed"] and torch_parity["heldout"]["top1_agreement"] == 1.0
    assert report["parity"]["onnx_passed"]
    assert report["model"]["params_after"] < report["model"]["params_before"] == 269_722
    assert "zero-padding of the channel dimension" in (out / "report.md").read_text()
    assert compressor.load_pruned(out).demp_plan.removed_channels == report["pruning"]["removed"]
