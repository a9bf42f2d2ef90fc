"""Latency model, knapsack and latency search on synthetic tables with known answers (fake timers),
fast widths, ONNX Runtime parity, and the oracles on fast-width pruning."""
import warnings

import pytest
import torch
import torch.nn as nn

import fxprune
from fxprune.speed import build_table, get_runtime, staircase
from fxprune.speed.cost import LatencyModel
from fxprune.speed.knapsack import allocate, prefix_values
from fxprune.speed.layers import Layer, LayerSpec, find_layers
from fxprune.speed.search import LatencyReport, SlowerThanDenseWarning, check_speed, parse_target, search_latency
from fxprune.speed.table import envelope, fast_mask
from fxprune.speed.timing import interleaved, time_call


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FXPRUNE_LATENCY_CACHE", str(tmp_path / "latency"))


def _spec(rows: int, size: int = 16) -> LayerSpec:
    return LayerSpec("linear", (rows, size), size, size)


def _linear_timer(slow=None):
    """Seconds = 1e-6 * w_out * w_in / 16 (rows: 1 or 2 per spec), with ``slow`` widths 10x slower."""
    def timer(spec, w_in, w_out):
        t = 1e-6 * spec.in_shape[0] * w_out * w_in / spec.in_ch
        return t * 10 if slow and w_out in slow else t
    return timer


def _model(specs, timer, residual=0.0, cache=None):
    layers = [Layer(f"l{i}", s, (i,), ()) for i, s in enumerate(specs)]
    table = build_table(layers, get_runtime("eager", 1), timer=timer, cache=cache)
    return LatencyModel(layers, table, {i: s.out_ch for i, s in enumerate(specs)}, residual), table


def test_staircase_and_envelope_known_answers():
    assert staircase(64) == [8, 16, 24, 32, 40, 48, 56, 64]
    assert staircase(3) == [1, 2, 3]
    assert staircase(100) == [16, 32, 48, 64, 80, 96, 100]
    assert envelope([3.0, 1.0, 2.0, 5.0]) == [1.0, 1.0, 2.0, 5.0]
    assert fast_mask([3.0, 1.0, 2.0, 5.0]) == [False, True, True, True]
    assert fast_mask([1.0, 1.0, 2.0]) == [False, True, True]  # not strictly quicker than a larger width


@pytest.mark.parametrize("size", [1, 7, 16, 17, 100, 768, 2048, 3072])
def test_staircase_is_increasing_and_ends_at_size(size):
    ws = staircase(size)
    assert ws == sorted(set(ws)) and ws[-1] == size and ws[0] >= 1 and len(ws) <= 14


def test_table_is_monotone_and_drops_slow_widths():
    lm, _ = _model([_spec(1)], _linear_timer(slow={10}))
    assert lm.fast_widths(0) == [2, 4, 6, 8, 12, 14, 16]
    times = [lm.group_cost(0, {0: w}) for w in staircase(16)]
    assert times == sorted(times)  # enveloped: never more for fewer channels
    assert lm.group_cost(0, {0: 10}) == lm.group_cost(0, {0: 12})


def test_table_cache_is_reused_and_keyed(tmp_path):
    calls = []

    def timer(spec, w_in, w_out):
        calls.append((w_in, w_out))
        return 1e-6 * w_out

    layer = Layer("fc", _spec(1), (0,), ())
    first = build_table([layer], get_runtime("eager", 1), timer=timer, cache=str(tmp_path))
    n = len(calls)
    again = build_table([layer], get_runtime("eager", 1), timer=timer, cache=str(tmp_path))
    assert first.measured == 1 and again.measured == 0 and len(calls) == n and again.layers == first.layers
    other = build_table([layer], get_runtime("eager", 2), timer=timer, cache=str(tmp_path))
    assert other.measured == 1 and other.path != first.path  # threads are part of the key


def test_knapsack_prunes_the_cheaper_importance_first():
    lm, _ = _model([_spec(1), _spec(2)], _linear_timer())  # B's layer costs twice A's
    values = {0: prefix_values(torch.ones(16)), 1: prefix_values(torch.ones(16))}
    # equal importance, B saves twice the time per coordinate: only B shrinks, to 8 (48 -> 32 us)
    widths, est = allocate(lm, values, budget=32e-6)
    assert widths == {1: 8} and est == pytest.approx(32e-6)
    values = {0: prefix_values(torch.ones(16)), 1: prefix_values(torch.full((16,), 4.0))}
    widths, _ = allocate(lm, values, budget=40e-6)  # B four times as important: A goes first, to 8
    assert widths == {0: 8}


def test_knapsack_never_picks_a_slow_width_and_respects_floors():
    lm, _ = _model([_spec(1)], _linear_timer(slow={10, 12}))
    widths, _ = allocate(lm, {0: prefix_values(torch.ones(16))}, budget=11e-6)
    assert widths == {0: 8}  # 12 and 10 are slower than 14: skipped
    widths, est = allocate(lm, {0: prefix_values(torch.ones(16))}, budget=1e-9, floor={0: 6})
    assert widths == {0: 6} and est > 1e-9  # unreachable: stops at the floor


def _tiny():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(32, 8, 1))
    return net, (torch.randn(1, 3, 8, 8),)


def _conv_timer(spec, w_in, w_out):
    return 1e-6 * w_in * w_out


def test_find_layers_maps_groups_to_in_and_out_widths():
    net, x = _tiny()
    dg = fxprune.analyze(net, x)
    got = [(l.name, l.out_groups, l.in_groups, l.spec.kernel) for l in find_layers(dg)]
    assert got == [("0", (0,), (), (3, 3)), ("2", (1,), (0,), (3, 3)), ("4", (), (1,), (1, 1))]


def test_search_latency_corrects_until_the_measured_ratio_is_within_tolerance():
    net, x = _tiny()
    dg = fxprune.analyze(net, x)
    scores = fxprune.score_groups(dg, "l2")
    cfg = fxprune.PruneConfig(target_latency=0.5, runtime="eager", threads=1)
    calls = []

    def measurer(keep):  # "real" latency: the model's estimate is optimistic about savings
        calls.append(keep)
        kept = sum(len(k) for k in keep.values()) + 64 - sum(g.size for g in keep)
        return 1.0, 1.0 - 0.8 * (1 - kept / 64)

    keep, report = search_latency(dg, scores, cfg, dg.groups, timer=_conv_timer, measurer=measurer,
                                  dense_s=1e-6 * (3 * 32 + 32 * 32 + 32 * 8))
    assert abs(report.ratio - 0.5) <= 0.05 * 0.5 and report.iterations >= len(calls) >= 2
    assert report.table_measured == 3 and report.target_s == pytest.approx(0.5)
    assert all(len(k) in staircase(g.size) for g, k in keep.items())


def test_a_missed_latency_target_keeps_the_closest_try_that_is_not_slower():
    net, x = _tiny()
    dg = fxprune.analyze(net, x)
    scores = fxprune.score_groups(dg, "l2")
    cfg = fxprune.PruneConfig(target_latency=0.5, runtime="eager", threads=1)
    ratios = iter([0.62, 0.44, 0.58, 0.57, 0.56, 0.55, 0.55, 0.55, 0.55, 0.55])

    def measurer(keep):  # a noisy machine: only one try lands at or below the target
        return 1.0, next(ratios)

    with pytest.warns(UserWarning, match="not reached"):
        _, report = search_latency(dg, scores, cfg, dg.groups, timer=_conv_timer, measurer=measurer,
                                   dense_s=1e-6 * (3 * 32 + 32 * 32 + 32 * 8))
    assert report.ratio == pytest.approx(0.44)


def test_prune_to_latency_and_fast_widths_stay_exact(monkeypatch):
    monkeypatch.setattr("fxprune.speed.table.layer_timer", lambda rt: _conv_timer)
    net, x = _tiny()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timing the tiny net is noise: the target may be missed
        small = fxprune.prune(net, x, target_latency=0.6, runtime="eager", threads=1)
    assert small.fxprune_certificate.passed and isinstance(small.fxprune_latency, LatencyReport)
    assert fxprune.verify(small, x).passed  # both oracles on the pruned graph, float64
    snapped = fxprune.prune(net, x, ratio=0.3, runtime="eager", threads=1)
    widths = [m.out_channels for m in snapped.modules() if isinstance(m, nn.Conv2d)]
    assert widths[:2] == [24, 24] and snapped.fxprune_certificate.passed  # 32 - 30% = 22 -> fast width 24
    assert fxprune.verify(snapped, x).passed
    exact = fxprune.prune(net, x, ratio=0.3, runtime="eager", threads=1, exact_widths=True)
    assert [m.out_channels for m in exact.modules() if isinstance(m, nn.Conv2d)][:2] == [22, 22]
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_slower_than_dense_is_never_silent():
    net, x = _tiny()
    dg = fxprune.analyze(net, x)
    cfg = fxprune.PruneConfig(runtime="eager")
    with pytest.warns(SlowerThanDenseWarning, match="not faster than the dense"):
        check_speed(dg, net, cfg, LatencyReport("eager", 1, dense_s=1.0, pruned_s=1.1))


@pytest.mark.parametrize("bad, match", [
    (dict(target_latency=1.5), "fraction in"), (dict(target_latency=0.5, target_macs=0.5), "one target"),
    (dict(runtime="tensorrt"), "runtime must be"), (dict(target_latency=0.5, iterative_steps=2), "one step"),
    (dict(latency_tolerance=0.9), "latency_tolerance")])
def test_config_errors_name_the_fix(bad, match):
    with pytest.raises(ValueError, match=match):
        fxprune.PruneConfig(**bad)


def test_parse_target_and_default_runtime():
    assert parse_target("3ms", 0.006) == pytest.approx(0.5)
    assert fxprune.PruneConfig(target_latency=0.5).runtime == "eager"
    with pytest.raises(ValueError, match="12ms"):
        parse_target("fast", 1.0)


def test_interleaved_uses_medians_with_an_injected_clock():
    ticks = iter(range(10_000))
    clock = lambda: float(next(ticks))  # noqa: E731: every call takes exactly one tick
    assert time_call(lambda: None, min_time=0, clock=clock) == 1.0
    assert interleaved([lambda: None, lambda: None], rounds=3, warmup=0, min_time=0, clock=clock) == [1.0, 1.0]


class _SE(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc1, self.fc2 = nn.Conv2d(3, 16, 3, padding=1), nn.Linear(16, 8), nn.Linear(8, 16)
        self.bn, self.dw = nn.BatchNorm2d(16), nn.Conv2d(16, 16, 3, padding=1, groups=16)

    def forward(self, x):
        y = self.dw(torch.relu(self.bn(self.conv(x))))
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(y.mean((2, 3))))))
        return y * s[:, :, None, None]


@pytest.mark.parametrize("make", [_tiny, lambda: (_SE(), (torch.randn(2, 3, 8, 8),)),
                                  lambda: (fxprune.tools.demo.DemoNet(), (torch.randn(2, 3, 32, 32),))])
def test_onnx_runtime_matches_the_pruned_model(make):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import fxprune.tools.demo  # noqa: F401
    from fxprune.speed.onnx import check_parity, export_onnx, ort_session
    net, x = make()
    small = fxprune.prune(net.eval(), x, ratio=0.4)
    sess = ort_session(export_onnx(small, x), threads=1)
    assert check_parity(small, sess, x) <= 1e-4
    run = get_runtime("onnxruntime", threads=1).prepare(small, x, check=True)
    assert torch.allclose(torch.from_numpy(run()[0]), small(*x), rtol=1e-4, atol=1e-5)


def _write_model(tmp_path) -> str:
    path = tmp_path / "lat_models.py"
    path.write_text("import torch\nimport torch.nn as nn\n\n\ndef make():\n    torch.manual_seed(0)\n"
                    "    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3),\n"
                    "                         nn.ReLU(), nn.Conv2d(32, 4, 1)).eval(), (torch.randn(1, 3, 12, 12),)\n")
    return f"{path}:make"


def test_cli_target_latency_reports_efficiency_and_writes_onnx_and_plot(monkeypatch, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("matplotlib")
    from fxprune.speed.onnx import check_parity, ort_session
    from fxprune.tools.cli import main
    monkeypatch.setattr("fxprune.speed.table.layer_timer", lambda rt: _conv_timer)
    onnx_path, png, saved = tmp_path / "small.onnx", tmp_path / "curve.png", tmp_path / "small.pt2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["-q", _write_model(tmp_path), "--target-latency", "0.7", "--threads", "1", "--onnx",
                     str(onnx_path), "--plot", str(png), "--save", str(saved), "--no-tables"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "on eager (efficiency" in out and "oracles exact" in out
    assert png.stat().st_size > 0
    small = fxprune.load(saved)
    assert check_parity(small, ort_session(onnx_path.read_bytes()), (torch.randn(1, 3, 12, 12),)) <= 1e-4


@pytest.mark.parametrize("argv", [["--target-latency", "0.5", "--target-macs", "0.5"],
                                  ["--target-latency", "2"], ["--target-latency", "soon"],
                                  ["--runtime", "tensorrt"]])
def test_cli_latency_usage_errors_exit_2(argv, capsys):
    from fxprune.tools.cli import main
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["-q", "--no-verify", "--latency-runs", "0"] + argv)
    assert code == 2, capsys.readouterr()


def test_macs_target_with_a_runtime_lands_on_staircase_widths(monkeypatch):
    # the knapsack chooses (conv "0" 4x slower per MAC than conv "2"), the MACs bisection meets the target
    def timer(spec, w_in, w_out):
        return 1e-6 * w_in * w_out * (4.0 if spec.in_ch == 3 else 1.0) * (9 if spec.kernel == (3, 3) else 1)
    monkeypatch.setattr("fxprune.speed.table.layer_timer", lambda rt: timer)
    net, x = _tiny()
    small = fxprune.prune(net, x, target_macs=0.6, runtime="eager", threads=1, importance="random")
    assert small.fxprune_certificate.passed
    macs = fxprune.count_macs(small, x) / fxprune.count_macs(net, x)
    assert abs(macs - 0.6) <= 0.05 * 0.6
    w0, w1 = [m.out_channels for m in small.modules() if isinstance(m, nn.Conv2d)][:2]
    assert w0 in staircase(32) and w1 in staircase(32)
