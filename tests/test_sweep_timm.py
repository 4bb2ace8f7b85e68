"""Coverage beyond torchvision: timm models compress losslessly with the groups that would break them
blocked (the construct named), or are refused naming the construct; never a traceback or a hang
(tools/sweep_timm.py, BENCHMARKS.md). A handful of representative constructs run by default; the
whole sample is slow-marked."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

timm = pytest.importorskip("timm", reason="timm is a test dependency: pip install -e '.[test]'")

_spec = importlib.util.spec_from_file_location("sweep_timm",
                                               Path(__file__).resolve().parents[1] / "tools" / "sweep_timm.py")
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)

#: model -> a blocked-group reason its compression must record (the construct that would break it)
REPRESENTATIVE = {
    "mixnet_s": "a torch.split with constant sizes",  # mixed-kernel conv: split sizes are Python constants
    "ghostnet_100": "removing these channels changes the outputs",  # SE conv_expand / cheap-operation concat
    "skresnet18": "removing these channels changes the outputs",  # selective-kernel attention
}
#: models demp refuses, and the construct the message must name
REFUSED = {"dpn68": "a torch.cat of inputs whose channel counts cannot be inferred"}


@pytest.mark.parametrize("name", sorted(REPRESENTATIVE))
def test_representative_timm_models_compress_with_the_breaking_groups_blocked(name: str) -> None:
    row = sweep.run_one(name, 64)
    assert row["status"] == "ok", row.get("traceback") or row.get("error") or row
    assert row["rel_diff_calib"] <= 1e-4 and row["removed"] > 0 and row["params_after"] < row["params_before"]
    assert REPRESENTATIVE[name] in row["blocked_reasons"], row["blocked_reasons"]


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_an_unsupported_timm_model_is_refused_naming_the_construct_and_the_layers(name: str) -> None:
    row = sweep.run_one(name, 64)
    assert row["status"] == "refused", row.get("traceback") or row
    assert REFUSED[name] in row["error"] and "after layer(s) features." in row["error"]


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", sweep.sample())
def test_every_model_of_the_timm_sample(name: str) -> None:
    row = sweep.run_one(name, 64)
    assert row["status"] in ("ok", "none removable", "no dead channels", "refused", "skipped"), (
        row.get("traceback") or row)
    if row["status"] == "refused":
        assert "contains" in row["error"] or "no removal could be kept" in row["error"], row["error"]


def _planted_timm_checkpoint(tmp_path: Path) -> tuple[Path, Path, int]:
    """A timm resnet18 (10 classes) with dead channels planted, as safetensors; an npz of 32x32 images."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from compressor.graph import DependencyAnalyzer
    from compressor.planting import plant_dead_channels

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    planted = plant_dead_channels(model, DependencyAnalyzer(model, torch.randn(1, 3, 32, 32)), channels=(0, 3))
    ckpt = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    data = tmp_path / "calib.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.standard_normal((96, 3, 32, 32)).astype("float32"), y=rng.integers(0, 10, 96))
    return ckpt, data, sum(len(c) for c in planted.values())


@pytest.mark.parametrize("how", ["arch", "model-file"])
def test_a_timm_checkpoint_compresses_through_the_cli(tmp_path: Path, capsys, how: str) -> None:
    """`--arch timm:NAME`, or a --model-file factory calling timm.create_model: the planted channels go, the
    compact model reloads from its folder (the plan names the timm architecture) and computes the same."""
    import numpy as np
    import torch

    import compressor
    from compressor.cli import main

    ckpt, data, planted = _planted_timm_checkpoint(tmp_path)
    if how == "arch":
        model_args = ["--arch", "timm:resnet18", "--num-classes", "10"]
    else:
        factory = tmp_path / "factory.py"
        factory.write_text("import timm\n\ndef make():\n    return timm.create_model('resnet18', num_classes=10)\n")
        model_args = ["--model-file", f"{factory}:make"]
    out = tmp_path / "slim"
    code = main(["compress", str(ckpt), *model_args, "--input-size", "32", "--data", f"npz:{data}", "--out", str(out),
                 "--round-to", "1", "--no-bench", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    slim = compressor.load_pruned(out)
    assert slim.demp_plan.removed_channels >= planted
    x = torch.as_tensor(np.load(data)["x"][:8])
    dense = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    from safetensors.torch import load_file

    dense.load_state_dict(load_file(str(ckpt)))
    with torch.no_grad():
        torch.testing.assert_close(slim.eval()(x), dense(x), rtol=0, atol=1e-4)
