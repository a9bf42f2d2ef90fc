"""DependencyGraph and Group: the analysis result as users see it."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property
from typing import Optional

from tabulate import tabulate

from fxprune.passes import CONSUMES, PRODUCES, AnalysisResult, Layout, ParamUse, get_channel_meta

__all__ = ["DependencyGraph", "Group", "MemberLayout"]


@dataclass(frozen=True)
class MemberLayout:
    """One parameter (or buffer) dimension that carries a group.

    Attributes:
        param: the tensor's qualified name on ``dg.gm``.
        dim: the dimension.
        shape: the tensor's shape.
        layout: the dimension's :class:`~fxprune.passes.Layout`; ``layout.coordinate_map(group.atom)``
            gives the group coordinate of every index along ``dim``.
        role: ``"consumes"`` where the dimension is contracted against an activation that carries
            the group (conv in-channels, linear columns): removing coordinates changes that
            consumer's output. ``"produces"`` otherwise (out-channels, rows, biases, norm
            parameters): the coordinates it produces go away.
    """

    param: str
    dim: int
    shape: tuple
    layout: Layout
    role: str


class Group:
    """A set of coupled channels: pruning coordinate ``i`` removes it from every member.

    Attributes:
        index: position in ``DependencyGraph.groups``.
        atom: the atom id the passes know the group by (keys of ``fxprune.passes.rewrite_graph``).
        size: number of coordinates.
        members: ``(parameter name, dim)`` pairs whose dimension carries the group.
        layouts: one :class:`MemberLayout` per member, in the same order;
            ``producers`` and ``consumers`` split them by role.
    """

    def __init__(self, graph: "DependencyGraph", index: int, atom: int, size: int, members: list):
        self.graph, self.index, self.atom, self.size, self.members = graph, index, atom, size, members

    @property
    def name(self) -> str:
        return f"G{self.index}"

    def __repr__(self) -> str:
        shown = ", ".join(f"{t}[{d}]" for t, d in self.members[:3])
        more = f", +{len(self.members) - 3} more" if len(self.members) > 3 else ""
        return f"Group({self.name}, size={self.size}, members=[{shown}{more}])"

    @cached_property
    def layouts(self) -> tuple:
        """Every member dimension with its shape, layout and role (:class:`MemberLayout`).

        Example::

            >>> import torch, fxprune
            >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
            >>> (g,) = fxprune.analyze(net, (torch.randn(1, 4),)).groups
            >>> [(m.param, m.dim, m.role) for m in g.layouts]
            [('0.weight', 0, 'produces'), ('0.bias', 0, 'produces'), ('2.weight', 1, 'consumes')]
            >>> [m.param for m in g.consumers], str(g.consumers[0].layout)
            (['2.weight'], '[8]')
        """
        out = []
        for target, d in self.members:
            use = self.graph.param_use(target)
            out.append(MemberLayout(target, d, tuple(lay.size for lay in use.dims), use.dims[d], use.role(d)))
        return tuple(out)

    @property
    def producers(self) -> tuple:
        """Members whose dimension produces the group's coordinates (see :class:`MemberLayout`)."""
        return tuple(m for m in self.layouts if m.role == PRODUCES)

    @property
    def consumers(self) -> tuple:
        """Members whose dimension is contracted against the group's coordinates (see :class:`MemberLayout`)."""
        return tuple(m for m in self.layouts if m.role == CONSUMES)

    def details(self) -> str:
        """A table of every parameter/buffer dimension this group touches, with its layout."""
        rows = [[m.param, m.shape, m.dim, self.graph.format_layout(m.layout)] for m in self.layouts]
        title = f"{self.name}: {self.size} coordinates, {len(rows)} parameter dims"
        return title + "\n" + tabulate(rows, headers=["parameter", "shape", "dim", "layout"])

    @property
    def mixing(self) -> Optional[str]:
        """Why removing coordinates changes kept outputs (a norm or reduction mixes them), if so."""
        return self.graph.result.axes.mixing_reason(self.atom)


class DependencyGraph:
    """The channel dependencies of one captured graph.

    Attributes:
        gm: the analysed ``fx.GraphModule`` (nodes carry ``node.meta["fxprune"]``).
        groups: the prunable groups, in graph order.
        param_names: every parameter, buffer and tensor constant the graph reads, in graph order.
        front_end: how the graph was captured.
        source_name: the analysed model's class name.
        lifted: positions of the graph inputs that are parameters (``torch.compile`` graphs).
        example_args, example_kwargs: the example inputs the graph was captured with.
        model: the analysed model (``nn.Module`` or ``fx.GraphModule``), never modified
            unless in-place pruning is asked for.
        train_refused: why the graph refuses ``train()`` (Note [Training mode] in
            ``fxprune/capture/modes.py``), or ``None``.
        training_flags: the analysed model's ``{qualified name: training}`` at analysis time.
    """

    def __init__(self, result: AnalysisResult, front_end: str, source_name: str, lifted=(), *,
                 example_args: tuple = (), example_kwargs: Optional[dict] = None, model=None,
                 train_refused: Optional[str] = None, training_flags: Optional[dict] = None):
        self.result, self.gm, self.front_end = result, result.gm, front_end
        self.source_name, self.lifted = source_name, tuple(lifted)
        self.example_args, self.example_kwargs = tuple(example_args), dict(example_kwargs or {})
        self.model, self.train_refused = model, train_refused
        self.training_flags = dict(training_flags or {})
        self._certificate = None  # the permutation oracle's Certificate, computed once (fxprune.api.certificate)
        self.groups = [
            Group(self, i, a, result.axes.size(a), result.members[a]) for i, a in enumerate(result.group_atoms)
        ]
        self._by_atom = {g.atom: g for g in self.groups}
        self._uses = self._collect_uses()
        self.param_names = tuple(self._uses)

    def _collect_uses(self) -> dict:
        uses: dict = {}
        for node in self.gm.graph.nodes:
            for use in get_channel_meta(node).params:
                uses.setdefault(use.target, use)
        return uses

    def param_use(self, name: str) -> ParamUse:
        """How the graph reads tensor ``name``: the Layout of each dim and which dims are contracted.

        Example::

            >>> import torch, fxprune
            >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
            >>> use = fxprune.analyze(net, (torch.randn(1, 4),)).param_use("2.weight")
            >>> [lay.size for lay in use.dims], use.role(0), use.role(1)
            ([2, 8], 'produces', 'consumes')
        """
        try:
            return self._uses[name]
        except KeyError:
            raise KeyError(f"{name!r} is not a tensor this graph reads; dg.param_names lists them") from None

    def group_of(self, atom: int) -> Optional[Group]:
        """The group an atom id stands for, or None (a pinned or size-1 atom)."""
        return self._by_atom.get(atom)

    def format_layout(self, layout: Layout) -> str:
        """``layout`` with group atoms as their names (``G3``) and other atoms as ``[size]``."""
        return layout.format(lambda a: self._by_atom[a.id].name if a.id in self._by_atom else f"[{a.size}]")

    def __repr__(self) -> str:
        return f"DependencyGraph({self.source_name}: {len(self.groups)} groups, front end {self.front_end})"

    def report(self) -> str:
        """Groups, pinned axes and why they are pinned, unknown ops, and how the graph was captured."""
        r = self.result
        lines = [
            f"fxprune analysis of {self.source_name}",
            f"  front end: {self.front_end}; shapes from {r.shape_mode}; "
            f"{len(self.gm.graph.nodes)} nodes, {len(self.param_names)} parameter tensors",
            f"  {len(self.groups)} prunable groups, {sum(g.size for g in self.groups)} coordinates",
        ]
        if self.groups:
            rows = [[g.name, g.size, len(g.members), _short_members(g)] for g in self.groups]
            lines.append(tabulate(rows, headers=["group", "size", "members", "parameters"]))
        else:
            lines.append("  no prunable group: every channel axis is pinned (see below)")
        lines.extend(self._pinned_section())
        if r.unknown:
            lines.append(f"\nops without a rule (their axes are pinned): {len(r.unknown)}")
            for name, why in r.unknown[:20]:
                lines.append(f"  {name}: {why}")
        return "\n".join(lines)

    def _pinned_section(self) -> list:
        by_reason = defaultdict(list)
        for atom, reasons in self.result.pinned.items():
            if self.result.axes.size(atom) > 1:
                by_reason[reasons[0] if reasons else "pinned"].append(atom)
        if not by_reason:
            return []
        rows = []
        for reason, atoms in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
            params = sorted({t for a in atoms for t, _ in self.result.members[a]})
            rows.append([_clip(reason, 70), len(atoms), sum(self.result.axes.size(a) for a in atoms),
                         _clip(", ".join(params[:2]) + (f" +{len(params) - 2}" if len(params) > 2 else ""), 50)])
        return ["\npinned parameter axes (never pruned):",
                tabulate(rows, headers=["reason", "axes", "channels", "parameters"])]


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


def _short_members(g: Group) -> str:
    names = [f"{t}[{d}]" for t, d in g.members[:2]]
    return _clip(", ".join(names) + (f" +{len(g.members) - 2}" if len(g.members) > 2 else ""), 60)
