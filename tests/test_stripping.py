"""Synaptic Stripping: the stripping rule, masks through optimizer steps, checkpoints and removals,
#D / %A, and real training runs on the bundled digits."""

from __future__ import annotations

import io
import math
import shutil

import pytest
import torch
from torch import nn

from compressor.training.config import load_recipe
from compressor.training.methods.stripping import StrippingConfig, SynapticStripping, strip_row
from compressor.training.trainer import train

# ---------------------------------------------------------------------------- the rule


def test_strip_row_masks_the_most_negative_tenth_of_the_remaining_weights():
    w = torch.tensor([0.5, -3.0, 0.2, -1.0, -0.1, 0.9, -2.0, 0.3, -0.05, 0.7,
                      0.1, -0.4, 0.6, -0.2, 0.8, -0.6, 0.4, -0.3, 1.0, -0.7])
    mask = torch.zeros(20, dtype=torch.bool)
    m1 = strip_row(w, mask, 0.1)  # ceil(0.1 * 20) = 2: -3.0 (1) and -2.0 (6)
    assert m1.nonzero().flatten().tolist() == [1, 6]
    m2 = strip_row(w, m1, 0.1)  # 18 remaining -> ceil(1.8) = 2: -1.0 (3) and -0.7 (19)
    assert m2.nonzero().flatten().tolist() == [1, 3, 6, 19]
    assert not mask.any() and m1.sum() == 2, "inputs are not modified"
    # only negative weights are stripped
    pos = torch.tensor([0.3, -0.1, 0.2, 0.5])
    assert strip_row(pos, torch.zeros(4, dtype=torch.bool), 0.5).nonzero().flatten().tolist() == [1]


def test_strip_row_quantile_mode_follows_the_authors_code():
    w = torch.tensor([-3.0, -1.0, 0.0, 2.0, 0.5, -0.2, 1.5, -2.5, 0.7, 0.1])
    mask = torch.zeros(10, dtype=torch.bool)
    mask[7] = True  # already stripped: not a candidate
    remaining_nonzero = torch.tensor([-3.0, -1.0, 2.0, 0.5, -0.2, 1.5, 0.7, 0.1], dtype=torch.float64)
    q = torch.quantile(remaining_nonzero, 0.05)  # between -3.0 and -1.0
    assert -3.0 < q < -1.0
    out = strip_row(w, mask, 0.05, "quantile")
    assert out.nonzero().flatten().tolist() == [0, 7]


def test_a_fully_stripped_row_does_not_crash():
    w = torch.tensor([-1.0, -2.0, 0.0])
    full = torch.ones(3, dtype=torch.bool)
    assert torch.equal(strip_row(w, full, 0.1), full)
    assert torch.equal(strip_row(w, full, 0.05, "quantile"), full)
    zeros = torch.zeros(3)
    assert not strip_row(zeros, torch.zeros(3, dtype=torch.bool), 0.05, "quantile").any()


# ---------------------------------------------------------------------------- a hand-made MLP


def _mlp(dead_row: int = 2) -> nn.Sequential:
    """10 -> 6 -> 5 -> 3 ReLU MLP on non-negative inputs where only hidden neuron ``dead_row`` of the
    first layer is dead (all its incoming weights negative, bias 0); every other unit is live."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    with torch.no_grad():
        net[0].weight.copy_(torch.rand(6, 10) + 0.1)
        net[0].weight[dead_row] = -torch.arange(1, 11, dtype=torch.float32)  # most negative: column 9
        net[0].bias.zero_()
        net[2].weight.copy_(torch.rand(5, 6) + 0.1)
        net[2].bias.zero_()
    return net


def _inputs(n: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 10, generator=g)


def _stripper(net: nn.Module, **cfg) -> SynapticStripping:
    x = _inputs()
    return SynapticStripping(net, StrippingConfig(**cfg), example_inputs=x[:2], val_loader=[(x, None)])


def test_dead_neuron_gets_its_most_negative_remaining_weight_stripped_and_metrics():
    net = _mlp()
    s = _stripper(net)
    assert set(s.masks) == {"0.weight", "2.weight"}
    s.end_of_epoch(0, None)
    assert s.last_dead == 1
    mask = s.masks["0.weight"]
    assert mask.nonzero().tolist() == [[2, 9]], "ceil(0.1 * 10) = 1 weight: the most negative (-10)"
    assert net[0].weight[2, 9] == 0 and net[0].bias[2] == 0  # the bias is untouched (it was 0 anyway)
    assert not s.masks["2.weight"].any()
    # %A: hidden parameters = incoming and outgoing weights of the hidden neurons: 6*10 + 5*6 + 3*5 = 105;
    # the dead neuron's 10 incoming (one of them stripped) and 5 outgoing weights are inactive -> 90 / 105
    assert s.active_fraction() == pytest.approx(90 / 105)
    assert s.metrics(0)["dead_neurons"] == 1 and s.stripped_weights() == 1
    s.end_of_epoch(1, None)  # still dead: 9 remaining -> ceil(0.9) = 1 more (-9 at column 8)
    assert s.masks["0.weight"].nonzero().tolist() == [[2, 8], [2, 9]]
    assert s.history[-1]["stripped_now"] == 1


def test_dead_neuron_bias_is_never_modified():
    net = _mlp()
    with torch.no_grad():
        net[0].bias[2] = -0.5
    bias = net[0].bias.detach().clone()
    s = _stripper(net)
    s.end_of_epoch(0, None)
    assert torch.equal(net[0].bias.detach(), bias)


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_masked_weights_and_optimizer_state_stay_exactly_zero(opt: str):
    net = _mlp()
    s = _stripper(net, fraction=0.5)
    s.end_of_epoch(0, None)
    s.masks["2.weight"][1, 3] = True  # a live neuron's weight too: masks hold whatever was stripped
    optimizer = (torch.optim.Adam(net.parameters(), lr=1e-2) if opt == "adam"
                 else torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.9))
    x, y = _inputs(), torch.randint(0, 3, (64,), generator=torch.Generator().manual_seed(2))
    for step in range(5):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y) + net[0].weight.sum()  # non-zero grads everywhere
        loss.backward()
        optimizer.step()
        s.after_step(step, optimizer)
        for name, p in net.named_parameters():
            if name not in s.masks:
                continue
            m = s.masks[name]
            assert torch.all(p.detach()[m] == 0)
            for value in optimizer.state[p].values():
                if torch.is_tensor(value) and value.shape == p.shape:
                    assert torch.all(value[m] == 0)
                    assert value[~m].abs().sum() > 0  # the rest is left alone
    assert s.masks["0.weight"][2].sum() == 5


def test_masks_survive_a_checkpoint_round_trip():
    net = _mlp()
    s = _stripper(net)
    s.end_of_epoch(0, None)
    s.end_of_epoch(1, None)
    buf = io.BytesIO()
    torch.save(s.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert state["masks"]["0.weight"].dtype == torch.bool
    fresh = _stripper(_mlp())
    fresh.load_state_dict(state)
    assert torch.equal(fresh.masks["0.weight"], s.masks["0.weight"])
    assert fresh.last_dead == 1 and fresh.history == s.history
    fresh.end_of_epoch(2, None)  # continues from the saved masks: 8 remaining -> the -8 weight next
    assert fresh.masks["0.weight"][2].nonzero().flatten().tolist() == [7, 8, 9]


def test_masks_are_sliced_through_a_structural_removal():
    net = _mlp()
    s = _stripper(net)
    s.end_of_epoch(0, None)
    s.masks["0.weight"][4, 3] = True  # a live neuron's stripped weight (row 4 -> row 3 after removal)
    s.masks["2.weight"][1, 4] = True  # reads hidden unit 4 -> column 3 after removal
    s.enforce(None)
    event = s.finalize(None)  # removes the dead neuron 2 (lossless) through the analyzer
    assert event is not None and event.removed == 1 and event.final
    assert net[0].weight.shape == (5, 10) and net[2].weight.shape == (5, 5)
    assert s.masks["0.weight"].shape == (5, 10) and s.masks["2.weight"].shape == (5, 5)
    assert s.masks["0.weight"].nonzero().tolist() == [[3, 3]]
    assert s.masks["2.weight"].nonzero().tolist() == [[1, 3]]
    assert net[0].weight[3, 3] == 0 and net[2].weight[1, 3] == 0
    assert s.plan.removed_channels == 1 and s.live_neurons()["0"] == 5


def test_fully_stripped_dead_row_in_training_hooks():
    net = _mlp()
    s = _stripper(net)
    s.masks["0.weight"][2] = True
    s.enforce(None)
    s.end_of_epoch(0, None)  # dead with nothing left to strip: no crash, nothing new
    assert s.masks["0.weight"][2].all() and s.stripped_weights() == 10
    assert s.active_fraction() == pytest.approx(90 / 105)


# ---------------------------------------------------------------------------- training runs


@pytest.fixture(scope="module")
def digits():
    from compressor.data import load_data

    return load_data("digits")


def _raw(method: str, **extra):
    raw = {"method": method, "model": {"arch": "mlp", "kwargs": {"widths": [64, 64]}},
           "data": {"spec": "digits", "batch_size": 32},
           "train": {"epochs": 4, "lr": 3e-2, "lr_schedule": "cosine", "log_every": 50, "seed": 0},
           "stripping": {"samples": 256}}
    for k, v in extra.items():
        raw[k] = {**raw.get(k, {}), **v}
    return raw


def _dead_now(model: nn.Module, data) -> int:
    x = torch.stack([data.train[i][0] for i in range(256)])
    s = SynapticStripping(model, StrippingConfig(), example_inputs=x[:2], val_loader=[(x, None)])
    s.measure()
    return s.last_dead


def test_stripping_run_on_digits_revives_neurons_and_records_metrics(tmp_path, digits):
    kw = dict(overwrite=True, progress=False, plots=False, tensorboard=False, data=digits)
    base = train(load_recipe(_raw("none")), tmp_path / "none", save_model=False, **kw)
    run = train(load_recipe(_raw("stripping", stripping={"remove_dead": False})), tmp_path / "strip",
                save_model=False, **kw)
    dead_base, dead_strip = _dead_now(base.model, digits), _dead_now(run.model, digits)
    assert dead_strip < dead_base, (dead_strip, dead_base)
    epochs = run.history
    assert all(isinstance(h["dead_neurons"], int) and 0 < h["active_params"] <= 1 for h in epochs)
    assert epochs[-1]["dead_neurons"] < epochs[0]["dead_neurons"]
    assert run.summary["stripped_weights"] > 0 and 0 < run.summary["weight_sparsity"] < 1

    # with the final removal: still-dead neurons go, the stripped zeros stay in the compact model
    full = train(load_recipe(_raw("stripping", train={"epochs": 2})), tmp_path / "full", **kw)
    assert full.summary["removed_channels"] > 0 and full.summary["neuron_sparsity"] > 0
    zeros = sum(int((m.weight == 0).sum()) for m in full.model.modules() if isinstance(m, nn.Linear))
    assert zeros >= full.summary["stripped_weights"] > 0
    assert (tmp_path / "full" / "model" / "plan.json").exists()


def test_stripping_masks_survive_resume_in_the_loop(tmp_path, digits):
    """An interrupted-and-resumed run ends with the same masks and weights as an uninterrupted one."""
    from compressor.training import run_checkpoints as ckpt

    kw = dict(progress=False, plots=False, tensorboard=False, data=digits, save_model=False)
    raw = _raw("stripping", train={"epochs": 3}, stripping={"remove_dead": False})
    ref = train(load_recipe(raw), tmp_path / "ref", **kw)
    # stop after epoch 2 by deleting the last checkpoint: resume then restarts from epoch 2
    part = tmp_path / "part"
    train(load_recipe(raw), part, **kw)
    cks = ckpt.list_checkpoints(part / ckpt.CHECKPOINT_DIR)
    assert len(cks) == 2
    shutil.rmtree(cks[-1])
    state = ckpt.load_checkpoint(ckpt.find_resume_checkpoint(part)).state
    masks = state["methods"]["stripping"]["masks"]
    assert masks and all(m.dtype == torch.bool for m in masks.values())
    resumed = train(load_recipe(raw), part, resume=True, **kw)
    for (n, a), (_, b) in zip(ref.model.state_dict().items(), resumed.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    assert [h["dead_neurons"] for h in ref.history] == [h["dead_neurons"] for h in resumed.history]


def test_demp_plus_stripping_keeps_masks_through_demp_removals(tmp_path, digits):
    raw = _raw("demp+stripping", train={"epochs": 3, "lr": 1e-2},
               demp={"regularizer": "lasso", "target": "weights", "peak": 3e-3, "interval": 15, "death_samples": 256})
    run = train(load_recipe(raw), tmp_path / "ds", progress=False, plots=False, tensorboard=False, data=digits,
                overwrite=True)
    assert run.summary["removed_channels"] > 0  # DemP removed neurons during training
    assert run.plan.criterion["name"] == "dead"
    assert "dead_neurons" in run.history[-1] and "lambda" in run.history[-1]
    assert math.isfinite(run.summary["test_accuracy"])


# ---------------------------------------------------------------------------- convolution channels (conv: true)


def _cnn() -> nn.Sequential:
    """1 -> 4 -> 3 channel ReLU CNN on non-negative inputs where only channel 1 of the first conv is
    dead (its whole 3x3 filter negative, bias 0)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 3), nn.ReLU(), nn.Flatten(),
                        nn.Linear(3 * 2 * 2, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.rand(4, 1, 3, 3) + 0.1)
        net[0].weight[1] = -torch.arange(1, 10, dtype=torch.float32).view(1, 3, 3)  # most negative: (2, 2)
        net[0].bias.zero_()
        net[2].weight.copy_(torch.rand(3, 4, 3, 3) + 0.1)
        net[2].bias.zero_()
    return net


def test_conv_channels_are_stripped_only_with_conv_true_and_sliced_on_removal():
    x = torch.rand(32, 1, 6, 6, generator=torch.Generator().manual_seed(3))

    def stripper(**cfg):
        return SynapticStripping(net, StrippingConfig(**cfg), example_inputs=x[:2], val_loader=[(x, None)])

    net = _cnn()
    assert stripper().masks == {}  # the paper's rule: Linear layers only (the classifier is not hidden)
    s = stripper(conv=True)
    assert set(s.masks) == {"0.weight", "2.weight"}
    s.end_of_epoch(0, None)
    assert s.last_dead == 1
    # ceil(0.1 * 9) = 1 weight of the flattened filter: the most negative one (-9 at kernel position 2, 2)
    assert s.masks["0.weight"].nonzero().tolist() == [[1, 0, 2, 2]]
    assert net[0].weight[1, 0, 2, 2] == 0
    # %A: hidden parameters = 4*9 + 3*36 + the classifier's 2*12 reading conv 2 through the flatten = 168;
    # the dead channel's 9 incoming weights and the 3*9 of conv 2 that read it are inactive
    assert s.active_fraction() == pytest.approx((168 - 9 - 27) / 168)
    ref = net(x)
    event = s.finalize(None)  # the still-dead channel goes through the analyzer, losslessly
    assert event is not None and event.removed == 1
    assert net[0].weight.shape == (3, 1, 3, 3) and net[2].weight.shape == (3, 3, 3, 3)
    assert s.masks["0.weight"].shape == (3, 1, 3, 3) and not s.masks["0.weight"].any()
    torch.testing.assert_close(net(x), ref)


def test_stripping_cnn_with_conv_and_a_validation_split_trains_on_digits(tmp_path, digits):
    from compressor.training import run_checkpoints as ckpt

    raw = {"method": "stripping", "model": {"arch": "cnn", "kwargs": {"channels": [8, 16]}},
           "data": {"spec": "digits", "batch_size": 32, "val_samples": 200},
           "train": {"epochs": 1, "lr": 3e-2, "log_every": 50, "seed": 0},
           "stripping": {"samples": 200, "conv": True}}
    run = train(load_recipe(raw), tmp_path / "cnn", progress=False, plots=False, tensorboard=False, data=digits,
                save_model=False)
    state = ckpt.load_checkpoint(ckpt.find_resume_checkpoint(tmp_path / "cnn")).state
    assert set(state["methods"]["stripping"]["masks"]) == {"features.0.weight", "features.4.weight"}
    assert run.history[-1]["val_accuracy"] is not None and isinstance(run.history[-1]["dead_neurons"], int)
    assert run.summary["val_accuracy"] is not None and run.summary["test_accuracy"] > 0.5


def test_a_method_state_from_another_version_is_refused():
    from compressor.errors import CheckpointError

    s = _stripper(_mlp())
    state = s.state_dict()
    state["version"] = 999
    with pytest.raises(CheckpointError, match="Synaptic Stripping state has version 999, expected 1"):
        s.load_state_dict(state)


def _relu_mlp(n_in: int, width: int, depth: int, n_out: int) -> nn.Sequential:
    """Paper 003's geometry: ``depth`` hidden Linear+ReLU layers of ``width``, then the classifier."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(n_in if i == 0 else width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, n_out))


def test_active_parameters_count_incoming_and_outgoing_weights_of_dead_neurons():
    """Paper 003 Table I's geometry scaled down (input -> 8 hidden layers -> 10): %A subtracts every weight
    connected to a dead neuron, in and out. With the same share dead in each hidden layer, a weight between
    two hidden layers is active with probability live²; the input and output layers' weights with
    probability live (see the next test for what this gives on the paper's full geometry)."""
    width, depth, n_in, n_out, dead_per_layer = 32, 8, 96, 10, 24
    net = _relu_mlp(n_in, width, depth, n_out)
    x = torch.rand(4, n_in)
    s = SynapticStripping(net, StrippingConfig(), example_inputs=x[:2], val_loader=[(x, None)])
    g = torch.Generator().manual_seed(0)
    s._live = {}
    for i in range(depth):
        live = torch.ones(width, dtype=torch.bool)
        live[torch.randperm(width, generator=g)[:dead_per_layer]] = False
        s._live[str(2 * i)] = live
    f = (width - dead_per_layer) / width
    total = n_in * width + (depth - 1) * width * width + width * n_out
    active = n_in * width * f + (depth - 1) * (width * f) ** 2 + width * f * n_out
    assert s.active_fraction() == pytest.approx(active / total)
    hidden, dead = s.hidden_parameters()
    hh = hidden["4.weight"] & ~dead["4.weight"]  # a hidden-to-hidden matrix: live rows x live columns
    assert int(hh.sum()) == (width - dead_per_layer) ** 2
    incoming_only = (n_in * width + (depth - 1) * width * width) * f / (n_in * width + (depth - 1) * width * width)
    assert s.active_fraction() < incoming_only - 0.1  # 0.123 vs 0.25


# Paper 003, Table I (baseline columns): (L hidden layers, N per layer, #D, %A) on CIFAR-10 and CIFAR-100.
TABLE_I_BASELINE = [
    (2, 256, 30, 88.62), (2, 512, 224, 61.04), (2, 1024, 1010, 25.69), (4, 256, 63, 88.07),
    (4, 512, 645, 46.93), (4, 1024, 2610, 13.16), (8, 256, 781, 38.58), (8, 512, 2566, 13.95),
    (8, 1024, 6052, 6.82),
    (2, 256, 51, 81.07), (2, 512, 215, 62.26), (2, 1024, 787, 37.91), (4, 256, 97, 81.95),
    (4, 512, 539, 54.29), (4, 1024, 1970, 26.94), (8, 256, 557, 53.00), (8, 512, 1975, 26.81),
    (8, 1024, 5454, 11.17),
]


def test_active_fraction_on_the_paper_table1_geometry_is_the_figure_the_texts_cite():
    """The paper's %A is the squared live share of the hidden neurons, (1 - #D/(L*N))²: 6.82% for
    8 x 1024 with #D 6052. demp's %A also counts the input layer (3072 x 1024 on CIFAR-10) and the
    classifier (1024 x 10): 12.61% on that geometry. The module docstring, docs/training.md and
    BENCHMARKS.md must cite the value the function returns, and none may claim the paper's 6.82%."""
    import re
    from pathlib import Path

    from compressor.training.methods import stripping

    # what the paper's %A is: (live share)² in 16 of the 18 baseline rows, to the printed decimals
    squared = [round(100 * (1 - d / (depth * width)) ** 2, 2) == a for depth, width, d, a in TABLE_I_BASELINE]
    assert sum(squared) == 16
    assert round(100 * (2140 / 8192) ** 2, 2) == 6.82

    # what demp computes on the paper's CIFAR-10 geometry: 6052 dead, 757 in each of the first four layers
    n_in, width, depth, n_out, n_dead = 3072, 1024, 8, 10, 6052
    net = _relu_mlp(n_in, width, depth, n_out)
    x = torch.rand(2, n_in)
    s = SynapticStripping(net, StrippingConfig(), example_inputs=x, val_loader=[(x, None)])
    dead = [n_dead // depth + (i < n_dead % depth) for i in range(depth)]
    assert dead == [757] * 4 + [756] * 4
    s._live = {}
    for i, d in enumerate(dead):
        live = torch.ones(width, dtype=torch.bool)
        live[:d] = False
        s._live[str(2 * i)] = live
    frac = s.active_fraction()
    assert round(100 * frac, 2) == 12.61
    # the paper's 6.82% is what the hidden-to-hidden weights alone give (here 6.824%)
    hidden, dead_masks = s.hidden_parameters()
    hh = [f"{2 * i}.weight" for i in range(1, depth)]
    hh_active = sum(int((hidden[n] & ~dead_masks[n]).sum()) for n in hh)
    assert round(100 * hh_active / sum(int(hidden[n].sum()) for n in hh), 2) == 6.82

    # the texts cite exactly this figure, attribute 6.82% to (live share)², and claim no reproduction
    root = Path(__file__).resolve().parents[1]

    def section(path: Path, heading: str) -> str:  # from the heading to the next heading of any level
        text = path.read_text()
        start = text.index(heading)
        nxt = re.search(r"^#{1,3} ", text[start + len(heading):], flags=re.M)
        return text[start:start + len(heading) + nxt.start()] if nxt else text[start:]

    texts = {"stripping.py docstring": stripping.__doc__,
             "docs/training.md": section(root / "docs" / "training.md", "### Synaptic Stripping"),
             "BENCHMARKS.md": section(root / "BENCHMARKS.md", "### Synaptic Stripping")}
    for where, text in texts.items():
        flat = " ".join(text.split())
        cited = re.findall(r"(\d+\.\d+)% on the Table I geometry", flat)
        assert cited and set(cited) == {f"{100 * frac:.2f}"}, (where, cited)
        assert "(2140/8192)² = 6.82%" in flat, where
        assert "does not reproduce" in flat or "is not the paper's Table I computation" in flat, where
        for claim in ("which is how the paper", "the paper's value", "as the paper defines it"):
            assert claim not in flat, (where, claim)
