"""Save a model pruned in place as a Hugging Face checkpoint that says what it is.

The in-place step already updated ``model.config`` (Note [In place] in
``fxprune/checks/inplace.py``). A uniform model's config is a stock config:
``save_pretrained`` writes it as it is and plain transformers loads it. A model
with per-layer widths carries the ``fxprune`` section; its config.json then gets
``model_type = "fxprune_<type>"``, so that ``AutoModel*.from_pretrained`` refuses
it ("does not recognize this architecture") instead of loading garbage, and
:func:`fxprune.hf.from_pretrained` reads it.
"""
from __future__ import annotations

import json
import os

import torch.nn as nn

from .config import ORIGINAL, PREFIX, SECTION

__all__ = ["save_pretrained", "mark_config_file"]


def mark_config_file(path: str) -> bool:
    """Give ``path``/config.json the ``fxprune_`` model_type if it has an fxprune section; True if it has."""
    file = os.path.join(path, "config.json")
    with open(file) as f:
        data = json.load(f)
    section = data.get(SECTION)
    if not section:
        return False
    data["model_type"] = PREFIX + section[ORIGINAL]
    tmp = file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, file)
    return True


def save_pretrained(model: nn.Module, path: str, **kwargs) -> bool:
    """``model.save_pretrained(path, **kwargs)``, marking a per-layer config (see the module docstring).

    Returns:
        True when the checkpoint has per-layer widths (load it with :func:`fxprune.hf.from_pretrained`),
        False when it is a stock checkpoint (plain ``from_pretrained`` loads it too).

    Example::

        >>> small = fxprune.prune(model, (), example_kwargs=dict(input_ids=ids), inplace=True)  # doctest: +SKIP
        >>> fxprune.hf.save_pretrained(small, "pruned")                                       # doctest: +SKIP
    """
    model.save_pretrained(path, **kwargs)
    return mark_config_file(path)
