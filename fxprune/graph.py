"""DependencyGraph and Group: the analysis result as users see it."""
from __future__ import annotations

from collections import defaultdict
from operator import attrgetter
from typing import Optional

from tabulate import tabulate

from fxprune.passes import AnalysisResult, Atom, get_channel_meta

__all__ = ["DependencyGraph", "Group", "format_layout"]


def format_layout(layout, names: dict) -> str:
    """Render a resolved layout: ``++`` concatenates segments, ``x`` multiplies factors.

    Group atoms print as ``G<i>``; other atoms as their size in brackets.
    """
    segs = []
    for seg in layout:
        parts = []
        for f in seg:
            if isinstance(f, Atom):
                parts.append(names.get(f.id, f"[{f.size}]"))
            else:
                parts.append(f"({format_layout(f, names)})")
        segs.append(" x ".join(parts) if parts else "[1]")
    return " ++ ".join(segs) if segs else "[0]"


class Group:
    """A set of coupled channels: pruning coordinate ``i`` removes it from every member.

    Attributes:
        index: position in ``DependencyGraph.groups``.
        size: number of coordinates.
        members: ``(parameter name, dim)`` pairs whose dimension carries the group.
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

    def details(self) -> str:
        """A table of every parameter/buffer dimension this group touches, with its layout."""
        rows = []
        for target, d, shape, layout in self.graph._member_layouts(self):
            rows.append([target, tuple(shape), d, format_layout(layout, self.graph._names)])
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
        front_end: how the graph was captured.
    """

    def __init__(self, result: AnalysisResult, front_end: str, source_name: str, lifted=()):
        self.result, self.gm, self.front_end = result, result.gm, front_end
        self.source_name, self.lifted = source_name, tuple(lifted)
        self.groups = [
            Group(self, i, a, result.axes.size(a), result.members[a]) for i, a in enumerate(result.groups)
        ]
        self._names = {g.atom: g.name for g in self.groups}
        self._params = self._collect_params()

    def _collect_params(self) -> dict:
        params = {}
        for node in self.gm.graph.nodes:
            for use in get_channel_meta(node).params:
                params.setdefault(use.target, use)
        return params

    def _member_layouts(self, group: Group):
        for target, d in group.members:
            use = self._params[target]
            shape = tuple(attrgetter(target)(self.gm).shape)
            yield target, d, shape, use.dims[d]

    def __repr__(self) -> str:
        return f"DependencyGraph({self.source_name}: {len(self.groups)} groups, front end {self.front_end})"

    def report(self) -> str:
        """Groups, pinned axes and why they are pinned, unknown ops, and how the graph was captured."""
        r = self.result
        lines = [
            f"fxprune analysis of {self.source_name}",
            f"  front end: {self.front_end}; shapes from {r.shape_mode}; "
            f"{len(self.gm.graph.nodes)} nodes, {len(self._params)} parameter tensors",
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
