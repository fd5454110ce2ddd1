"""``config.gradinit``: the record that a model's weights came from GradInit, checked
against the weights.

The config entry alone cannot say whether the weights are initialized: a fresh random model
built from an initialized checkpoint's config (``from_config``, ``--config_name``) keeps it.
So the entry carries a fingerprint of the weights it describes (a few values of the tensors
GradInit rescaled the most). The rule, the same in every entry point:

* ``initialized``: the entry's fingerprint matches the weights (also after a bf16/fp16
  reload: the tolerance is 1%). GradInit does not run again; applying scales raises.
* ``stale``: an entry whose fingerprint does not match: the weights are not the ones it
  describes (a fresh model from an initialized config, or weights changed by code that did
  not update the record). Treated as not initialized; the trainer drops the entry.
* ``unverified``: an entry without a fingerprint (written before fingerprints existed) or
  weights that cannot be read here (meta, sharded, renamed): trusted.
* ``absent``: no entry.

On the model it was written for, the entry is a :class:`LiveRecord`: its fingerprint is read
again from the weights whenever the config is copied or serialized (``save_pretrained``,
``push_to_hub``, ``to_dict``, pickling), so a model that trained after GradInit is saved
with a record of its trained weights, however it is saved.

Plain data only: entries are dicts, scales a ``{name: scale}`` mapping.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from .config import GradInitError

logger = logging.getLogger(__name__)

CONFIG_KEY = "gradinit"  # model.config.gradinit
SCALES_FILE = "gradinit_scales.json"
FINGERPRINT_TENSORS = 4  # tensors sampled
FINGERPRINT_VALUES = 16  # values per tensor, evenly spaced over the flattened tensor
FINGERPRINT_RTOL = 1e-2  # relative distance allowed (bf16 rounding is 0.4%)

State = Literal["initialized", "stale", "unverified", "absent"]


def _tensors(model: Any) -> dict[str, Any]:
    named = getattr(model, "named_parameters", None)
    return dict(named(remove_duplicate=False)) if callable(named) else {}


def _find(tensors: Mapping[str, torch.Tensor], name: str) -> torch.Tensor | None:
    """``name``, or the one tensor whose name differs only by a leading prefix (a base model
    loaded from a checkpoint of its head model, a state dict with 'module.')."""
    if name in tensors:
        return tensors[name]
    found = [t for n, t in tensors.items() if n.endswith("." + name) or name.endswith("." + n)]
    return found[0] if len(found) == 1 else None


def _sample(t: torch.Tensor) -> list[float] | None:
    """FINGERPRINT_VALUES values of ``t`` at fixed positions; None if it cannot be read."""
    try:
        if t.is_meta or t.numel() == 0 or type(t).__name__ == "DTensor":
            return None
        flat = t.detach().reshape(-1)
        index = torch.linspace(0, flat.numel() - 1, FINGERPRINT_VALUES).round().long()
        values = flat[index.to(flat.device)].float().cpu().tolist()
    except (RuntimeError, ValueError, NotImplementedError):
        return None
    return [float(f"{v:.6g}") for v in values]


def fingerprint(
    tensors: Mapping[str, torch.Tensor], names: Sequence[str]
) -> dict[str, dict[str, Any]] | None:
    """{name: {"numel", "values"}} of the named tensors; None if one cannot be read."""
    out = {}
    for name in names:
        t = _find(tensors, name)
        values = None if t is None else _sample(t)
        if values is None:
            return None
        out[name] = {"numel": int(t.numel()), "values": values}
    return out or None


def _fingerprint_names(scales: Mapping[str, float], tensors: Mapping[str, Any]) -> list[str]:
    """The tensors GradInit rescaled the most: a fresh model made with the same seed as the
    initialized one differs from it most there."""
    scaled = [n for n in scales if _find(tensors, n) is not None]
    scaled.sort(key=lambda n: -abs(math.log(max(scales[n], 1e-12))))
    if not scaled:
        scaled = [n for n, t in tensors.items() if t.numel() > 0]
    return scaled[:FINGERPRINT_TENSORS]


class LiveRecord(dict):
    """``config.gradinit`` of the model it describes, in memory: copies and serializations
    carry a fingerprint read from that model's weights at that moment."""

    def __init__(self, entry: Mapping[str, Any], model: Any):
        super().__init__(entry)
        self._model = weakref.ref(model)

    def describes(self, model: Any) -> bool:
        return self._model() is model

    def fresh(self) -> dict[str, Any]:
        """The entry as a plain dict, its fingerprint taken from the weights now."""
        entry = dict(self)
        model, old = self._model(), self.get("fingerprint")
        if model is not None and old:
            new = fingerprint(_tensors(model), list(old))
            if new is not None:
                entry["fingerprint"] = new
        return entry

    def __deepcopy__(self, memo: dict) -> dict[str, Any]:
        return copy.deepcopy(self.fresh(), memo)

    def __copy__(self) -> dict[str, Any]:
        return self.fresh()

    def __reduce__(self):
        return (dict, (self.fresh(),))


def record_in_config(
    model: Any,
    entry: Mapping[str, Any],
    scales: Mapping[str, float],
    tensors: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Set ``model.config.gradinit`` to ``entry`` plus the fingerprint of the weights that
    carry ``scales`` (``tensors``: a state dict to read instead of the model's own, e.g. a
    sharded model's full state dict at save time). Round-trips through
    ``save_pretrained``/``from_pretrained``."""
    config = getattr(model, "config", None)
    if config is None:
        return
    weights = dict(tensors) if tensors is not None else _tensors(model)
    entry = dict(entry)
    entry["fingerprint"] = fingerprint(weights, _fingerprint_names(scales, weights))
    setattr(config, CONFIG_KEY, entry if tensors is not None else LiveRecord(entry, model))


def keep_current(model: Any) -> None:
    """Make an initialized model's record follow its weights from now on (training moves
    them; the record saved with them must describe them)."""
    config = getattr(model, "config", None)
    entry = getattr(config, CONFIG_KEY, None)
    if isinstance(entry, dict) and not (isinstance(entry, LiveRecord) and entry.describes(model)):
        setattr(config, CONFIG_KEY, LiveRecord(entry, model))


def initialization_state(model: Any) -> State:
    """Whether ``model``'s weights are the GradInit-initialized ones its config describes
    (see the module docstring for the rule)."""
    entry = getattr(getattr(model, "config", None), CONFIG_KEY, None)
    if not entry:
        return "absent"
    if isinstance(entry, LiveRecord) and entry.describes(model):
        return "initialized"
    recorded = entry.get("fingerprint") if isinstance(entry, Mapping) else None
    if not recorded:
        return "unverified"
    tensors = _tensors(model)
    for name, saved in recorded.items():
        t = _find(tensors, name)
        values = None if t is None else _sample(t)
        if values is None:
            return "unverified"
        if t.numel() != saved.get("numel"):
            return "stale"
        now = torch.tensor(values, dtype=torch.float64)
        then = torch.tensor(saved.get("values", []), dtype=torch.float64)
        if now.shape != then.shape:
            return "unverified"
        if float((now - then).norm()) > FINGERPRINT_RTOL * float(then.norm()):
            return "stale"
    return "initialized"


def is_initialized(model: Any) -> bool:
    """Whether ``model``'s weights came from GradInit: ``config.gradinit`` is set and its
    fingerprint matches the weights (an entry without a fingerprint is trusted)."""
    return initialization_state(model) in ("initialized", "unverified")


_STALE = (
    "model.config.gradinit describes other weights than this model's: it was built from an "
    "initialized model's config (fresh random weights), or its weights were changed after "
    "GradInit by code that did not update the record"
)


def stale_message() -> str:
    return _STALE


def drop_stale_record(model: Any) -> State:
    """Remove a stale ``config.gradinit`` (with a warning), so it is neither trusted nor
    saved again; returns the state found."""
    state = initialization_state(model)
    if state == "stale":
        logger.warning("%s. Treating the model as not initialized.", _STALE)
        delattr(model.config, CONFIG_KEY)
    return state


def already_initialized_message(what: str = "This model") -> str:
    """The one refusal text for a model whose weights are already GradInit-initialized."""
    return (
        f"{what} is already GradInit-initialized (its config.gradinit matches its weights); "
        "running GradInit again would compound the scales. Train it as it is. To run GradInit "
        "on these weights anyway, delete the record first: `del model.config.gradinit`."
    )


def check_not_initialized(model: Any, *, warn_stale: bool = False) -> None:
    """Raise a :class:`GradInitError` before scales are applied to a model whose weights are
    already GradInit-initialized (scaling twice would compound the scales); ``warn_stale``:
    say so when a stale record is about to be replaced."""
    state = initialization_state(model)
    if state == "stale" and warn_stale:
        logger.warning("%s. It will be replaced by this run's record.", _STALE)
    if state in ("initialized", "unverified"):
        raise GradInitError(already_initialized_message())


def same_run(entry: Mapping[str, Any], other: Mapping[str, Any]) -> bool:
    """Whether two ``config.gradinit`` entries describe the same GradInit run (settings and
    summary)."""

    def plain(value: Any) -> Any:
        return json.loads(json.dumps(value))

    return all(plain(entry.get(k)) == plain(other.get(k)) for k in ("settings", "summary"))


def loaded_weights_reason(model: Any) -> str | None:
    """Why ``model``'s weights are not an init, or None: a PEFT model (adapters on a base
    model), or parameters that ``from_pretrained`` loaded from a checkpoint (transformers marks
    them ``_is_hf_initialized``; a model built from a config has none)."""
    if hasattr(model, "peft_config"):
        return "it is a PEFT model (adapters on a trained base model)"
    params = getattr(model, "parameters", None)
    if callable(params) and any(getattr(p, "_is_hf_initialized", False) for p in params()):
        return "its weights were loaded from a checkpoint (from_pretrained)"
    return None
