"""Per-model overrides in a config file's section (moskd.config): a command that declares
``PER_MODEL = PerModel(...)`` (StudentTrain) takes a ``models`` mapping in its section, one entry
per architecture, applied over the section for the model the command trains; command-line flags
still win. Torch-free, like moskd.config."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from moskd.errors import MoskdError
from moskd.values import nearest

MODELS_KEY = "models"  # a section's per-model overrides (PerModel)


@dataclasses.dataclass(frozen=True)
class PerModel:
    """A command's per-model overrides in its section's ``models`` mapping: `selector` is the setting
    naming the model (``model``), `names` maps its short values to architectures (``"1"`` ->
    densenet121), `known` lists the architectures an entry may name and `keys` the settings it may
    override. Torch-free: the names are spelt here, not read from the model registry."""
    selector: str
    keys: tuple[str, ...]
    names: dict[str, str]
    known: tuple[str, ...]

    def arch(self, model: Any) -> str:
        return self.names.get(str(model), str(model))

    def default(self, cls: type) -> Any:
        """The command's default model (when neither the file nor a flag names one)."""
        f = {f.name: f for f in dataclasses.fields(cls)}[self.selector]
        return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def per_model(cls: type) -> PerModel | None:
    found = getattr(cls, "PER_MODEL", None)
    return found if isinstance(found, PerModel) else None


def _key(key: Any) -> str:
    return str(key).replace("-", "_")


def check_models(value: Any, path: str, section: str, cls: type, spec: PerModel,
                 check_entry: Callable[..., None]) -> None:
    """A section's ``models`` mapping: known architectures, each a mapping of settings it may override."""
    where = f"config file {path}: section '{section}': {MODELS_KEY}"
    if not isinstance(value, dict):
        raise MoskdError(f"{where} must be a mapping of architecture: {{setting: value}}")
    for arch, entry in value.items():
        if str(arch) not in spec.known:
            raise MoskdError(f"{where}: unknown architecture '{arch}'{nearest(str(arch), spec.known)} "
                             f"(known: {', '.join(spec.known)})")
        if entry is None:
            continue
        if not isinstance(entry, dict):
            raise MoskdError(f"{where}.{arch} must be a mapping of setting: value")
        for k, v in entry.items():
            if _key(k) not in spec.keys:
                raise MoskdError(f"{where}.{arch}: unknown setting '{k}'{nearest(_key(k), spec.keys)} "
                                 f"(per-model settings: {', '.join(spec.keys)})")
            check_entry(_key(k), v, [cls], path, f"{section}.{MODELS_KEY}.{arch}")
