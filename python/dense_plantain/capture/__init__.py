"""Capture: prompts through FLUX.2 [klein], one number per unit per prompt.

Public API:

* ``capture_prompts(pipe, prompts, ...) -> UnitValues``: notebooks; an already-loaded
  ``Flux2KleinPipeline`` and a list of prompts give float32 ``[prompts x units]`` plus the layout.
* ``run_capture(model, prompts_file, out, ...)``: the ``dense-plantain capture`` command (pairs,
  batches, partial files, resume, provenance).
* ``run_distributed_capture(...)``: the same under torchrun, one shard of pairs per process,
  merged by rank 0; ``finish_shards(...)`` finishes and merges a distributed run's shards in one
  process (``distributed``).
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
from dense_plantain.capture.run import (
    CaptureResult,
    CaptureSettings,
    UnitValues,
    capture_prompts,
    initial_noise,
    partial_path,
    run_capture,
)
from dense_plantain.capture.tiny import build_tiny_pipeline, cached_tiny_model, make_tiny_model

__all__ = [
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
