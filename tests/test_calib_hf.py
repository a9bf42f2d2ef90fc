"""Calibrated pruning and repair on an export-captured HF LLaMA: graph edits, folding, in place."""
import copy

import pytest
import torch

import fxprune
from fxprune.calib import calibrate, repair, repair_report

from zoo import import_torchvision

import_torchvision()
T = pytest.importorskip("transformers")
T.logging.set_verbosity_error()

V = 64


def tiny_llama():
    torch.manual_seed(0)
    cfg = T.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=64)
    return T.LlamaForCausalLM(cfg).eval()


def tokens(b, n, seed):
    return torch.randint(0, V, (b, n), generator=torch.Generator().manual_seed(seed))


KW = dict(input_ids=tokens(2, 8, 0), use_cache=False)
DATA = [dict(input_ids=tokens(2, 8, s)) for s in range(1, 5)]  # the example's shape: folded graphs are static
OPTS = dict(ratio=0.3, scope="global", factors="outer", ignore=["model.embed_tokens"])


def logits(m, **kw):
    with torch.no_grad():
        out = m(**kw)
    return out["logits"] if isinstance(out, dict) else out.logits


def check_graph_biases(fixed, tmp_path):
    """``repair="bias"`` on the exported graph: a bias per repaired down_proj, wired in, saved as state."""
    report = repair_report(fixed)
    added = {r.layer for r in report.repaired if r.note == "bias added"}
    assert {"model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"} <= added
    names = dict(fixed.named_parameters())
    assert all(f"{layer}.bias" in names for layer in added)
    other = dict(input_ids=tokens(3, 11, 9), use_cache=False)  # dynamic shapes survive the graph edit
    assert logits(fixed, **other).shape == (3, 11, V)
    torch.save(fixed.state_dict(), tmp_path / "m.pt")  # the new biases are ordinary state
    state = torch.load(tmp_path / "m.pt")
    assert all(torch.equal(state[f"{layer}.bias"], names[f"{layer}.bias"]) for layer in added)
    assert all(r.after <= r.before + 1e-12 for r in report.repaired)


def test_folded_and_unfolded_calibrate_and_repair_alike():
    m = tiny_llama()
    results = []
    for fold in (False, True):
        dg = fxprune.analyze(m, (), KW, fold=fold)
        cal = calibrate(dg, DATA, gram=True)
        scores = fxprune.score_groups(dg, "obs", stats=cal)
        keep = fxprune.plan(dg, scores, fxprune.PruneConfig(**OPTS))
        pruned = fxprune.apply(dg, keep)
        report = repair(dg, keep, pruned, cal, "lstsq")
        by_members = {frozenset(g.members): scores[g] for g in dg.groups if scores[g] is not None}
        results.append((by_members, dict(pruned.named_parameters()), report, logits(pruned, **KW)))
    (s0, p0, r0, y0), (s1, p1, r1, y1) = results
    assert s0.keys() == s1.keys() and all(torch.allclose(s0[k], s1[k], rtol=1e-9) for k in s0)
    assert [r.layer for r in r0.layers] == [r.layer for r in r1.layers] and len(r0.repaired) >= 2
    assert all(torch.allclose(p0[n], p1[n], atol=1e-6) for n in p0 if "layers" in n)
    assert torch.allclose(y0, y1, atol=1e-5)


@pytest.mark.parametrize("method", ["bias", "lstsq"])
def test_repairs_in_the_graph_and_in_place_in_the_hf_modules(method, tmp_path):
    m = tiny_llama()
    graph = fxprune.prune(m, (), example_kwargs=KW, importance="wanda", data=DATA, repair=method, **OPTS)
    if method == "bias":
        check_graph_biases(graph, tmp_path)
    user = copy.deepcopy(m)
    out = fxprune.prune(user, (), example_kwargs=KW, importance="wanda", data=DATA, repair=method, inplace=True,
                        **OPTS)
    assert out is user and isinstance(user, T.LlamaForCausalLM)
    down = user.model.layers[0].mlp.down_proj
    assert torch.equal(down.weight, graph.get_parameter("model.layers.0.mlp.down_proj.weight"))
    if method == "bias":
        assert torch.equal(down.bias, graph.get_parameter("model.layers.0.mlp.down_proj.bias"))
    else:
        assert down.bias is None
    other = dict(input_ids=tokens(3, 5, 7), use_cache=False)  # the eager model runs at any size
    assert torch.allclose(logits(user, **other), logits(graph, **other), atol=1e-5)
    assert [r.layer for r in repair_report(user).layers] == [r.layer for r in repair_report(graph).layers]


def test_taylor_scores_an_exported_graph():
    """Gradient statistics run on a torch.export graph (which refuses .eval()), so taylor + repair work on HF."""
    m = tiny_llama()

    def lm_loss(model, batch):
        ids = batch["input_ids"]
        out = model(input_ids=ids, use_cache=False)
        logits = out["logits"] if isinstance(out, dict) else out.logits
        return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))

    fixed = fxprune.prune(m, (), example_kwargs=KW, importance="taylor", data=DATA, loss_fn=lm_loss, repair="lstsq",
                          **OPTS)
    assert repair_report(fixed).repaired
