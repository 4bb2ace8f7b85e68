"""compress(): planted dead channels go, outputs stay; results persist without pickle and reload."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import compressor
from compressor.counting import count_params
from compressor.criteria import Criterion
from compressor.data import calibration_split, load_data, make_loader
from compressor.errors import CheckpointError, OutputExistsError, VerificationError
from compressor.graph import DependencyAnalyzer
from compressor.planting import plant_dead_channels
from exporters.report import compress_report


@pytest.fixture(scope="module")
def digits():
    data = load_data("digits")
    calib, heldout = calibration_split(data.train, samples=256, heldout=64, seed=0)
    heldout_x = torch.stack([heldout[i][0] for i in range(len(heldout))])
    return data, make_loader(calib, batch_size=64), heldout_x


def _planted_cnn(data, fraction=0.5):
    torch.manual_seed(0)
    model = compressor.build_model(compressor.ModelSpec("cnn", 10, tuple(data.input_shape))).eval()
    analyzer = DependencyAnalyzer(model, torch.zeros(1, *data.input_shape))
    planted = plant_dead_channels(model, analyzer, fraction=fraction)
    return model, planted


def test_compress_removes_planted_channels_and_keeps_outputs(digits, tmp_path) -> None:
    data, loader, heldout_x = digits
    model, planted = _planted_cnn(data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = compressor.compress(model, loader, heldout=heldout_x, progress=False)
    # the user's model is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    for root, chans in planted.items():
        assert set(chans) <= set(result.plan.group(root).removed)
    v = result.verification
    assert v["passed"] and v["heldout"]["max_abs_diff"] <= 1e-4 * v["heldout"]["output_scale"]
    assert v["heldout"]["top1_agreement"] == 1.0 and v["calibration"]["samples"] == 256
    report = compress_report(result)
    pr = report["pruning"]
    assert pr["neurons_after"] == pr["neurons_before"] - result.plan.removed_channels
    assert pr["removed"] == result.plan.removed_channels and pr["method"] == "compress" and pr["criterion"] == "dead"
    assert report["model"]["params_after"] == count_params(result.model) < report["model"]["params_before"]

    out = compressor.save_pruned(result, tmp_path / "slim")
    assert sorted(p.name for p in out.iterdir()) == ["plan.json", "weights.safetensors"]
    again = compressor.load_pruned(out)
    assert isinstance(again, torch.nn.Module) and not again.training, "an ordinary model, in eval mode"
    assert again.demp_plan.removal_hash() == result.plan.removal_hash() and again.demp_dir == out
    with torch.no_grad():
        assert torch.equal(again(heldout_x), result.model.eval()(heldout_x))
    # a compressed directory is also a checkpoint for load_model
    reloaded = compressor.load_model("cnn", checkpoint=out)
    with torch.no_grad():
        assert torch.equal(reloaded(heldout_x), again(heldout_x))
    from compressor.pruned import dense_model

    dense = dense_model(again)
    assert sum(p.numel() for p in dense.parameters()) == report["model"]["params_before"]

    with pytest.raises(OutputExistsError, match="overwrite"):
        compressor.save_pruned(result, out)
    compressor.save_pruned(result, out, overwrite=True)


@dataclass(frozen=True)
class _LyingCriterion(Criterion):
    """Claims losslessness but marks live channel 0 of every consumer removable."""

    name = "lying"
    lossless = True

    def removable(self, stats):
        mask = stats.max_abs <= 0
        mask[0] = True
        return mask

    def to_dict(self):
        return {"name": self.name}

    def spec(self):
        return "lying"


def test_lossless_verification_failure_names_the_group(digits) -> None:
    data, loader, heldout_x = digits
    torch.manual_seed(0)
    model = compressor.build_model(compressor.ModelSpec("cnn", 10, tuple(data.input_shape))).eval()
    with pytest.raises(VerificationError, match=r"no removal could be kept: the outputs changed.*features") as err:
        compressor.compress(model, loader, criterion=_LyingCriterion(), heldout=heldout_x, progress=False)
    assert "--ignore" in str(err.value) and "changes the outputs (relative difference" in str(err.value)


def test_lossy_criterion_reports_error_instead_of_failing(digits) -> None:
    data, loader, heldout_x = digits
    torch.manual_seed(0)
    model = compressor.build_model(compressor.ModelSpec("cnn", 10, tuple(data.input_shape))).eval()
    result = compressor.compress(model, loader, criterion="dormant:0.5", heldout=heldout_x, progress=False)
    assert result.verification["passed"] is None
    assert result.plan.removed_channels > 0 and result.verification["heldout"]["max_abs_diff"] > 0


def test_load_pruned_errors(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        compressor.load_pruned(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a compressed model"):
        compressor.load_pruned(tmp_path / "empty")


def test_compressing_a_compressed_model_composes_the_plans(digits, tmp_path) -> None:
    data, loader, heldout_x = digits
    model, planted = _planted_cnn(data, fraction=0.25)
    first = compressor.compress(model, loader, heldout=heldout_x, progress=False)
    compressor.save_pruned(first, tmp_path / "once")
    once = compressor.load_pruned(tmp_path / "once")
    # kill more channels in the compressed model, then compress it again
    analyzer = DependencyAnalyzer(once, torch.zeros(1, *data.input_shape))
    plant_dead_channels(once, analyzer, channels=(1,))
    second = compressor.compress(once, loader, heldout=heldout_x, progress=False)
    assert second.plan.removed_channels > first.plan.removed_channels
    assert second.plan.group("features.0").size == 32  # original numbering
    compressor.save_pruned(second, tmp_path / "twice")
    twice = compressor.load_pruned(tmp_path / "twice")
    with torch.no_grad():
        assert torch.equal(twice(heldout_x), second.model.eval()(heldout_x))
