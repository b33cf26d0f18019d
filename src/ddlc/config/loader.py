"""Load a YAML config, apply dotted command-line overrides, validate, and explain failures in one line.

    file (YAML) -> size check (aliases expanded, bounded) -> + overrides -> Config (pydantic, strict)

YAML aliases are allowed (`<<: *defaults` is handy), but a config that would expand to more than
MAX_CONFIG_VALUES values (an alias bomb, or a recursive alias) is refused before anything copies it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml
from pydantic import ValidationError

from ddlc.config.schema import Config
from ddlc.errors import UserError


class ConfigError(UserError):
    """The config file or an override is invalid; the message names the file and the field."""


# A real config has well under a hundred values; the bound only has to stop a billion-laughs document.
MAX_CONFIG_VALUES = 10_000
MAX_CONFIG_BYTES = 1 << 20


def parse_override(text: str) -> tuple[list[str], Any]:
    """`training.max_steps=200` -> (["training", "max_steps"], 200). Values are parsed as YAML scalars."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}': expected dotted.key=value, e.g. training.max_steps=200")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except (yaml.YAMLError, ValueError):
        # not valid YAML, or an integer of more digits than Python converts (4,300): keep the literal string,
        # and validation names the key
        value = raw
    check_size(value, f"override '{key}'")
    return key.split("."), value


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    """Set each dotted key in a copy of `data`; unknown keys are left for validation to reject."""
    result = _deep_copy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = value
    return result


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if path.is_dir():
        raise ConfigError(f"config path is a directory, not a file: {path}")
    try:
        with open(path, "rb") as file:  # bounded: /dev/zero or a 10 GB file is not a config
            raw = file.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES:,} bytes, not a config file")
        data = yaml.safe_load(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        problem = " ".join(str(getattr(exc, "problem", exc)).split())  # one line: a ReaderError spans two
        raise ConfigError(f"{path}{line}: invalid YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    check_size(data, str(path))
    if not data:
        note(f"{path} is empty: training with the built-in defaults (see docs/configuration.md)")
    return data


def check_size(data: Any, source: str, limit: int = MAX_CONFIG_VALUES) -> int:
    """Count the values `data` holds with every alias expanded, without expanding anything.

    PyYAML gives an alias the very same object as its anchor, so counting once per object (memoised by id)
    costs only the size of the document, while a copy would cost the expanded size.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Any) -> int:
        if not isinstance(node, (dict, list)):
            return 1
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise ConfigError(f"{source}: a YAML alias refers to itself (recursive structure)")
        active.add(key)
        children = list(node.keys()) + list(node.values()) if isinstance(node, dict) else node
        total = 1
        for child in children:
            total += size(child)
            if total > limit:
                raise ConfigError(
                    f"{source}: expands to more than {limit:,} values (YAML aliases?); a config is far smaller"
                )
        active.discard(key)
        sizes[key] = total
        return total

    try:
        return size(data)
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply") from None


_NOTED: set[str] = set()


def note(message: str) -> None:
    """An informational line on stderr, once per process (and only by rank 0 inside a launcher)."""
    if message in _NOTED:
        return
    _NOTED.add(message)
    for name in ("RANK", "HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID"):
        if name in os.environ:
            if os.environ[name] != "0":
                return
            break
    print(f"note: {message}", file=sys.stderr, flush=True)


def validate(data: Mapping, source: str, overrides: Iterable[str] = ()) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source, list(overrides))) from None


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Read `path` (or the built-in defaults when None), apply overrides, and validate."""
    overrides = list(overrides)
    data = read_yaml(path) if path is not None else {}
    merged = apply_overrides(data, overrides)
    return validate(merged, str(path) if path is not None else "<defaults>", overrides)


def dump_config(config: Config) -> str:
    """The fully resolved config as YAML (written next to every run)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def _describe(exc: ValidationError, source: str, overrides: list[str]) -> str:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "<root>"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif "input" in first and not isinstance(first["input"], (dict, list)):
        shown = repr(first["input"])
        message += f" (got {shown if len(shown) <= 80 else shown[:60] + f'... ({len(shown)} characters)'})"
    origin = source
    keys = [o.split("=", 1)[0].strip() for o in overrides]
    if any(k == field or k.startswith(field + ".") or field.startswith(k + ".") for k in keys):
        origin = f"{source} (command-line override)"
    more = f" [+{len(exc.errors()) - 1} more]" if len(exc.errors()) > 1 else ""
    if message.startswith(field + "."):
        return f"{origin}: {message}{more}"  # a cross-field check already names its field
    return f"{origin}: {field}: {message}{more}"


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data
