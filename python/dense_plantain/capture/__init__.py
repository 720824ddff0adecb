"""Capture: prompts through FLUX.2 [klein], one number per unit per prompt.

Modules, one idea each:

* ``job``: ``CaptureSettings`` (what is measured), ``CaptureJob`` (the whole option list of a run,
  spelled once) and ``ShardPlan`` (which pairs a process captures; one process is world_size 1).
* ``run``: the runner and the notebook API: ``capture_pairs(pipe, probe) -> store.Capture``
  (in memory, ``analysis.analyze`` takes it), ``capture_prompts(pipe, prompts) -> UnitValues``,
  ``run_job(job)`` and ``run_capture(model, prompts_file, out, ...)`` (the CLI's capture file).
* ``partial``: unfinished work: the partial file, resume checks, pairs kept on disk, the output lock.
* ``distributed``: torchrun shards and their merge (``run_distributed_capture(job)``, ``finish_shards(job)``).
* ``provenance``: what a capture records; ``COMPARABLE_SETTINGS`` and ``compare_metas``, the one
  rule for which captures are comparable; the weights' record and hash.
* ``text``: prompt token counts under the pipeline's tokenizer and chat template; the 512-token cut.
* ``hooks``: the unit hooks; ``model``: finding and loading pipelines; ``tiny``: tiny random pipelines.

Public API:
* ``install_unit_hooks(transformer, layout) -> UnitHooks``: the hooks alone, on a bare
  ``Flux2Transformer2DModel`` (benchmarks): forward, then ``hooks.end()`` (device tensor) or
  ``hooks.collect()`` (numpy), ``hooks.remove()``. ``random_transformer("klein-4b", ...)`` and
  ``synthetic_inputs(transformer, ...)`` build the model and one forward's inputs without weights.
* ``load_pipeline``, ``load_transformer_config``: model loading (hub id or folder), configs.
* ``build_tiny_pipeline``, ``make_tiny_model``, ``cached_tiny_model``: tiny random pipelines.

Heavy imports (torch, diffusers) happen inside the functions, so importing this package is cheap.
"""

from dense_plantain.capture.distributed import finish_shards, run_distributed_capture, shard_range
from dense_plantain.capture.hooks import UnitHooks, install_unit_hooks, plan_reductions
from dense_plantain.capture.job import CaptureJob, CaptureSettings, ShardPlan
from dense_plantain.capture.model import (
    DEFAULT_MODEL,
    KLEIN_4B_CONFIG,
    LoadedModel,
    load_pipeline,
    load_transformer_config,
    random_transformer,
    resolve_model,
    synthetic_inputs,
)
from dense_plantain.capture.partial import partial_path
from dense_plantain.capture.provenance import COMPARABLE_SETTINGS, compare_metas
from dense_plantain.capture.run import (
    CaptureResult,
    CaptureWarning,
    UnitValues,
    capture_pairs,
    capture_prompts,
    initial_noise,
    run_capture,
    run_job,
)
from dense_plantain.capture.tiny import build_tiny_pipeline, cached_tiny_model, make_tiny_model

__all__ = [
    "COMPARABLE_SETTINGS",
    "CaptureJob",
    "CaptureWarning",
    "ShardPlan",
    "capture_pairs",
    "compare_metas",
    "run_job",
    "DEFAULT_MODEL",
    "KLEIN_4B_CONFIG",
    "CaptureResult",
    "CaptureSettings",
    "LoadedModel",
    "UnitHooks",
    "UnitValues",
    "build_tiny_pipeline",
    "cached_tiny_model",
    "capture_prompts",
    "finish_shards",
    "initial_noise",
    "install_unit_hooks",
    "load_pipeline",
    "load_transformer_config",
    "make_tiny_model",
    "partial_path",
    "plan_reductions",
    "random_transformer",
    "resolve_model",
    "run_capture",
    "run_distributed_capture",
    "shard_range",
    "synthetic_inputs",
]
