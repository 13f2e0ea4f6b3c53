"""Load, validate and save run configs.

Precedence, lowest first: dataclass defaults (`chatbridge/config.py`) < the model's default YAML
(`chatbridge/configs/models/{arch}_{model_type}.yaml`) < the run YAML < `--options key=value` overrides.
Every problem is reported as one `ConfigError` line naming the key, its section and the source it came from,
so that a typo fails at start-up with a message a researcher can act on, never deep inside a launch.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from chatbridge import registry
from chatbridge.config import ConnectorConfig, EncoderConfig, ModelConfig, TrainConfig
from chatbridge.errors import UserError

MODEL_PRESETS_DIR = Path(__file__).parent / "configs" / "models"
PLACEHOLDER_PREFIXES = ("/path/to/", "???")
OPTIONS_SOURCE = "--options"


class ConfigError(UserError):
    """A config problem, described in one line."""


@dataclasses.dataclass
class Source:
    """One layer of the merge and where it came from (a file path or `--options`)."""

    name: str
    data: DictConfig


def load_config(cfg_path: str | Path, options: Sequence[str] = (), require_paths: bool = True) -> TrainConfig:
    """Merge defaults, the model preset, the run YAML and overrides into a validated `TrainConfig`.

    Args:
        cfg_path: the run YAML.
        options: LAVIS-style overrides such as `run.init_lr=1e-5` or `model.connector.num_query_tokens=16`.
        require_paths: fail on path placeholders such as `/path/to/vicuna` (off to validate shipped templates).
    """
    run_source = Source(str(cfg_path), _read_yaml(Path(cfg_path)))
    option_source = Source(OPTIONS_SOURCE, _parse_options(options))
    sources = [model_preset_source(run_source, option_source), run_source, option_source]
    registry.load_builtin_components()  # the encoders' and connectors' schemas come from their builders
    merged: DictConfig = OmegaConf.structured(TrainConfig)
    for source in sources:
        _apply_component_schemas(merged, source)
        merged = _merge(merged, source)
    _layer_dataset_processors(merged, sources)
    config = _to_object(merged, sources)
    if require_paths:
        check_paths(config, sources)
    resolve_paths(config)
    return config


def model_preset_source(*sources: Source) -> Source:
    """The model's default YAML, chosen by `model.arch` and `model.model_type` (later sources win)."""
    arch, model_type = ModelConfig.arch, ModelConfig.model_type
    for source in sources:
        arch = OmegaConf.select(source.data, "model.arch", default=arch)
        model_type = OmegaConf.select(source.data, "model.model_type", default=model_type)
    path = MODEL_PRESETS_DIR / f"{arch}_{model_type}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in MODEL_PRESETS_DIR.glob("*.yaml"))
        raise ConfigError(f"no model preset for arch {arch!r} and model_type {model_type!r}; known: {known}")
    return Source(_display_path(path), _read_yaml(path))


def component_schema(kind: registry.Registry, name: str, base: type) -> type:
    """The config dataclass of a registered encoder or connector: the annotation of its builder's `cfg` parameter."""
    builder = kind.get(name)
    schema = typing.get_type_hints(builder).get("cfg")
    if not (isinstance(schema, type) and issubclass(schema, base)):
        raise TypeError(
            f"{kind.kind} builder {name!r} must annotate its `cfg` parameter with a {base.__name__} subclass"
        )
    return schema


def with_schema(section: Any, kind: registry.Registry, base: type) -> Any:
    """`section` (an EncoderConfig/ConnectorConfig) as an instance of its builder's schema, common fields kept."""
    schema = component_schema(kind, section.name, base)
    if type(section) is schema:
        return section
    return schema(**{spec.name: getattr(section, spec.name) for spec in dataclasses.fields(base)})


def _apply_component_schemas(merged: DictConfig, source: Source) -> None:
    """Before `source` is merged: give every encoder and the connector it names the schema of its builder, so
    that their own keys validate (and typos in them fail) like any other key."""
    encoders = OmegaConf.select(source.data, "model.encoders", default=None)
    for key in encoders.keys() if isinstance(encoders, DictConfig) else ():
        where = f"model.encoders.{key}"
        current = merged.model.encoders.get(key)
        name = OmegaConf.select(source.data, f"{where}.name", default=None) or (current.name if current else None)
        if not name:
            raise ConfigError(f"{source.name}: {where}.name is required (a registered encoder)")
        merged.model.encoders[key] = _schema_node(registry.ENCODERS, EncoderConfig, name, current, source, where)
    if OmegaConf.select(source.data, "model.connector", default=None) is not None:
        current = merged.model.connector
        name = OmegaConf.select(source.data, "model.connector.name", default=None) or current.name
        merged.model.connector = _schema_node(
            registry.CONNECTORS, ConnectorConfig, name, current, source, "model.connector"
        )


def _schema_node(
    kind: registry.Registry, base: type, name: str, current: DictConfig | None, source: Source, where: str
) -> DictConfig:
    """A node of the builder's schema; the common fields of `current` carry over when the name changes."""
    try:
        schema = component_schema(kind, name, base)
    except KeyError as error:
        raise ConfigError(f"{source.name}: {where}.name: {error.args[0]}") from None
    if current is not None and OmegaConf.get_type(current) is schema:
        return current
    common = {spec.name: current[spec.name] for spec in dataclasses.fields(base)} if current is not None else {}
    return OmegaConf.merge(OmegaConf.structured(schema), {**common, "name": name})


def _layer_dataset_processors(merged: DictConfig, sources: list[Source]) -> None:
    """Each dataset's processor = the top-level `processor`, then the dataset's own `processor` keys on top."""
    for name in merged.datasets:
        layers = [OmegaConf.select(s.data, f"datasets.{name}.processor", default=None) for s in sources]
        try:
            merged.datasets[name].processor = OmegaConf.merge(merged.processor, *[x for x in layers if x is not None])
        except OmegaConfBaseException as error:
            raise ConfigError(f"datasets.{name}.processor: {str(error).splitlines()[0]}") from None


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (next to every run's outputs and inside checkpoints)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(config_to_yaml(config))


def config_to_yaml(config: Any) -> str:
    """The config (or any config section) as YAML text."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def _read_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = OmegaConf.load(path)
    except Exception as error:  # yaml.YAMLError and friends: report the file, not a traceback
        raise ConfigError(f"{path}: not valid YAML: {error}".splitlines()[0]) from None
    if not isinstance(data, DictConfig):
        raise ConfigError(f"{path}: expected a mapping with sections model, datasets, run")
    return data


def _parse_options(options: Sequence[str]) -> DictConfig:
    """`key=value` pairs, or LAVIS's alternating `key value` form."""
    pairs = list(options)
    if pairs and all("=" not in item for item in pairs):
        if len(pairs) % 2:
            raise ConfigError(f"{OPTIONS_SOURCE}: expected key=value pairs, got {pairs}")
        pairs = [f"{key}={value}" for key, value in zip(pairs[::2], pairs[1::2], strict=True)]
    for item in pairs:
        if "=" not in item:
            raise ConfigError(f"{OPTIONS_SOURCE}: expected key=value, got {item!r}")
    return OmegaConf.from_dotlist(pairs)


def _merge(merged: DictConfig, source: Source) -> DictConfig:
    try:
        return OmegaConf.merge(merged, source.data)
    except ConfigKeyError as error:
        raise ConfigError(_unknown_key_message(error, source.name)) from None
    except ValidationError as error:
        raise ConfigError(_wrong_value_message(error, source)) from None
    except OmegaConfBaseException as error:
        raise ConfigError(f"{source.name}: {str(error).splitlines()[0]}") from None


def _to_object(merged: DictConfig, sources: list[Source]) -> TrainConfig:
    try:
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", "")
        raise ConfigError(f"{_source_of(key, sources)}: {str(error).splitlines()[0]} (key {key!r})") from None
    except ValueError as error:  # semantic checks in the dataclasses' __post_init__, which start with the key
        key = str(error).split(" ", 1)[0]
        origin = _source_of(key, sources) if "." in key else None
        run_yaml = next(source.name for source in reversed(sources) if source.name != OPTIONS_SOURCE)
        raise ConfigError(f"{origin if origin and not origin.endswith('(default)') else run_yaml}: {error}") from None
    assert isinstance(config, TrainConfig)
    return config


def _unknown_key_message(error: ConfigKeyError, source: str) -> str:
    full_key = str(error.full_key)
    section, _, key = full_key.rpartition(".")
    valid = [f.name for f in dataclasses.fields(error.object_type)] if error.object_type else []
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(valid)}"
    where = f"section {section!r}" if section else "the top level"
    return f"{source}: unknown key {key!r} in {where} ({hint})"


def _wrong_value_message(error: ValidationError, source: Source) -> str:
    full_key = str(error.full_key)
    expected = _expected_type(error.object_type, full_key.rpartition(".")[2])
    value = OmegaConf.select(source.data, full_key, default=None, throw_on_missing=False)
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value)
    return f"{source.name}: wrong type for {full_key!r}: expected {expected}, got {value!r} ({type(value).__name__})"


def _expected_type(owner: type | None, key: str) -> str:
    if owner is None or not dataclasses.is_dataclass(owner):
        return "another type"
    hint = typing.get_type_hints(owner).get(key)
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(repr(choice) for choice in typing.get_args(hint))
    return _type_name(hint)


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if arg is type(None) else _type_name(arg) for arg in typing.get_args(hint))
    if origin is not None:
        return str(hint).replace("typing.", "")
    return getattr(hint, "__name__", str(hint))


def check_paths(config: TrainConfig, sources: list[Source] | None = None) -> None:
    """Fail on every path field still holding a placeholder, naming the key and what belongs there."""
    for key, value, what in _path_fields(config, ""):
        if isinstance(value, str) and value.startswith(PLACEHOLDER_PREFIXES):
            origin = _source_of(key, sources or [])
            raise ConfigError(
                f"{origin}: {key!r} is unset (placeholder {value!r}): set it to {what}, "
                f"in the YAML or with --options {key}=<path>"
            )


def _path_fields(node: Any, prefix: str, outputs: bool = True) -> typing.Iterator[tuple[str, Any, str]]:
    if isinstance(node, dict):
        for name, child in node.items():
            yield from _path_fields(child, f"{prefix}{name}.", outputs)
        return
    if not dataclasses.is_dataclass(node):
        return
    for spec in dataclasses.fields(node):
        value = getattr(node, spec.name)
        if "path" in spec.metadata:
            if outputs or not spec.metadata.get("output"):
                yield f"{prefix}{spec.name}", value, spec.metadata["path"]
        else:
            yield from _path_fields(value, f"{prefix}{spec.name}.", outputs)


def check_inputs_exist(config: TrainConfig, sections: Sequence[str] = ("model", "datasets", "valor_data_opts")) -> None:
    """Every input path set in `sections` exists, checked before a run builds anything; a missing one fails in one
    line naming its key. Brace patterns (shards) are checked by their folder."""
    for key, value, what in _path_fields(config, "", outputs=False):
        if not isinstance(value, str) or not key.startswith(tuple(sections)):
            continue
        path = Path(value.split("{", 1)[0]).parent if "{" in value else Path(value)
        if not path.exists():
            raise ConfigError(f"{key}: {path} does not exist (it should be {what})")


def check_output_folder(folder: str | Path, key: str) -> Path:
    """Create `folder` if needed and make sure files can be written in it; fails in one line naming `key`."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key}: {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"{key}: cannot write to {path} ({error.strerror or error})") from None
    return path


def _source_of(key: str, sources: list[Source]) -> str:
    """The last source that sets `key` (later sources override earlier ones), else the defaults."""
    for source in reversed(sources):
        if key and OmegaConf.select(source.data, key, default=None, throw_on_missing=False) is not None:
            return source.name
    return "chatbridge/config.py (default)"


def resolve_paths(config: TrainConfig) -> None:
    """Make every relative path field absolute against `run.root` (itself relative to the working directory)."""
    root = Path(config.run.root).expanduser().resolve()
    for key, value, _what in _path_fields(config, ""):
        if isinstance(value, str) and not value.startswith(PLACEHOLDER_PREFIXES):
            _set_by_key(config, key, str(root / Path(value).expanduser()))


def _set_by_key(config: TrainConfig, key: str, value: str) -> None:
    *parents, name = key.split(".")
    node: Any = config
    for part in parents:
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    setattr(node, name, value)


def _display_path(path: Path) -> str:
    """A path shown relative to the working directory when it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def registry_references(config: TrainConfig) -> list[tuple[str, Any, str]]:
    """Every (config key, registry, name) the config refers to, so that all can be resolved before a launch."""
    registry.load_builtin_components()
    model = config.model
    references = [
        ("model.arch", registry.MODELS, model.arch),
        ("model.connector.name", registry.CONNECTORS, model.connector.name),
        ("model.llm.name", registry.LLMS, model.llm.name),
        ("model.chat_template", registry.CHAT_TEMPLATES, model.chat_template),
    ]
    references += [(f"model.encoders.{key}.name", registry.ENCODERS, e.name) for key, e in model.encoders.items()]
    references += [(f"datasets.{name}.builder", registry.DATASETS, d.builder) for name, d in config.datasets.items()]
    benchmarks = config.evaluation.benchmarks.items()
    references += [(f"evaluation.benchmarks.{name}.task", registry.TASKS, b.task) for name, b in benchmarks]
    processors = [("processor", config.processor)] + [
        (f"datasets.{n}.processor", d.processor) for n, d in config.datasets.items()
    ]
    for where, processor in processors:
        for modality in ("image", "video", "audio"):
            name = getattr(processor, f"{modality}_processor")
            if name is not None:
                references.append((f"{where}.{modality}_processor", registry.PROCESSORS, name))
    return references


def check_registry_names(config: TrainConfig) -> None:
    """Resolve every registered name the config uses; an unknown one fails naming its key and the known names."""
    for key, kind, name in registry_references(config):
        if name not in kind:
            raise ConfigError(f"{key}: unknown {kind.kind} {name!r}; known: {kind.names()}")
