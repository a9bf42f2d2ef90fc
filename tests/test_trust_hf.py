"""Trust on an export-captured HF model: every criterion, example_kwargs, and a train-mode model left untouched."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fxprune
from zoo import import_torchvision  # noqa: E402

import_torchvision()  # transformers imports torchvision: nms schema shim on a CUDA wheel over CPU torch
T = pytest.importorskip("transformers")

V = 64


def tiny_llama():
    torch.manual_seed(0)
    cfg = T.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=64)
    return T.LlamaForCausalLM(cfg)


def lm_loss(model, batch):
    out = model(**batch)
    logits = out["logits"] if isinstance(out, dict) else out[0]
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["input_ids"][:, 1:].flatten())


def batches(n=2):
    gen = torch.Generator().manual_seed(1)
    return [dict(input_ids=torch.randint(0, V, (2, 7), generator=gen), use_cache=False) for _ in range(n)]


def test_every_criterion_scores_an_export_captured_model():
    model = tiny_llama().eval()
    dg = fxprune.analyze(model, (), batches(1)[0])
    assert "torch.export" in dg.front_end
    for name in fxprune.importance_names():  # taylor/hessian/obd used to call eval() on the export graph
        crit = fxprune.get_importance(name)
        scores = fxprune.score_groups(dg, crit, data=batches(), loss_fn=lm_loss)
        scored = [s for s in scores.values() if s is not None]
        assert all(torch.isfinite(s).all() for s in scored), name
        assert scored or name == "bn_scale", name  # RMSNorm is no BatchNorm: bn_scale has no opinion


def test_prune_takes_example_kwargs_and_leaves_a_train_mode_model_alone():
    model = tiny_llama().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    kw = batches(1)[0]
    with pytest.warns(UserWarning, match="refuses train"):
        pruned = fxprune.prune(model, (), example_kwargs=kw, importance="taylor", data=batches(), loss_fn=lm_loss,
                               ratio=0.25, ignore="lm_head")
    assert pruned.fxprune_certificate.passed and pruned.fxprune_certificate.dtype == "float64"
    assert fxprune.count_params(pruned) < fxprune.count_params(model)
    assert model.training and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        assert pruned(**kw)["logits"].shape == (2, 7, V)
    macs = fxprune.count_macs(pruned, (), kw)
    assert 0 < macs < fxprune.count_macs(model, (), kw)
