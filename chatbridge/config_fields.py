"""Field helpers of the typed configuration: path-valued fields and load-time semantic checks."""

from __future__ import annotations

from dataclasses import field
from typing import Any

# Fields whose value is a file or folder carry metadata {"path": what to put there}; the loader resolves them
# against the project root and reports placeholders such as "/path/to/vicuna" by key and by this text.


def path_field(what: str, default: str | None = None, output: bool = False) -> Any:
    """A path-valued field; `what` tells the user what belongs there when it is unset. Input paths must exist
    before a run builds anything; `output` paths are written by the run."""
    return field(default=default, metadata={"path": what, "output": output})


def require(condition: bool, key: str, rule: str, value: Any) -> None:
    """A semantic check at load time: `key` must satisfy `rule` (e.g. "be >= 1"); raises ValueError naming both."""
    if not condition:
        raise ValueError(f"{key} must {rule}, got {value!r}")


def at_least(section: Any, where: str, minimum: float, *names: str) -> None:
    """Every named field of `section` (None allowed, meaning unset) is >= `minimum`."""
    for name in names:
        value = getattr(section, name)
        require(value is None or value >= minimum, f"{where}.{name}", f"be >= {minimum:g}", value)
