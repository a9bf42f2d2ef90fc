"""Module attributes derived from pruned sizes, as one table (used by in-place pruning).

Note [Attribute table]
~~~~~~~~~~~~~~~~~~~~~~
A module's Python forward reads sizes from its attributes (``Conv2d.groups``,
``GroupNorm.num_groups``, ``LlamaAttention.num_key_value_groups``). After the
tensors of a model are resized in place, every such attribute must follow.
``SYNC`` maps a module type to ``{attribute: derivation}``; a derivation computes
the attribute from the module's (resized) tensors, its fixed attributes (a head
dim is never pruned in place), or the argument the pruned graph passes for it.
Types are looked up along the MRO; third-party types are keyed by qualified name
(``"transformers.pytorch_utils.Conv1D"``), so nothing optional is imported.

Only *shape descriptors* belong here: a value the forward uses as arithmetic
(T5's ``model_dim`` scales logits, ``scaling`` scales scores) is part of the
function and must keep its original value, as the graph rewrite keeps it.

Each derivation is first checked on the unpruned model: one that does not
reproduce the current value is not trusted for that instance. A derivation that
fails after resizing (heads no longer a whole number of head dims, heads that
differ across layers where one number describes them all) is reported by name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Callable, Optional

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.operator_schemas import normalize_function

__all__ = ["SYNC", "REFRESH", "Unsyncable", "GraphArgs", "SyncPlan", "plan_sync", "lookup"]


class Unsyncable(Exception):
    """A derivation cannot compute its attribute for this module (the reason is the message)."""


# -- derivations: (module, graph args, module path) -> value -----------------------------------------------

Derivation = Callable[[nn.Module, "GraphArgs", str], Any]


def _tensor(m: nn.Module, path: str) -> torch.Tensor:
    t = attrgetter(path)(m)
    if not isinstance(t, torch.Tensor):
        raise Unsyncable(f"{path} is not a tensor")
    return t


def size(path: str, dim: int) -> Derivation:
    """``size("weight", 0)``: the size of one dimension of a tensor of the module."""
    return lambda m, g, where: int(_tensor(m, path).shape[dim])


def first_size(paths: tuple, dim: int) -> Derivation:
    """The size of ``dim`` of the first of ``paths`` that is a tensor (BatchNorm without affine)."""
    def derive(m, g, where):
        for p in paths:
            t = getattr(m, p, None)
            if isinstance(t, torch.Tensor):
                return int(t.shape[dim])
        raise Unsyncable(f"none of {', '.join(paths)} is a tensor")
    return derive


def shape(path: str) -> Derivation:
    return lambda m, g, where: tuple(int(n) for n in _tensor(m, path).shape)


def _exact(num: int, den: int, what: str) -> int:
    if den <= 0 or num % den:
        raise Unsyncable(f"{what}: {num} is not a multiple of {den}")
    return num // den


def per(path: str, dim: int, unit: str, parts: int = 1) -> Derivation:
    """``per("q_proj.weight", 0, "head_dim")``: whole units (heads) of a fixed-size attribute."""
    def derive(m, g, where):
        n = int(_tensor(m, path).shape[dim])
        whole = _exact(n, parts, f"{path} dim {dim}")
        return _exact(whole, int(getattr(m, unit)), f"{path} dim {dim} / {parts} / {unit}")
    return derive


def ratio(num: Derivation, den: Derivation, what: str) -> Derivation:
    return lambda m, g, where: _exact(num(m, g, where), den(m, g, where), what)


def diff_half(total: Derivation, part: Derivation, unit: str) -> Derivation:
    """``(total - part) / 2 / unit``: kv heads of a fused q ++ k ++ v projection."""
    def derive(m, g, where):
        return _exact(_exact(total(m, g, where) - part(m, g, where), 2, "k and v rows"), int(getattr(m, unit)),
                      f"kv rows / {unit}")
    return derive


def uniform(attr: str, child_type: str) -> Derivation:
    """One number for every ``child_type`` below the module (Falcon/Bloom ``num_heads`` for ALiBi)."""
    def derive(m, g, where):
        values = {getattr(c, attr) for c in m.modules() if _qualname(type(c)) == child_type and hasattr(c, attr)}
        if len(values) != 1:
            raise Unsyncable(f"{child_type}.{attr} differs across layers ({sorted(values)}); "
                             "one value describes them all")
        return values.pop()
    return derive


def graph_arg(param: str, name: str, fallback: Optional[Derivation] = None) -> Derivation:
    """The argument ``name`` the graph passes with tensor ``param`` (``groups`` of the convolution reading
    ``weight``), which the graph rewrite already recomputed; ``fallback`` where the graph has no such call."""
    def derive(m, g, where):
        value = g.arg(f"{where}.{param}" if where else param, name)
        if value is not None:
            return value
        if fallback is None:
            raise Unsyncable(f"no graph call passes {name} with {param}")
        return fallback(m, g, where)
    return derive


def _depthwise_groups(m, g, where) -> int:
    if m.groups == 1:
        return 1
    if m.groups == m.in_channels == m.out_channels:  # depthwise: one channel per group
        return int(m.weight.shape[0])
    raise Unsyncable("a grouped convolution's groups come only from the graph")


def _norm_groups(m, g, where) -> int:
    if m.num_groups == 1:
        return 1
    if m.num_groups == m.num_channels:  # one channel per group
        return int(m.weight.shape[0])
    raise Unsyncable("GroupNorm's groups come only from the graph")


def _conv_in(m, g, where) -> int:
    w, groups = m.weight, _conv_groups(m, g, where)
    return int(w.shape[0]) if m.transposed else int(w.shape[1]) * groups


def _conv_out(m, g, where) -> int:
    w, groups = m.weight, _conv_groups(m, g, where)
    return int(w.shape[1]) * groups if m.transposed else int(w.shape[0])


_conv_groups = graph_arg("weight", "groups", _depthwise_groups)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# -- the table ---------------------------------------------------------------------------------------------

_LLAMA = {  # q/k/v/o projections with a fixed head_dim (llama, mistral, qwen2/3, gemma/2, mixtral, ...)
    "num_key_value_groups": ratio(size("q_proj.weight", 0), size("k_proj.weight", 0), "q rows / k rows"),
    "num_heads": per("q_proj.weight", 0, "head_dim"),
    "num_key_value_heads": per("k_proj.weight", 0, "head_dim"),
}
_PHI3 = {  # fused qkv_proj = q ++ k ++ v
    "num_key_value_heads": diff_half(size("qkv_proj.weight", 0), size("o_proj.weight", 1), "head_dim"),
    "num_key_value_groups": ratio(per("o_proj.weight", 1, "head_dim"),
                                  diff_half(size("qkv_proj.weight", 0), size("o_proj.weight", 1), "head_dim"),
                                  "q heads / kv heads"),
}
_BART = {"num_heads": per("q_proj.weight", 0, "head_dim"), "embed_dim": size("q_proj.weight", 1)}
_HEAD_DIM = {"num_attention_heads": per("q_proj.weight", 0, "head_dim")}  # vit, swin, segformer
_BERT = {"num_attention_heads": per("query.weight", 0, "attention_head_size"), "all_head_size": size("query.weight", 0)}
_MLP = {"hidden_size": size("down_proj.weight", 0), "intermediate_size": size("down_proj.weight", 1)}
_T = "transformers.models."

SYNC: dict = {
    nn.Linear: {"in_features": size("weight", 1), "out_features": size("weight", 0)},
    nn.modules.conv._ConvNd: {"groups": _conv_groups, "in_channels": _conv_in, "out_channels": _conv_out},
    nn.modules.batchnorm._NormBase: {"num_features": first_size(("weight", "running_mean"), 0)},
    nn.LayerNorm: {"normalized_shape": shape("weight")},
    **({nn.RMSNorm: {"normalized_shape": shape("weight")}} if hasattr(nn, "RMSNorm") else {}),
    nn.PReLU: {"num_parameters": size("weight", 0)},
    nn.Bilinear: {"in1_features": size("weight", 1), "in2_features": size("weight", 2),
                  "out_features": size("weight", 0)},
    nn.EmbeddingBag: {"num_embeddings": size("weight", 0), "embedding_dim": size("weight", 1)},
    nn.GroupNorm: {"num_channels": size("weight", 0), "num_groups": graph_arg("weight", "num_groups", _norm_groups)},
    nn.Embedding: {"num_embeddings": size("weight", 0), "embedding_dim": size("weight", 1)},
    nn.MultiheadAttention: {"embed_dim": size("in_proj_weight", 1), "kdim": size("in_proj_weight", 1),
                            "vdim": size("in_proj_weight", 1), "num_heads": per("in_proj_weight", 0, "head_dim", 3)},
    nn.RNNBase: {"input_size": size("weight_ih_l0", 1)},
    # Hugging Face transformers
    "transformers.pytorch_utils.Conv1D": {"nf": size("weight", 1), "nx": size("weight", 0)},
    **{f"{_T}{fam}.modeling_{fam}.{cls}Attention": _LLAMA for fam, cls in (
        ("llama", "Llama"), ("mistral", "Mistral"), ("qwen2", "Qwen2"), ("qwen3", "Qwen3"), ("gemma", "Gemma"),
        ("gemma2", "Gemma2"), ("gemma3", "Gemma3"), ("mixtral", "Mixtral"), ("qwen2_moe", "Qwen2Moe"),
        ("qwen3_moe", "Qwen3Moe"), ("olmo", "Olmo"), ("olmo2", "Olmo2"), ("granite", "Granite"),
        ("starcoder2", "Starcoder2"), ("cohere", "Cohere"), ("stablelm", "StableLm"), ("phi", "Phi"))},
    **{f"{_T}{fam}.modeling_{fam}.{cls}MLP": _MLP for fam, cls in (
        ("llama", "Llama"), ("mistral", "Mistral"), ("qwen2", "Qwen2"), ("qwen3", "Qwen3"), ("gemma", "Gemma"),
        ("gemma2", "Gemma2"))},
    **{f"{_T}{fam}.modeling_{fam}.{cls}DecoderLayer": {"hidden_size": size("input_layernorm.weight", 0)}
       for fam, cls in (("llama", "Llama"), ("mistral", "Mistral"), ("qwen2", "Qwen2"), ("qwen3", "Qwen3"),
                        ("gemma", "Gemma"), ("gemma2", "Gemma2"), ("mixtral", "Mixtral"), ("phi3", "Phi3"))},
    f"{_T}phi3.modeling_phi3.Phi3Attention": _PHI3,
    f"{_T}mixtral.modeling_mixtral.MixtralExperts": {
        "num_experts": size("down_proj", 0), "hidden_dim": size("down_proj", 1),
        "intermediate_dim": size("down_proj", 2)},
    f"{_T}mixtral.modeling_mixtral.MixtralTopKRouter": {"num_experts": size("weight", 0),
                                                        "hidden_dim": size("weight", 1)},
    f"{_T}gpt2.modeling_gpt2.GPT2Attention": {
        "split_size": size("c_proj.weight", 0), "embed_dim": size("c_proj.weight", 0),
        "num_heads": per("c_proj.weight", 0, "head_dim")},
    f"{_T}gpt2.modeling_gpt2.GPT2Model": {"embed_dim": size("wte.weight", 1)},
    **{f"{_T}{fam}.modeling_{fam}.{cls}Attention": _BART for fam, cls in (
        ("opt", "OPT"), ("bart", "Bart"), ("whisper", "Whisper"), ("wav2vec2", "Wav2Vec2"), ("mbart", "MBart"),
        ("marian", "Marian"), ("pegasus", "Pegasus"), ("hubert", "Hubert"), ("clip", "CLIP"), ("siglip", "Siglip"))},
    **{f"{_T}{fam}.modeling_{fam}.{cls}{kind}Layer": {"embed_dim": size("self_attn_layer_norm.weight", 0)}
       for fam, cls in (("opt", "OPT"), ("bart", "Bart"), ("whisper", "Whisper"))
       for kind in (("Decoder",) if fam == "opt" else ("Encoder", "Decoder"))},
    f"{_T}falcon.modeling_falcon.FalconAttention": {
        "num_heads": per("dense.weight", 1, "head_dim"), "hidden_size": size("query_key_value.weight", 1),
        "split_size": size("query_key_value.weight", 1),
        "num_kv_heads": diff_half(size("query_key_value.weight", 0), size("dense.weight", 1), "head_dim")},
    f"{_T}falcon.modeling_falcon.FalconDecoderLayer": {"num_heads": lambda m, g, w: m.self_attention.num_heads},
    f"{_T}falcon.modeling_falcon.FalconModel": {
        "num_heads": uniform("num_heads", f"{_T}falcon.modeling_falcon.FalconAttention"),
        "embed_dim": size("word_embeddings.weight", 1)},
    f"{_T}bloom.modeling_bloom.BloomAttention": {
        "num_heads": per("dense.weight", 1, "head_dim"), "hidden_size": size("dense.weight", 0),
        "split_size": size("dense.weight", 0)},
    f"{_T}bloom.modeling_bloom.BloomBlock": {"num_heads": lambda m, g, w: m.self_attention.num_heads},
    f"{_T}bloom.modeling_bloom.BloomModel": {
        "num_heads": uniform("num_heads", f"{_T}bloom.modeling_bloom.BloomAttention"),
        "embed_dim": size("word_embeddings.weight", 1)},
    **{f"{_T}{fam}.modeling_{fam}.{cls}{kind}Attention": _BERT for fam, cls in (
        ("bert", "Bert"), ("roberta", "Roberta"), ("xlm_roberta", "XLMRoberta"), ("electra", "Electra"),
        ("camembert", "Camembert")) for kind in ("Self", "Cross")},
    f"{_T}mobilevit.modeling_mobilevit.MobileViTSelfAttention": _BERT,
    f"{_T}deberta_v2.modeling_deberta_v2.DisentangledSelfAttention": {
        "num_attention_heads": per("query_proj.weight", 0, "attention_head_size"),
        "all_head_size": size("query_proj.weight", 0)},
    f"{_T}t5.modeling_t5.T5Attention": {
        "n_heads": per("q.weight", 0, "key_value_proj_dim"), "inner_dim": size("q.weight", 0),
        "d_model": size("q.weight", 1)},
    **{f"{_T}{fam}.modeling_{fam}.{cls}Attention": _HEAD_DIM for fam, cls in (
        ("vit", "ViT"), ("swin", "Swin"), ("segformer", "Segformer"), ("dinov2", "Dinov2"), ("deit", "DeiT"))},
    f"{_T}swin.modeling_swin.SwinModel": {"num_features": size("layernorm.weight", 0)},
    # timm
    "timm.layers.attention.Attention": {"num_heads": per("qkv.weight", 0, "head_dim", 3),
                                        "attn_dim": size("proj.weight", 1)},
    "timm.models.swin_transformer.WindowAttention": {"num_heads": size("relative_position_bias_table", 1),
                                                     "dim": size("qkv.weight", 1)},
}

# run after a module's attributes are set
REFRESH: dict = {nn.RNNBase: lambda m: m._init_flat_weights()}


def lookup(table: dict, m: nn.Module) -> Optional[Any]:
    """The entry of ``table`` for ``type(m)`` or its nearest base, by class or qualified name."""
    for base in type(m).__mro__:
        for key in (base, _qualname(base)):
            if key in table:
                return table[key]
    return None


# -- graph arguments ---------------------------------------------------------------------------------------

class GraphArgs:
    """The arguments graph calls pass along with each parameter (``groups`` of a convolution)."""

    def __init__(self, gm: Optional[fx.GraphModule]):
        self.gm, self.calls = gm, {}
        for node in gm.graph.nodes if gm is not None else ():
            if node.op == "get_attr":
                self.calls[node.target] = [u for u in node.users if u.op == "call_function"]

    def arg(self, target: str, name: str) -> Optional[Any]:
        for node in self.calls.get(target, ()):
            try:
                pair = normalize_function(node.target, node.args, node.kwargs, normalize_to_only_use_kwargs=True)
            except Exception:  # no schema to normalise against
                continue
            if pair is not None and name in pair.kwargs and isinstance(pair.kwargs[name], int):
                return pair.kwargs[name]
        return None


# -- the plan ----------------------------------------------------------------------------------------------

@dataclass
class SyncPlan:
    """Derivations that reproduce the unpruned model's attributes, per module path."""

    trusted: dict = field(default_factory=dict)  # path -> {attr: derivation}

    def covered(self, path: str, attr: str) -> bool:
        return attr in self.trusted.get(path, {})


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return tuple(a) == tuple(b)
    return isinstance(a, int) and isinstance(b, int) and a == b


def plan_sync(model: nn.Module, graph: GraphArgs) -> SyncPlan:
    """Check every table derivation against the unpruned ``model``; keep those that reproduce it."""
    plan = SyncPlan()
    for path, m in model.named_modules():
        entry = lookup(SYNC, m)
        for attr, derive in (entry or {}).items():
            if not hasattr(m, attr) or isinstance(getattr(m, attr), bool):
                continue
            try:
                ok = _same(derive(m, graph, path), getattr(m, attr))
            except Exception:
                ok = False
            if ok:
                plan.trusted.setdefault(path, {})[attr] = derive
    return plan


def apply_sync(model: nn.Module, plan: SyncPlan, graph: GraphArgs, setter: Callable) -> list:
    """Set every trusted attribute from the resized model, children before parents;
    returns ``(path.attr, reason)`` for those that cannot be derived any more."""
    failed = []
    for path, m in reversed(list(model.named_modules())):
        derivations = plan.trusted.get(path, {})
        values = {}
        for attr, derive in derivations.items():  # all from the current state, then set
            try:
                values[attr] = derive(m, graph, path)
            except Unsyncable as e:
                failed.append((f"{path or type(model).__name__}.{attr}", str(e)))
        for attr, value in values.items():
            old = getattr(m, attr)
            if not _same(value, old):
                setter(m, attr, type(old)(value) if isinstance(old, (tuple, list)) else value)
        refresh = lookup(REFRESH, m)
        if refresh is not None and derivations:
            refresh(m)
    return failed
