"""Every ``fxprune`` name stored on a graph, a model or a saved file: one constant each.

Readers and writers import these; no module spells the strings (``tests/test_keys.py`` checks).
Values are part of the public surface (``result.meta[CERTIFICATE]``, ``model.fxprune_certificate``,
saved files): change one only with a compatibility path.

Example::

    >>> import torch, fxprune
    >>> from fxprune.passes import keys
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> small = fxprune.prune(net, (torch.randn(1, 4),), ratio=0.5)
    >>> small.meta[keys.CERTIFICATE] is getattr(small, keys.CERTIFICATE_ATTR)
    True
"""

__all__ = ["META", "FOLDS", "CAPTURE_KWARGS", "TRAINING_READS", "TRAIN_REFUSED", "EXAMPLE", "CERTIFICATE",
           "CERTIFICATE_ATTR", "REPAIR", "EXPRESSIBLE_ATTR", "TRAINING_LOG_ATTR", "SAVED_EXTRA", "SAVED_PICKLE",
           "STRICT_VAR", "USER_MODULE_PREFIX"]

# --- gm.meta keys (graph-level) and node.meta keys ---
META = "fxprune"  # node.meta: the ChannelMeta of each node; gm.meta: ChannelAnalysisPass's AnalysisResult
FOLDS = "fxprune.folds"  # gm.meta: the FoldRegistry of a folded capture (capture -> analysis/rewrite)
CAPTURE_KWARGS = "fxprune.capture_kwargs"  # gm.meta: forward kwargs the capture fixed, e.g. use_cache=False
TRAINING_READS = "fxprune.training_reads"  # gm.meta, transient: modules whose .training the trace read
TRAIN_REFUSED = "fxprune.train_refused"  # gm.meta: why the graph refuses train() (capture/modes.py)
EXAMPLE = "fxprune.example"  # gm.meta: (args, kwargs) the result was captured with, for fxprune.save
CERTIFICATE = "fxprune.certificate"  # gm.meta: the permutation oracle's Certificate of the result
REPAIR = "fxprune_repair"  # gm.meta and module attribute: the RepairReport written into the result
PROFILE = "fxprune.profile"  # gm.meta: the phase Profile of a prune(profile=True) result (fxprune/profile.py)

# --- attributes set on returned models ---
CERTIFICATE_ATTR = "fxprune_certificate"  # the Certificate (same object as meta[CERTIFICATE]), any module
EXPRESSIBLE_ATTR = "fxprune_expressible"  # in-place prune: which groups were left out and why
LATENCY_ATTR = "fxprune_latency"  # prune(runtime=...): the LatencyReport, dense vs pruned on the runtime
PROFILE_ATTR = "fxprune_profile"  # the phase Profile of a prune(profile=True) result, any module
TRAINING_LOG_ATTR = "_fxprune_training_log"  # transient, during capture: the .training read log

# --- names inside saved files and process state ---
SAVED_EXTRA = "fxprune.json"  # fxprune.save: the extra file of an exported program
SAVED_PICKLE = "fxprune_pickled_model"  # fxprune.save: payload key of a pickled (non-exportable) model
STRICT_VAR = "fxprune_strict"  # name of the strict-mode ContextVar (passes/errors.py)
PROFILE_VAR = "fxprune_profile"  # name of the profiling ContextVar (fxprune/profile.py)
USER_MODULE_PREFIX = "_fxprune_user_"  # sys.modules name prefix of a model file the zoo imports by path
