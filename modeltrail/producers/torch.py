"""PyTorch integration: architecture hashes, weights as versions, an inference tracer.

``pip install 'modeltrail[torch]'``. This is the only module of modeltrail that imports
torch.

- ``arch_hash(module)``: sha256 of the module types, parameter and buffer names, shapes
  and dtypes, in definition order — independent of the weights and of the device. A
  model name is bound to the hash of its first version (or run opened by a tracer);
  another architecture under that name raises ``ArchitectureMismatch``.
- ``log_model`` / ``load_model``: the ``state_dict`` as one version file ``model.pt``,
  written with ``torch.save`` from CPU copies of the tensors (the same weights give
  the same bytes on any device, so logging them again creates no new version) and read
  with ``torch.load(weights_only=True)``, which unpickles tensors and plain containers
  only. ``torch.save`` rather than safetensors: it needs no further dependency and
  keeps every ``state_dict`` (tied weights, extra state) as the module wrote it.
- ``ClassificationTracer``: runs the forward pass and records each batch as one
  ``InferenceBatchRecorded`` event on the run's inference stream (input ids, labels,
  predictions, per-sample loss and confidence, as packed little-endian arrays).
- ``Evaluator``: reads the epoch projection (a few rows per epoch, whatever the number
  of samples).

The MLdebugger identifiers map onto the registry: ``model_name`` is a model (unique in
its namespace, bound to one architecture), ``version_name`` is a run of it (one set of
training conditions: reusing the name resumes and appends, another config raises
``RunConfigConflict``), ``n_epoch`` labels the data (None is a value of its own;
"latest" is the epoch of the most recently recorded batch, not the largest number).
"""

from __future__ import annotations

import atexit
import hashlib
import io
import json
import queue
import tempfile
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.nn.parameter import is_lazy

from modeltrail.core.projections.epochs import (
    Evaluation,
    LatestEpoch,
    epoch_rows,
    evaluate,
)
from modeltrail.core.projections.epochs import (
    combine as _combine,
)
from modeltrail.core.refs import Ref, check_name
from modeltrail.errors import (
    ArchitectureMismatch,
    InvalidInput,
    NotFound,
)
from modeltrail.producers.run import Run
from modeltrail.producers.spool import Entry, offline_check, open_run, outbox_for

if TYPE_CHECKING:
    from modeltrail.entities import ModelVersion
    from modeltrail.registry import Registry

WEIGHTS_FILE = "model.pt"
STATE_FORMAT = "torch.save state_dict"
MAX_EVENT_SAMPLES = 65_536
"""Samples per event: a larger batch is recorded as several events (24 bytes a sample
keeps each well under the codec's payload limit)."""
MAX_WRITE_SAMPLES = 16 * MAX_EVENT_SAMPLES
"""Samples per write: the recording thread writes the batches waiting for it together,
up to this many samples (about 24 MiB of arrays, under a Kafka record's 32 MiB). A
batch larger than this alone is written in several writes, in order."""
MAX_WRITE_BATCHES = 64
"""Traced batches per write, at most."""
TRAINER_BUSY_TIMEOUT_S = 2.0
"""How long a tracer's write waits for a locked database before spooling, when the
tracer opens its own registry."""

__all__ = [
    "ClassificationTracer",
    "Evaluation",
    "Evaluator",
    "arch_hash",
    "load_model",
    "log_model",
]


def _open_default() -> Registry:
    import modeltrail

    return modeltrail.open(busy_timeout=TRAINER_BUSY_TIMEOUT_S)


def _unwrap(module: nn.Module) -> nn.Module:
    """The model inside torch.compile's and (Distributed)DataParallel's wrappers."""
    while True:
        inner = getattr(module, "_orig_mod", None)
        if inner is None and isinstance(
            module, nn.DataParallel | nn.parallel.DistributedDataParallel
        ):
            inner = module.module
        if not isinstance(inner, nn.Module):
            return module
        module = inner


# -- architecture and weights -----------------------------------------------------------


def arch_hash(module: nn.Module) -> str:
    """sha256 (hex) of the module tree's types and its parameter and buffer names,
    shapes and dtypes: equal for two instances of one architecture whatever their
    weights or device, different when a layer, a shape or a dtype differs."""
    if not isinstance(module, nn.Module):
        raise InvalidInput(f"{module!r} is not a torch.nn.Module")
    module = _unwrap(module)
    parts: list[list[Any]] = [
        ["module", name, type(sub).__qualname__]
        for name, sub in module.named_modules(remove_duplicate=False)
    ]
    for kind, named in (
        ("parameter", module.named_parameters(remove_duplicate=False)),
        ("buffer", module.named_buffers(remove_duplicate=False)),
    ):
        for name, tensor in named:
            if is_lazy(tensor):
                raise InvalidInput(
                    f"{kind} {name!r} of {type(module).__qualname__} is not initialized yet "
                    "(a lazy module): run one forward pass before hashing or logging it"
                )
            parts.append([kind, name, list(tensor.shape), str(tensor.dtype)])
    canonical = json.dumps(parts, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def state_bytes(module: nn.Module) -> bytes:
    """The module's ``state_dict`` as ``torch.save`` bytes, from CPU copies."""
    state = {
        key: value.detach().cpu() if isinstance(value, torch.Tensor) else value
        for key, value in _unwrap(module).state_dict().items()
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def log_model(
    reg: Registry,
    module: nn.Module,
    name: str,
    *,
    aliases: Sequence[str] = (),
    run: Run | str | None = None,
    epoch: int | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> ModelVersion | None:
    """Logs the module's weights as a version of model ``name`` (created on first use
    and bound to the module's architecture hash). Returns the version — or None when the
    log could not be reached (or earlier writes still wait in the spool): the version is
    then spooled and gets its label when the spool is flushed (the weights are already
    in the blob store)."""
    digest = arch_hash(module)
    data = state_bytes(module)
    run_name = run.name if isinstance(run, Run) else run
    ref = Ref.parse(name).resolved(reg.namespace)
    if isinstance(run, Run) and run.model_ref != str(ref):
        raise InvalidInput(
            f"run {run.name!r} belongs to model {run.model_ref}, not to {name!r}: a run logs "
            "versions of its own model"
        )
    meta = {"format": STATE_FORMAT, **dict(metadata or {})}
    sha256, size = reg.blobs.put_bytes(data)
    outbox = outbox_for(reg)
    entry = outbox.entry(
        "version",
        ref.ns,
        {
            "model": ref.name,
            "files": [[WEIGHTS_FILE, size, sha256]],
            "metadata": meta,
            "aliases": list(aliases),
            "run": run_name,
            "epoch": epoch,
            "arch_hash": digest,
            "derived_from": [],
        },
        requires=run.opened_by if isinstance(run, Run) else None,
    )
    written = outbox.submit(entry, check=offline_check(entry))
    return None if written is None else reg._get_target(written.result)


def load_model(
    reg: Registry,
    ref: str,
    module: nn.Module,
    *,
    map_location: str | torch.device | None = None,
    strict: bool = True,
) -> nn.Module:
    """Loads a version's weights into ``module`` (on the module's device unless
    ``map_location`` says otherwise); every file's sha256 is verified and the download
    is recorded. Returns the module."""
    version = reg.get(ref)
    expected = arch_hash(module)
    if version.arch_hash is not None and version.arch_hash != expected:
        raise ArchitectureMismatch(
            f"{version.ref} was logged from architecture {version.arch_hash}, not "
            f"{expected}, the architecture of the {type(module).__qualname__} given"
        )
    if WEIGHTS_FILE not in {f.path for f in version.files}:
        raise NotFound(
            f"{version.ref} has no {WEIGHTS_FILE}: it was not logged by log_model "
            f"(its files are {', '.join(f.path for f in version.files)})"
        )
    location = map_location if map_location is not None else _device_of(module)
    with tempfile.TemporaryDirectory(prefix="modeltrail-") as directory:
        root = reg.download(version.ref, directory)
        state = torch.load(Path(root) / WEIGHTS_FILE, map_location=location, weights_only=True)
    _unwrap(module).load_state_dict(state, strict=strict)
    return module


def _device_of(module: nn.Module) -> torch.device:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


# -- the tracer -------------------------------------------------------------------------


@dataclass
class _Traced:
    """One batch between the forward pass and its event."""

    host: torch.Tensor
    """float64 [rows, n] on the CPU: loss, confidence, prediction, label (, input id)."""
    ready: Any
    """A CUDA event the copy to ``host`` completes at (None when already on the CPU)."""
    input_ids: np.ndarray[Any, Any] | None
    """int64 ids, when they were not part of ``host``."""
    dataset_type: str
    n_epoch: int | None
    num_classes: int
    at: int


class _Recorder(threading.Thread):
    """Records traced batches off the training thread, in order."""

    def __init__(self, tracer: ClassificationTracer, max_pending: int) -> None:
        super().__init__(name="modeltrail-tracer", daemon=True)
        self.queue: queue.Queue[_Traced | None] = queue.Queue(maxsize=max_pending)
        self.error: BaseException | None = None
        self._record = tracer._record

    def run(self) -> None:
        while True:
            items = [self.queue.get()]
            while items[-1] is not None and len(items) < MAX_WRITE_BATCHES:
                try:  # what waited meanwhile goes in the same write
                    items.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._record([item for item in items if item is not None])
            except BaseException as exc:  # raised to the trainer on its next call
                if self.error is None:
                    self.error = exc
            finally:
                for _ in items:
                    self.queue.task_done()
            if items[-1] is None:
                return


_LIVE: weakref.WeakSet[ClassificationTracer] = weakref.WeakSet()


@atexit.register
def _drain_live_tracers() -> None:
    for tracer in list(_LIVE):
        try:
            tracer.close()
        except Exception as exc:  # at exit there is nobody left to raise to
            print(f"modeltrail: a tracer could not record its last batches: {exc}")


class ClassificationTracer:
    """Runs a classifier's forward pass and records every batch it sees.

    ``tracer(inputs, labels, input_ids=…, dataset_type="train", n_epoch=…)`` returns the
    model's outputs (logits, ``[n, classes]``) with their autograd graph, ready for the
    trainer's own loss; what it records is computed from detached outputs, so the graph
    is never kept alive by the tracer. On a GPU the per-sample values are stacked into
    one tensor and copied to pinned host memory without waiting: the stream is
    synchronised at most once per batch, by the recording thread, not the trainer.

    Recording happens on a background thread by default (``background=False`` records
    inside the call); ``close()`` or leaving a ``with`` block stops it, and at exit every
    live tracer is flushed. Errors of a batch (labels out of range …) are raised by the
    next call or by ``flush()``; an ``Evaluator`` of the same run flushes live tracers
    before it reads. When the log cannot be reached, batches are spooled and training
    goes on. Each call is one event (a batch over ``MAX_EVENT_SAMPLES`` is split into
    several, written together); the recording thread writes the batches that waited for
    it in one write (one transaction; on Kafka one record), so it keeps up with the
    trainer however short the batches.
    """

    def __init__(
        self,
        model: nn.Module,
        model_name: str,
        version_name: str,
        registry: Registry | None = None,
        *,
        config: Mapping[str, Any] | None = None,
        allow_config_change: bool = False,
        background: bool = True,
        max_pending: int = 256,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InvalidInput(f"model {model!r} is not a torch.nn.Module")
        self.model = model
        self.registry = registry if registry is not None else _open_default()
        self.arch_hash = arch_hash(model)
        self.run = open_run(
            self.registry,
            model_name,
            version_name,
            config=config,
            allow_config_change=allow_config_change,
            arch_hash=self.arch_hash,
        )
        self._outbox = outbox_for(self.registry)
        self._next_id: dict[tuple[str, int | None], int] = {}
        self._recorder: _Recorder | None = None
        if background:
            self._recorder = _Recorder(self, max_pending)
            self._recorder.start()
        _LIVE.add(self)

    @property
    def namespace(self) -> str:
        return self.run.namespace

    @property
    def model_name(self) -> str:
        return self.run.model

    @property
    def version_name(self) -> str:
        return self.run.name

    def __call__(
        self,
        inputs: Any,
        labels: torch.Tensor,
        input_ids: torch.Tensor | np.ndarray[Any, Any] | Sequence[int] | None = None,
        dataset_type: str = "train",
        n_epoch: int | None = None,
    ) -> torch.Tensor:
        self._raise_pending_error()
        check_name(dataset_type, "dataset type")
        if n_epoch is not None and (
            isinstance(n_epoch, bool) or not isinstance(n_epoch, int) or n_epoch < 0
        ):
            raise InvalidInput(f"n_epoch {n_epoch!r} is invalid: epochs are integers >= 0 or None")
        at = self._outbox.now()
        outputs = self.model(inputs)
        self._trace(outputs, labels, input_ids, dataset_type, n_epoch, at)
        return outputs  # type: ignore[no-any-return]

    def trace(
        self,
        outputs: torch.Tensor,
        labels: torch.Tensor,
        input_ids: torch.Tensor | np.ndarray[Any, Any] | Sequence[int] | None = None,
        dataset_type: str = "train",
        n_epoch: int | None = None,
    ) -> None:
        """Records a batch whose forward pass the caller ran itself."""
        self._raise_pending_error()
        check_name(dataset_type, "dataset type")
        self._trace(outputs, labels, input_ids, dataset_type, n_epoch, self._outbox.now())

    def flush(self) -> None:
        """Waits until every traced batch is recorded (or spooled); raises the first
        error a batch met."""
        if self._recorder is not None:
            self._recorder.queue.join()
        self._raise_pending_error()

    def close(self) -> None:
        """Flushes, then stops the recording thread."""
        recorder, self._recorder = self._recorder, None
        if recorder is not None and recorder.is_alive():
            recorder.queue.join()
            recorder.queue.put(None)
            recorder.join()
            if recorder.error is not None:
                raise recorder.error
        _LIVE.discard(self)

    def __enter__(self) -> ClassificationTracer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------

    def _raise_pending_error(self) -> None:
        recorder = self._recorder
        if recorder is not None and recorder.error is not None:
            error, recorder.error = recorder.error, None
            raise error

    def _trace(
        self,
        outputs: Any,
        labels: Any,
        input_ids: Any,
        dataset_type: str,
        n_epoch: int | None,
        at: int,
    ) -> None:
        if not isinstance(outputs, torch.Tensor) or outputs.dim() != 2:
            raise InvalidInput(
                f"the model returned {_describe(outputs)}: a ClassificationTracer needs "
                "logits shaped [batch, classes]"
            )
        n, classes = outputs.shape
        if not isinstance(labels, torch.Tensor):
            labels = torch.as_tensor(labels)
        if labels.shape != (n,) or labels.is_floating_point() or labels.is_complex():
            raise InvalidInput(
                f"labels {_describe(labels)} are invalid: class indices, one integer per "
                f"sample ({n} here)"
            )
        ids_on_device, ids_host = self._ids(input_ids, n, outputs.device, dataset_type, n_epoch)
        with torch.no_grad():
            logits = outputs.detach()
            if logits.dtype not in (torch.float32, torch.float64):
                logits = logits.float()
            target = labels.detach().to(logits.device, non_blocking=True)
            log_probs = torch.log_softmax(logits, dim=1)
            safe = target.clamp(0, classes - 1).long().unsqueeze(1)
            rows = [
                -log_probs.gather(1, safe).squeeze(1),
                log_probs.max(dim=1).values.exp(),
                logits.argmax(dim=1),
                target,
            ]
            if ids_on_device is not None:
                rows.append(ids_on_device)
            stacked = torch.stack([r.to(torch.float64) for r in rows])
            ready = None
            if stacked.device.type == "cuda":
                host = torch.empty(stacked.shape, dtype=stacked.dtype, pin_memory=True)
                host.copy_(stacked, non_blocking=True)
                ready = torch.cuda.Event()  # type: ignore[no-untyped-call]
                ready.record(torch.cuda.current_stream(stacked.device))
            else:
                host = stacked.cpu()
        traced = _Traced(host, ready, ids_host, dataset_type, n_epoch, int(classes), at)
        if self._recorder is not None:
            self._recorder.queue.put(traced)
        else:
            self._record([traced])

    def _ids(
        self, input_ids: Any, n: int, device: torch.device, dataset_type: str, n_epoch: int | None
    ) -> tuple[torch.Tensor | None, np.ndarray[Any, Any] | None]:
        """The batch's input ids: on the outputs' device (copied with the rest), or on the
        host. Without ids, samples are numbered in the order this tracer saw them."""
        if input_ids is None:
            start = self._next_id.get((dataset_type, n_epoch), 0)
            self._next_id[(dataset_type, n_epoch)] = start + n
            return None, np.arange(start, start + n, dtype=np.int64)
        if isinstance(input_ids, torch.Tensor):
            if input_ids.is_floating_point() or input_ids.numel() != n:
                raise InvalidInput(
                    f"input_ids {_describe(input_ids)} are invalid: one integer per sample "
                    f"({n} here)"
                )
            if input_ids.device == device and device.type != "cpu":
                return input_ids.detach().reshape(-1), None  # exact in float64 below 2**53
            return None, input_ids.detach().cpu().reshape(-1).numpy().astype(np.int64)
        try:
            ids = np.asarray(input_ids)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"input_ids {input_ids!r} are invalid: {exc}") from None
        if ids.size != n or not np.issubdtype(ids.dtype, np.integer):
            raise InvalidInput(
                f"input_ids of shape {ids.shape} and type {ids.dtype} are invalid: one "
                f"integer per sample ({n} here)"
            )
        return None, ids.reshape(-1).astype(np.int64)

    def _record(self, batches: Sequence[_Traced]) -> None:
        """Writes traced batches in order, as few writes as the limits allow; a batch that
        cannot be recorded (labels out of range) is left out and its error raised after
        the others are written."""
        error: InvalidInput | None = None
        group: list[Entry] = []
        samples = 0
        for traced in batches:
            try:
                entries = self._entries(traced)
            except InvalidInput as exc:
                error = error or exc
                continue
            for entry in entries:
                n = entry.args["batch"]["n_samples"]
                if group and samples + n > MAX_WRITE_SAMPLES:
                    self._outbox.submit_many(group)
                    group, samples = [], 0
                group.append(entry)
                samples += n
        if group:
            self._outbox.submit_many(group)
        if error is not None:
            raise error

    def _entries(self, traced: _Traced) -> list[Entry]:
        """A traced batch's entries: one per ``MAX_EVENT_SAMPLES`` samples."""
        if traced.ready is not None:
            traced.ready.synchronize()
        values = traced.host.numpy()
        labels = values[3].astype("<i4")
        predictions = values[2].astype("<i4")
        classes = traced.num_classes
        if labels.min() < 0 or labels.max() >= classes:
            raise InvalidInput(
                f"labels range from {labels.min()} to {labels.max()} in a batch of "
                f"{traced.dataset_type} n_epoch={traced.n_epoch}: classes are 0 to "
                f"{classes - 1}"
            )
        ids = traced.input_ids if traced.input_ids is not None else values[4]
        run = self.run
        entries = []
        for start in range(0, len(labels), MAX_EVENT_SAMPLES):
            part = slice(start, start + MAX_EVENT_SAMPLES)
            batch = {
                "dataset_type": traced.dataset_type,
                "n_epoch": traced.n_epoch,
                "n_samples": len(labels[part]),
                "num_classes": classes,
                "input_ids": ids[part].astype("<i8").tobytes(),
                "labels": labels[part].tobytes(),
                "predictions": predictions[part].tobytes(),
                "losses": values[0][part].astype("<f4").tobytes(),
                "confidences": values[1][part].astype("<f4").tobytes(),
            }
            entries.append(
                self._outbox.entry(
                    "inference",
                    run.namespace,
                    {"model": run.model, "run": run.name, "batch": batch},
                    requires=run.opened_by,
                    at=traced.at,
                )
            )
        return entries


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__qualname__}"


# -- the evaluator ----------------------------------------------------------------------


class Evaluator:
    """Evaluations of a run's recorded inference batches, by epoch and dataset type."""

    def __init__(
        self, model_name: str, version_name: str, registry: Registry | None = None
    ) -> None:
        self.registry = registry if registry is not None else _open_default()
        ref = Ref.parse(model_name).resolved(self.registry.namespace)
        self.namespace, self.model_name = ref.ns, ref.name
        self.version_name = check_name(version_name, "run name")

    def request_evaluation(
        self,
        n_epoch: int | LatestEpoch | None = None,
        dataset_type: str | None = None,
    ) -> Evaluation:
        """Accuracy, mean loss, per-class counts and the hardest inputs of one epoch:
        ``n_epoch=None`` is the data recorded without an epoch, an integer that epoch,
        ``"latest"`` the epoch of the most recently recorded batch. ``dataset_type``
        None combines every dataset type of that epoch."""
        self._flush_tracers()
        self._check_run()
        return evaluate(
            self.registry._read.query,
            self.namespace,
            self.model_name,
            self.version_name,
            n_epoch,
            dataset_type,
        )

    def epochs(self, dataset_type: str | None = None) -> list[Evaluation]:
        """One evaluation per dataset type and epoch, in the order they were first
        recorded."""
        self._flush_tracers()
        self._check_run()
        rows = epoch_rows(
            self.registry._read.query,
            self.namespace,
            self.model_name,
            self.version_name,
            dataset_type,
        )
        return [_combine([row], row.dataset_type) for row in rows]

    def _check_run(self) -> None:
        if self.registry._read.run(self.namespace, self.model_name, self.version_name) is None:
            raise NotFound(
                f"run {self.version_name!r} of model {self.namespace}/{self.model_name} "
                "does not exist"
            )

    def _flush_tracers(self) -> None:
        for tracer in list(_LIVE):
            if (tracer.namespace, tracer.model_name, tracer.version_name) == (
                self.namespace,
                self.model_name,
                self.version_name,
            ):
                tracer.flush()
