"""The patch run: per pair, A and B once, then patched runs for every unit set.

Protocol (as ``capture``): one denoising step of the pipeline (``num_inference_steps=1``),
guidance 1.0, 512 text tokens, text-encoder layers (9, 18, 27), and every prompt starts from the
pipeline's single-prompt noise draw for ``--seed`` (``capture.run.initial_noise``), repeated.

For a batch of pairs (all of one cross-fitting fold):

1. the pipeline runs the batch's A prompts, then its B prompts. A pre-hook on the transformer
   keeps its inputs (so patched runs reuse them: no second text encoding), a forward hook keeps
   its prediction for the image tokens (``L``), and ``Keep`` hooks keep the columns of the
   first kept group's units (never a whole activation);
2. for every set instance of the group (a set or one of its random sets): four transformer
   forwards on the kept inputs, with ``Write`` hooks: A with the set's columns from B, B with
   them from A, and A and B with them from the A/B mean;
3. each further kept group: its columns are kept in one transformer forward of A and one of B
   on the same inputs (``keep_pass``), after the previous group's are let go, then step 2.

Kept groups (``group_instances``): the set instances, in order, each group the most whose
units' union fits ``max_kept_mib`` (A's and B's columns of a full batch, ``unit_bytes``); an
instance that alone does not fit is a group of its own. The numbers do not depend on it.

``L`` is the transformer's prediction for the image tokens (the velocity of the flow-matching
step, ``noise_pred``). The step's output latents are
``unpatchify((x_T - L) * bn_std + bn_mean)``: a fixed affine map of ``L`` whose per-channel
scale (``bn_std``) weights channels differently, so fractions of ``L`` are not fractions of the
output latents. Per pair, with ``e = L_B - L_A`` (float64):

* ``fraction = <L_{A<-B} - L_A, e> / ||e||^2``;
* ``reverse_fraction = <L_B - L_{B<-A}, e> / ||e||^2``;
* ``ablation_shrink = 1 - ||L_{B<-m} - L_{A<-m}|| / ||e||`` (``m`` the A/B mean of the columns).

Finished pairs go to ``OUT.partial.json`` after every batch; ``resume=True`` continues from it
after checking that settings, model, prompts and unit sets match (not ``batch_size`` nor
``max_kept_mib``). While the pairs run, SIGTERM is handled as Ctrl-C (``KeyboardInterrupt``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from dense_plantain.capture.job import TEXT_LAYERS, TEXT_TOKENS, PipelineSettings
from dense_plantain.patch.hooks import ColumnPlan, Keep, Write, kept_bytes, unit_bytes
from dense_plantain.patch.spec import PatchError, UnitSet, draw_random_sets, fold_assignment, parse_specs

GUIDANCE_SCALE = 1.0
#: Default ``--max-kept-mib``: at FLUX.2 [klein] 4B scale a plantain unit keeps about 288 KiB per pair
#: (16 columns x 4,608 tokens x bf16, A and B), so one top:1024 set takes about 288 MiB.
DEFAULT_MAX_KEPT_MIB = 2048.0
MEASURE = (
    "L = the transformer's prediction for the image tokens (noise_pred) of the single step; the step's output "
    "latents are unpatchify((x_T - L) * bn_std + bn_mean), a fixed affine map of L with a per-channel scale, so "
    "fractions of L are not fractions of the output latents"
)


#: Settings the numbers do not depend on: a run may be resumed with other values of them.
RESULT_FREE_SETTINGS = ("batch_size", "max_kept_mib")


@dataclass(frozen=True)
class PatchSettings(PipelineSettings):
    """What a patch run measures (with the pipeline's layout, seed and size); ``--resume`` checks it."""

    batch_size: int = 1
    random_sets: int = 20
    split_seed: int = 0
    units: tuple[str, ...] = ("all", "none")
    #: Budget for the columns kept between the base passes and the patched forwards (A's and B's of a
    #: batch together). Sets whose units' union exceeds it are measured in groups, each group after its
    #: own pair of keep forwards; the numbers do not depend on it (like ``batch_size``).
    max_kept_mib: float = DEFAULT_MAX_KEPT_MIB

    def validate(self) -> None:
        self.validate_pipeline(PatchError)
        if self.batch_size < 1:
            raise PatchError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not self.max_kept_mib >= 0:
            raise PatchError(f"--max-kept-mib must be 0 or more, got {self.max_kept_mib}")
        if self.random_sets < 0:
            raise PatchError(f"--random-sets must be 0 or more, got {self.random_sets}")
        if not self.units:
            raise PatchError("give at least one --units set")


@dataclass
class PairRecord:
    """One pair's measures for every set instance (set i, random set r or -1 for the set itself)."""

    id: str
    fold: int
    values: dict[str, list[float]] = field(default_factory=dict)  # key "i" or "i/r" -> [frac, rev, shrink]


@dataclass
class PatchRun:
    """Everything ``result`` needs to write patch.json: sets, per-pair measures and records."""

    sets: list[UnitSet]
    pairs: list[PairRecord]
    folds: np.ndarray
    settings: dict[str, Any]
    provenance: dict[str, Any]
    forwards: dict[str, Any]
    memory: dict[str, Any]
    seconds: float
    resumed_from: int = 0
    layout: Any = None  # the units.Layout the sets index


def partial_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(f"{out.name}.partial.json")


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- the capture the top:K sets are chosen on ---------------------------------------------------


def selection_capture(results: str | Path | None, capture: str | Path | None):
    """The capture whose per-pair differences choose top:K units, and how it was found."""
    from dense_plantain.analysis.inputs import file_sha256
    from dense_plantain.store import read_capture

    if capture is not None:
        cap = read_capture(capture)
        return cap, {"capture": str(capture), "capture_sha256": file_sha256(Path(capture))}
    if results is None:
        return None, None
    from dense_plantain.report.records import load_results

    record = load_results(results)
    sources = record.get("sources") or []
    if len(sources) != 1 or sources[0].get("role") != "capture":
        raise PatchError(
            f"{results}: top:K needs the results of `analyze` on one capture; these results come from "
            f"{len(sources)} capture(s) ({record.get('design')}). Pass --capture with the capture file instead"
        )
    path = sources[0].get("path")
    if not path or not Path(path).is_file():
        raise PatchError(
            f"{results}: the capture it was made from ({path}) is not there any more; top:K needs its per-pair "
            "differences. Pass --capture with the capture file"
        )
    sha = file_sha256(Path(path))
    if sources[0].get("sha256") not in (None, sha):
        raise PatchError(
            f"{path} changed since {results} was made from it (sha256 differs); run analyze again or pass --capture"
        )
    cap = read_capture(path)
    return cap, {"results": str(results), "capture": str(path), "capture_sha256": sha}


def check_selection_capture(cap, probe, layout, model_meta: dict[str, Any]) -> list[str]:
    """How the selection capture differs from this run in prompts, layout or model (empty: it matches)."""
    problems = []
    meta_probe = cap.meta.get("probe") or {}
    if meta_probe.get("sha256") != probe.sha256:
        if cap.pair_ids != probe.ids:
            problems.append(f"prompts: the capture has pairs {cap.pair_ids[:3]}..., this run {probe.ids[:3]}...")
        else:
            problems.append(
                f"prompts: the capture was made from a prompt file with sha256 "
                f"{str(meta_probe.get('sha256'))[:12]}..., this run's is {probe.sha256[:12]}..."
            )
    if cap.n_pairs != len(probe.pairs):
        problems.append(f"pairs: the capture has {cap.n_pairs}, the prompt file {len(probe.pairs)}")
    if cap.meta.get("layout") != layout.name or not cap.layout.same_units(layout):
        problems.append(f"layout: the capture's is {cap.meta.get('layout')!r}, this run's {layout.name!r}")
    old = (cap.meta.get("model") or {}).get("config_sha256")
    if old != model_meta.get("config_sha256"):
        problems.append(
            f"model: the capture's config sha256 {str(old)[:12]}..., this run's {model_meta['config_sha256'][:12]}..."
        )
    return problems


# --- one batch ----------------------------------------------------------------------------------


class _Recorder:
    """Pre-hook and forward hook on the transformer: its inputs and its image-token prediction."""

    def __init__(self, transformer: Any, n_image: int):
        self.transformer = transformer
        self.n_image = n_image
        self.kwargs: dict[str, Any] | None = None
        self.out = None
        self.forwards = 0

    def __enter__(self):
        self._h = [
            self.transformer.register_forward_pre_hook(self._pre, with_kwargs=True),
            self.transformer.register_forward_hook(self._post, with_kwargs=True),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._h:
            h.remove()

    def _pre(self, module, args, kwargs):
        if args:
            raise PatchError(
                "the pipeline called the transformer with positional inputs; this diffusers is unsupported"
            )
        self.kwargs = dict(kwargs)
        self.forwards += 1

    def _post(self, module, args, kwargs, output):
        self.out = output[0][:, : self.n_image]


@dataclass
class KeptGroup:
    """Set instances measured on one keeping of their units' columns (the union, kept once)."""

    keep_plan: ColumnPlan
    members: list[tuple[str, ColumnPlan, dict]]  # (instance key, its plan, its positions in keep_plan)
    planned_bytes: int  # A's and B's kept columns for a full batch, as planned


def instances_of(sets: list[UnitSet], fold: int) -> list[tuple[str, np.ndarray]]:
    """Every set instance applied to pairs of ``fold``: key ``"i"`` (set i) or ``"i/r"`` (its random set r)."""
    out: list[tuple[str, np.ndarray]] = []
    for i, s in enumerate(sets):
        out.append((str(i), s.units_for(fold)))
        for r, rand in enumerate(s.random):
            out.append((f"{i}/{r}", rand[fold if len(rand) > 1 else 0]))
    return out


def instance_names(sets: list[UnitSet]) -> list[tuple[str, str]]:
    """(key, words) of every set instance: ``"i"`` is set i's spec, ``"i/r"`` its random set r."""
    out = []
    for i, s in enumerate(sets):
        out.append((str(i), s.spec))
        out += [(f"{i}/{r}", f"{s.spec} random set {r}") for r in range(len(s.random))]
    return out


def group_instances(instances: list[tuple[str, np.ndarray]], cost: np.ndarray, budget: float) -> list[list[int]]:
    """Split instances (in order) into groups whose units' union costs at most ``budget``.

    ``cost[u]`` is what keeping unit u costs. Greedy: an instance joins the current group while
    the union stays within the budget, else it opens the next group; an instance that alone
    costs more than the budget gets a group of its own (it cannot be measured in parts).
    """
    groups: list[list[int]] = []
    current: list[int] = []
    union = np.zeros(len(cost), dtype=bool)
    for k, (_, units) in enumerate(instances):
        trial = union.copy()
        trial[units] = True
        if current and float(cost[trial].sum()) > budget:
            groups.append(current)
            current, trial = [], np.zeros(len(cost), dtype=bool)
            trial[units] = True
        current.append(k)
        union = trial
    if current:
        groups.append(current)
    return groups


class BatchPatcher:
    """Runs one batch of pairs: A and B through the pipeline, then patched transformer forwards.

    ``forwards`` counts the transformer forwards by kind: ``pipeline`` (the A and B passes),
    ``keep`` (a later group's A and B forwards that only keep columns), ``patched``.
    ``kept_peak_bytes`` is the most that kept columns (A's and B's together) ever held.
    """

    def __init__(self, pipe: Any, settings: PatchSettings, layout):
        from dense_plantain.capture.run import initial_noise

        self.pipe = pipe
        self.settings = settings
        self.layout = layout
        self.noise = initial_noise(pipe, settings.height, settings.width, settings.seed)
        packed = pipe.vae_scale_factor * 2  # 8x VAE, 2x2 patches: as the pipeline's prepare_latents
        self.n_image = (settings.height // packed) * (settings.width // packed)
        self.device = pipe.transformer.device
        self._init_counts()

    def _init_counts(self) -> None:
        self.forwards = {"pipeline": 0, "keep": 0, "patched": 0}
        self.kept_peak_bytes = 0
        self.n_text = TEXT_TOKENS  # the pipeline pads every prompt to this many text tokens
        self._groups: dict[Any, list[KeptGroup]] = {}

    def plan(self, units: np.ndarray) -> ColumnPlan:
        return ColumnPlan(self.layout, units, device=self.device)

    def budget_bytes(self) -> float:
        return float(getattr(self.settings, "max_kept_mib", DEFAULT_MAX_KEPT_MIB)) * 2**20

    def unit_cost(self, batch: int) -> np.ndarray:
        """Per unit, the bytes its kept columns take for a batch of ``batch`` pairs (A and B)."""
        size = self.pipe.transformer.dtype.itemsize
        return 2 * batch * unit_bytes(self.layout, self.n_image, self.n_text, size)

    def groups_for(self, sets: list[UnitSet], fold: int) -> list[KeptGroup]:
        """The kept groups of a fold's set instances (the same for every batch of the fold)."""
        ident = (fold, tuple((id(s), s.spec, len(s.random)) for s in sets))
        if ident not in self._groups:
            instances = instances_of(sets, fold)
            cost = self.unit_cost(self.settings.batch_size)
            out = []
            for members in group_instances(instances, cost, self.budget_bytes()):
                units = np.unique(np.concatenate([instances[k][1] for k in members]))
                keep_plan = self.plan(units)
                plans = []
                for k in members:
                    key, inst = instances[k]
                    plan = self.plan(inst)
                    plans.append((key, plan, plan.positions_in(keep_plan)))
                out.append(KeptGroup(keep_plan, plans, int(cost[units].sum())))
            self._groups[ident] = out
        return self._groups[ident]

    def base_pass(self, prompts: Sequence[str], keep_plan: ColumnPlan) -> tuple[dict[str, Any], Any, dict]:
        """One pipeline pass: (transformer kwargs, L, kept columns)."""
        import torch

        s = self.settings
        with _Recorder(self.pipe.transformer, self.n_image) as rec, Keep(self.pipe.transformer, keep_plan) as keep:
            with torch.inference_mode():
                self.pipe(
                    prompt=list(prompts),
                    height=s.height,
                    width=s.width,
                    num_inference_steps=1,
                    guidance_scale=GUIDANCE_SCALE,
                    latents=self.noise.expand(len(prompts), -1, -1, -1),
                    output_type="latent",
                    max_sequence_length=TEXT_TOKENS,
                    text_encoder_out_layers=TEXT_LAYERS,
                )
        if rec.forwards != 1 or rec.kwargs is None:
            raise PatchError(f"the pipeline ran {rec.forwards} transformer forwards for one step; expected 1")
        self.forwards["pipeline"] += 1
        return rec.kwargs, rec.out, keep.kept

    def keep_pass(self, kwargs: dict[str, Any], keep_plan: ColumnPlan) -> dict:
        """A transformer forward on kept inputs that only keeps ``keep_plan``'s columns (a later group)."""
        import torch

        with Keep(self.pipe.transformer, keep_plan) as keep, torch.inference_mode():
            self.pipe.transformer(**kwargs)
        self.forwards["keep"] += 1
        return keep.kept

    def forward(
        self,
        kwargs: dict[str, Any],
        plan: ColumnPlan | None,
        kept_plan: ColumnPlan,
        source,
        other=None,
        positions: dict | None = None,
    ):
        """One transformer forward on kept inputs, with ``plan``'s columns written from ``source``
        (or the mean of ``source`` and ``other``)."""
        import torch

        t = self.pipe.transformer
        with torch.inference_mode():
            if plan is None or not plan.groups:
                out = t(**kwargs)[0]
            else:
                with Write(t, plan, kept_plan, source, other, positions):
                    out = t(**kwargs)[0]
        self.forwards["patched"] += 1
        return out[:, : self.n_image]


def _measures(la, lb, l_ab, l_ba, l_am, l_bm):
    """Per prompt row: fraction, reverse fraction, ablation shrink (float64 on the device)."""
    import torch

    def flat(x):
        return x.reshape(x.shape[0], -1).to(torch.float64)

    la, lb = flat(la), flat(lb)
    e = lb - la
    denom = (e * e).sum(1)
    frac = ((flat(l_ab) - la) * e).sum(1) / denom
    rev = ((lb - flat(l_ba)) * e).sum(1) / denom
    m = flat(l_bm) - flat(l_am)
    shrink = 1.0 - torch.sqrt((m * m).sum(1) / denom)  # the same sums as denom: exactly 0 when nothing moves
    return torch.stack([frac, rev, shrink], dim=1)


def run_batch(patcher: BatchPatcher, pairs, sets: list[UnitSet], fold: int) -> list[dict[str, list[float]]]:
    """Measures of every set instance for a batch of pairs of one fold: one dict per pair.

    The first kept group's columns are kept in the pipeline's A and B passes; each later group's
    in a pair of keep forwards on the same transformer inputs, after the previous group's columns
    are let go, so kept columns never hold more than one group.
    """
    import torch

    groups = patcher.groups_for(sets, fold)
    rows: dict[str, Any] = {}
    kw_a, la, kept_a = patcher.base_pass([p.a for p in pairs], groups[0].keep_plan)
    kw_b, lb, kept_b = patcher.base_pass([p.b for p in pairs], groups[0].keep_plan)
    _check_differs(pairs, la, lb)
    for g, group in enumerate(groups):
        if g > 0:
            kept_a = kept_b = {}  # the previous group's columns go before the next are kept
            kept_a = patcher.keep_pass(kw_a, group.keep_plan)
            kept_b = patcher.keep_pass(kw_b, group.keep_plan)
        patcher.kept_peak_bytes = max(patcher.kept_peak_bytes, kept_bytes(kept_a, kept_b))
        for key, plan, pos in group.members:
            l_ab = patcher.forward(kw_a, plan, group.keep_plan, kept_b, positions=pos)
            l_ba = patcher.forward(kw_b, plan, group.keep_plan, kept_a, positions=pos)
            l_am = patcher.forward(kw_a, plan, group.keep_plan, kept_a, kept_b, positions=pos)
            l_bm = patcher.forward(kw_b, plan, group.keep_plan, kept_a, kept_b, positions=pos)
            rows[key] = _measures(la, lb, l_ab, l_ba, l_am, l_bm)
    keys = [key for key, _ in instances_of(sets, fold)]
    values = torch.stack([rows[k] for k in keys]).cpu().numpy() if keys else np.zeros((0, len(pairs), 3))
    out: list[dict[str, list[float]]] = [{} for _ in pairs]
    for k, key in enumerate(keys):
        for j in range(len(pairs)):
            out[j][key] = [float(v) for v in values[k, j]]
    return out


def _check_differs(pairs, la, lb) -> None:
    e2 = (lb.reshape(len(pairs), -1).double() - la.reshape(len(pairs), -1).double()).pow(2).sum(1)
    if bool((e2 == 0).any()):
        bad = [p.id for p, z in zip(pairs, (e2 == 0).tolist()) if z]
        raise PatchError(
            f"pair(s) {', '.join(bad)}: A and B give the same transformer output (identical prompts after "
            "truncation to 512 tokens?), so no fraction of their difference exists; fix or drop those pairs"
        )


# --- the whole run ------------------------------------------------------------------------------


def _sets_identity(sets: list[UnitSet]) -> str:
    digest = hashlib.sha256()
    for s in sets:
        digest.update(s.spec.encode() + b"\0")
        for f in s.folds:
            digest.update(np.asarray(f, np.int64).tobytes() + b"|")
        for rand in s.random:
            for f in rand:
                digest.update(np.asarray(f, np.int64).tobytes() + b";")
    return digest.hexdigest()


def run_patch(
    model: str,
    prompts_file: str | Path,
    out: str | Path,
    *,
    settings: PatchSettings = PatchSettings(),
    results: str | Path | None = None,
    capture: str | Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    resume: bool = False,
    force: bool = False,
    show_progress: bool = True,
    loaded=None,
) -> PatchRun:
    """Measure every ``settings.units`` set on every pair of ``prompts_file``; return the run.

    Writing the output folder is ``result.write_patch_folder``'s job (the CLI calls both).
    """
    from dense_plantain.capture.model import device_name, load_pipeline
    from dense_plantain.patch.result import check_out_dir
    from dense_plantain.prompts import load_probe
    from dense_plantain.store import atomic_write_bytes
    from dense_plantain.units import build_layout

    t0 = time.monotonic()
    settings.validate()
    out = Path(out)
    check_out_dir(out)
    probe = load_probe(prompts_file)
    partial = partial_path(out)
    if partial.exists() and not (resume or force):
        raise PatchError(
            f"an unfinished patch run of this output exists ({partial}). Pass --resume to continue it, or --force to "
            "discard it and start over"
        )
    cap, selection = selection_capture(results, capture)
    loaded = loaded or load_pipeline(model, device=device, dtype=dtype)
    pipe = loaded.pipe
    model_meta = loaded.provenance()
    layout = build_layout(dict(pipe.transformer.config), settings.layout)
    if cap is not None:
        problems = check_selection_capture(cap, probe, layout, model_meta)
        if problems:
            raise PatchError(
                f"the capture that top:K would choose units on ({selection['capture']}) does not match this run: "
                + "; ".join(problems)
                + ". Choose units on a capture of the same prompts, layout and model"
            )
    folds = fold_assignment(len(probe.pairs), settings.split_seed)
    diff = None if cap is None else (cap.b.astype(np.float64) - cap.a.astype(np.float64))
    sets = parse_specs(settings.units, layout, diff=diff, folds=folds)
    draw_random_sets(sets, layout, settings.random_sets, settings.seed)
    settings_meta = {
        **asdict(settings),
        "units": list(settings.units),
        "steps": 1,
        "guidance_scale": GUIDANCE_SCALE,
        "text_tokens": TEXT_TOKENS,
        "text_encoder_layers": list(TEXT_LAYERS),
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "measure": MEASURE,
        "noise": (
            f"torch.Generator('cpu').manual_seed({settings.seed}); the single-prompt draw of "
            "Flux2KleinPipeline.prepare_latents, repeated for every prompt (as capture)"
        ),
    }
    identity = {
        "settings": {k: v for k, v in settings_meta.items() if k not in RESULT_FREE_SETTINGS},
        "model_config_sha256": model_meta.get("config_sha256"),
        "probe_sha256": probe.sha256,
        "sets_sha256": _sets_identity(sets),
    }
    done: dict[str, dict[str, list[float]]] = {}
    #: Earlier calls of an interrupted run (from the partial file): pairs, forwards and loop time of each.
    earlier_calls: list[dict[str, Any]] = []
    if partial.exists() and resume:
        try:
            old = json.loads(partial.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise PatchError(f"cannot resume from {partial} ({err}); pass --force to start over") from None
        if old.get("identity") != identity:
            diffs = [k for k in identity if (old.get("identity") or {}).get(k) != identity[k]]
            raise PatchError(
                f"cannot resume from {partial}: it was made with different {', '.join(diffs)}. Rerun with the same "
                "options, or pass --force to start over"
            )
        done = {str(k): v for k, v in old.get("pairs", {}).items()}
        earlier_calls = [c for c in old.get("calls", []) if isinstance(c, dict)]
    elif partial.exists():
        partial.unlink()
    n_resumed = len(done)
    settings_meta["device"] = device_name(loaded.device)
    patcher = BatchPatcher(pipe, settings, layout)
    todo = [i for i, p in enumerate(probe.pairs) if p.id not in done]
    batches = []
    for fold in (0, 1):
        idx = [i for i in todo if folds[i] == fold]
        batches += [(fold, idx[k : k + settings.batch_size]) for k in range(0, len(idx), settings.batch_size)]
    from dense_plantain.patch.report import Progress

    saved = pipe._progress_bar_config if hasattr(pipe, "_progress_bar_config") else {}
    pipe.set_progress_bar_config(disable=True)
    t_loop = time.monotonic()
    on_disk = n_resumed  # pairs in the partial file: what an interruption keeps
    try:
        with Progress(show_progress, total=len(probe.pairs), done=n_resumed) as bar, _term_as_interrupt():
            for fold, idx in batches:
                batch = [probe.pairs[i] for i in idx]
                bar.describe(f"pair {batch[0].id}")
                try:
                    rows = run_batch(patcher, batch, sets, fold)
                except _oom_type() as err:
                    raise PatchError(
                        f"out of GPU memory at --batch-size {settings.batch_size} ({err.__class__.__name__}); lower "
                        "--batch-size or --max-kept-mib (results depend on neither)"
                    ) from None
                for p, row in zip(batch, rows):
                    done[p.id] = row
                calls = [*earlier_calls, _call_record(patcher, len(done) - n_resumed, time.monotonic() - t_loop)]
                atomic_write_bytes(
                    partial,
                    json.dumps({"identity": identity, "pairs": done, "calls": calls}, separators=(",", ":")).encode(),
                )
                on_disk = len(done)
                bar.advance(len(batch))
    except KeyboardInterrupt:
        raise PatchError("interrupted." + _kept_note(partial, on_disk)) from None
    except PatchError as err:
        raise PatchError(str(err) + "." + _kept_note(partial, on_disk)) from None
    finally:
        pipe._progress_bar_config = saved
    loop_seconds = time.monotonic() - t_loop
    records = [PairRecord(p.id, int(folds[i]), done[p.id]) for i, p in enumerate(probe.pairs)]
    forwards = forward_counts(patcher, sets, len(batches), len(todo), loop_seconds)
    calls = [*earlier_calls, _call_record(patcher, len(todo), loop_seconds)]
    forwards["calls"] = calls
    forwards["all_calls"] = {
        "calls": len(calls),
        "pairs": sum(int(c.get("pairs", 0)) for c in calls),
        "transformer_forwards": sum(int(c.get("transformer_forwards", 0)) for c in calls),
        "loop_seconds": sum(float(c.get("loop_seconds", 0.0)) for c in calls),
        "note": "an interrupted call counts the forwards and time of its batches that reached the partial file",
    }
    memory = memory_record(patcher, sets)
    from dense_plantain.capture.provenance import weights_record

    provenance = {
        "model": model_meta,
        # which weights ran (random or saved), as a capture records them: patch.md says it first
        "weights": {"recorded": True, **weights_record(loaded.source)},
        "probe": probe.to_dict(),
        "selection": selection,
        "selection_capture_model": (cap.meta.get("model") if cap is not None else None),
        "selection_capture_settings": (cap.meta.get("settings") if cap is not None else None),
        "versions": _versions(),
        "created": _utc_now(),
    }
    return PatchRun(
        sets=sets,
        pairs=records,
        folds=folds,
        settings=settings_meta,
        provenance=provenance,
        forwards=forwards,
        memory=memory,
        seconds=time.monotonic() - t0,
        resumed_from=n_resumed,
        layout=layout,
    )


def _call_record(patcher: BatchPatcher, pairs: int, loop_seconds: float) -> dict[str, Any]:
    """One call's share of a run (a resumed run has several): pairs finished, forwards run, loop time."""
    return {
        "pairs": int(pairs),
        "transformer_forwards": int(sum(patcher.forwards.values())),
        "loop_seconds": loop_seconds,
    }


def forward_counts(patcher: BatchPatcher, sets: list[UnitSet], n_batches: int, n_pairs: int, seconds: float):
    """The transformer forwards this call ran, by kind, and the time per forward of the pair loop."""
    f = patcher.forwards
    total = f["pipeline"] + f["keep"] + f["patched"]
    n_instances = sum(1 + len(s.random) for s in sets)
    return {
        "pipeline_passes": f["pipeline"],
        "keep_forwards": f["keep"],
        "patched_forwards": f["patched"],
        "transformer_forwards": total,
        "batches": n_batches,
        "pairs_run": n_pairs,
        "per_pair": 2 + 4 * n_instances,
        "per_pair_note": "at --batch-size 1 and one kept group: A and B, then 4 patched forwards per set instance; "
        "each further kept group adds 2 keep forwards per batch",
        "loop_seconds": seconds,
        "ms_per_forward": 1e3 * seconds / total if total else None,
        "ms_per_forward_note": "the pair loop's wall time over its transformer forwards; the pipeline passes also "
        "encode the prompts",
    }


def memory_record(patcher: BatchPatcher, sets: list[UnitSet]) -> dict[str, Any]:
    """The budget, the kept groups per fold and the most the kept columns held (this call's batches)."""
    budget = patcher.budget_bytes()
    groups = {str(f): patcher.groups_for(sets, f) for f in (0, 1)}
    # Only a group of one can be over: an instance joins a group only while the union fits.
    over_keys = {g.members[0][0] for gs in groups.values() for g in gs if g.planned_bytes > budget}
    over = [name for key, name in instance_names(sets) if key in over_keys]
    return {
        "max_kept_mib": budget / 2**20,
        "kept_peak_bytes": patcher.kept_peak_bytes,
        "kept_peak_mib": patcher.kept_peak_bytes / 2**20,
        "groups": {f: len(gs) for f, gs in groups.items()},
        "planned_group_mib": {f: [g.planned_bytes / 2**20 for g in gs] for f, gs in groups.items()},
        "over_budget": over,
        "rule": "kept columns (A's and B's of one batch, one kept group at a time) stay within max_kept_mib, "
        "except a set instance that alone needs more (listed in over_budget): it is kept alone",
        "text_tokens_planned": patcher.n_text,
    }


@contextlib.contextmanager
def _term_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt while the pairs run (as Ctrl-C and ``timeout -s INT``): the finished
    pairs stay in the partial file and the message says how to resume. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, saved)


def _kept_note(partial: Path, n: int) -> str:
    if n == 0:
        return " Nothing was finished yet."
    return f" The {n} finished pair(s) are kept in {partial}; run the same command with --resume to continue."


def _oom_type():
    import torch

    return torch.cuda.OutOfMemoryError


def _versions() -> dict[str, str]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from dense_plantain import __version__

    out = {"dense-plantain": __version__, "python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers", "numpy", "scipy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out
