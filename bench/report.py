"""results.json and the table printed at the end of a run."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS_PATH = Path(__file__).resolve().parent / "results.json"
_HIDDEN = frozenset({"method", "search_server", "postgresql"})


@dataclass
class Results:
    """Figures, the inputs each was measured with, and the measurements behind them."""

    figures: dict[str, float | int] = field(default_factory=dict)
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, value: float | int, inputs: dict[str, Any]) -> None:
        """Record one figure with its inputs."""
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"figure {name} is {value}")
        self.figures[name] = round(value, 3) if isinstance(value, float) else value
        self.inputs[name] = inputs

    def as_json(self) -> dict[str, Any]:
        """The document written to results.json."""
        return {
            "figures": self.figures,
            "inputs": self.inputs,
            "environment": self.environment,
            "details": self.details,
        }

    def write(self, path: Path = RESULTS_PATH) -> Path:
        """Write results.json; returns its path."""
        path.write_text(json.dumps(self.as_json(), indent=2, default=str) + "\n", encoding="utf-8")
        return path


def _value(value: float | int) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}"


def _summary(inputs: dict[str, Any]) -> str:
    # Long explanations, nested settings and the server names stay in results.json.
    shown = {
        key: value
        for key, value in inputs.items()
        if key not in _HIDDEN and not isinstance(value, dict) and len(str(value)) <= 48
    }
    return ", ".join(f"{key}={value}" for key, value in shown.items())


def table(results: Results) -> str:
    """The figures as an aligned text table, one line per figure."""
    names = list(results.figures)
    width = max(len(n) for n in names)
    values = {n: _value(results.figures[n]) for n in names}
    vwidth = max(len(v) for v in values.values())
    lines = [f"{'figure':<{width}}  {'value':>{vwidth}}  inputs", "-" * (width + vwidth + 40)]
    for name in names:
        summary = _summary(results.inputs.get(name, {}))
        lines.append(f"{name:<{width}}  {values[name]:>{vwidth}}  {summary}")
    servers = results.environment.get("servers", {})
    pg = servers.get("postgresql", {})
    settings = pg.get("settings", {})
    search = servers.get("search", {})
    lines.append(
        f"PostgreSQL {settings.get('server_version', '?')} ({pg.get('kind', '?')}, "
        f"fsync={settings.get('fsync', '?')}, "
        f"synchronous_commit={settings.get('synchronous_commit', '?')}); "
        f"search: {search.get('kind', '?')} {search.get('version', '')}; "
        f"BENCH_SCALE={results.environment.get('bench_scale')}; "
        f"runtime {results.environment.get('runtime_s')}s"
    )
    return "\n".join(lines)
