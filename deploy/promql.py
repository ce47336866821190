"""PromQL checks shared by the tests of the alert rules and of the dashboard: which series an
expression names, and a Grafana panel query made into plain PromQL."""

from __future__ import annotations

import re

import promql_parser

GRAFANA_VARIABLES = {
    # Grafana's own: the rate window it computes from the scrape interval and the step.
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
}
"""Grafana's built-in variables, and a value each for queries outside Grafana."""

_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")


def substitute(expr: str, values: dict[str, str]) -> str:
    """A panel's query with Grafana's variables (`$name`, `${name}`) replaced: the built-in
    ones by GRAFANA_VARIABLES, the dashboard's by `values`. KeyError names an unknown one."""

    def value(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        return GRAFANA_VARIABLES.get(name) or values[name]

    return _VARIABLE.sub(value, expr)


def series_names(expr: str) -> set[str]:
    """The metric names an expression selects (ValueError if it does not parse, or selects
    series by a name pattern, which no check could follow)."""
    names: set[str] = set()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.MatrixSelector):
            node = node.vector_selector
        if not isinstance(node, promql_parser.VectorSelector):
            return
        by_matcher = [m for m in node.matchers.matchers if m.name == "__name__"]
        if node.name is not None:
            names.add(node.name)
        for matcher in by_matcher:
            if matcher.op != promql_parser.MatchOp.Equal:
                raise ValueError(f"{expr}: selects series by a name pattern ({matcher})")
            names.add(matcher.value)
        if node.name is None and not by_matcher:
            raise ValueError(f"{expr}: a selector without a metric name")

    try:
        tree = promql_parser.parse(expr)
    except Exception as exc:  # the parser raises its own error types
        raise ValueError(f"{expr}: {exc}") from exc
    promql_parser.walk(tree, visit)
    return names
