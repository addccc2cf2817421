"""PromQL operators: arithmetic, comparisons (with and without ``bool``), ``and``/``or``/
``unless``, vector matching with ``on``/``ignoring`` and ``group_left``/``group_right``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import promql_parser as pp

from alwayson.metrics.promql.values import (
    ARITHMETIC,
    COMPARISON,
    NAME,
    SET_OPS,
    Bools,
    Floats,
    QueryError,
    Scalar,
    Series,
    Value,
    as_vector,
    dedupe,
    drop_name,
    group_by_signature,
    overlap,
    show_signature,
)

if TYPE_CHECKING:
    from alwayson.metrics.promql.engine import Evaluation


# -- operators ----------------------------------------------------------------------


def negate(ev: Evaluation, value: Value) -> Value:
    if isinstance(value, Scalar):
        return Scalar(-value.values)
    return dedupe(
        [Series(drop_name(s.labels), -s.values, s.present) for s in as_vector(value, "-")]
    )


def binary(ev: Evaluation, node: pp.BinaryExpr) -> Value:
    op = str(node.op)
    modifier = node.modifier
    lhs = ev.eval(node.lhs)
    rhs = ev.eval(node.rhs)
    if op in SET_OPS:
        return set_operation(op, as_vector(lhs, op), as_vector(rhs, op), modifier)
    if op not in ARITHMETIC and op not in COMPARISON:
        raise QueryError(f"operator {op!r} is not supported")
    return_bool = bool(modifier is not None and modifier.return_bool)
    if isinstance(lhs, Scalar) and isinstance(rhs, Scalar):
        with np.errstate(all="ignore"):
            if op in ARITHMETIC:
                return Scalar(ARITHMETIC[op](lhs.values, rhs.values))
            return Scalar(COMPARISON[op](lhs.values, rhs.values).astype(np.float64))
    if isinstance(rhs, Scalar):
        return with_scalar(op, as_vector(lhs, op), rhs.values, False, return_bool)
    if isinstance(lhs, Scalar):
        return with_scalar(op, as_vector(rhs, op), lhs.values, True, return_bool)
    return match_vectors(op, as_vector(lhs, op), as_vector(rhs, op), modifier, return_bool)


# -- operators on values ---------------------------------------------------------------


def with_scalar(
    op: str, vector: list[Series], scalar: Floats, swapped: bool, return_bool: bool
) -> list[Series]:
    out = []
    with np.errstate(all="ignore"):
        for s in vector:
            left, right = (scalar, s.values) if swapped else (s.values, scalar)
            if op in ARITHMETIC:
                out.append(Series(drop_name(s.labels), ARITHMETIC[op](left, right), s.present))
                continue
            keep = COMPARISON[op](left, right)
            if return_bool:
                out.append(Series(drop_name(s.labels), keep.astype(np.float64), s.present))
            elif (s.present & keep).any():
                # The vector's value stays, even when the scalar is on the left.
                out.append(Series(dict(s.labels), s.values, s.present & keep))
    return dedupe(out)


def signature_of(
    modifier: pp.BinModifier | None,
) -> Callable[[dict[str, str]], tuple[tuple[str, str], ...]]:
    matching = modifier.matching if modifier is not None else None
    if matching is not None and matching.type == pp.LabelModifierType.Include:
        names = sorted(set(matching.labels))
        return lambda labels: tuple((n, labels.get(n, "")) for n in names)
    ignored = set(matching.labels) if matching is not None else set()
    ignored.add(NAME)
    return lambda labels: tuple(sorted((k, v) for k, v in labels.items() if k not in ignored))


def match_vectors(
    op: str,
    lhs: list[Series],
    rhs: list[Series],
    modifier: pp.BinModifier | None,
    return_bool: bool,
) -> list[Series]:
    card = modifier.card if modifier is not None else pp.VectorMatchCardinality.OneToOne
    if card == pp.VectorMatchCardinality.ManyToMany:
        raise QueryError(f"many-to-many matching is only for and/or/unless, not {op!r}")
    signature = signature_of(modifier)
    matching = modifier.matching if modifier is not None else None
    on = matching is not None and matching.type == pp.LabelModifierType.Include
    matched_names = set(matching.labels) if matching is not None else set()
    include = list(modifier.group_labels or []) if modifier is not None else []
    swapped = card == pp.VectorMatchCardinality.OneToMany
    many, one = (rhs, lhs) if swapped else (lhs, rhs)
    one_groups = group_by_signature(one, signature)
    for sig, members in one_groups.items():
        if overlap(members):
            side = "left" if swapped else "right"
            raise QueryError(
                f"found duplicate series for the match group {show_signature(sig)} on the {side} "
                "hand-side of the operation; many-to-many matching not allowed: matching "
                "labels must be unique on one side"
            )
    if card == pp.VectorMatchCardinality.OneToOne:
        for sig, members in group_by_signature(many, signature).items():
            if overlap(members):
                raise QueryError(
                    f"multiple matches for labels {show_signature(sig)}: many-to-one matching "
                    "must be explicit (group_left/group_right)"
                )
    out = []
    with np.errstate(all="ignore"):
        for m in many:
            for o in one_groups.get(signature(m.labels), []):
                both = m.present & o.present
                if not both.any():
                    continue
                left, right = (o.values, m.values) if swapped else (m.values, o.values)
                if op in ARITHMETIC:
                    values, present = ARITHMETIC[op](left, right), both
                else:
                    keep = COMPARISON[op](left, right)
                    if return_bool:
                        values, present = keep.astype(np.float64), both
                    else:
                        values, present = left, both & keep
                if not present.any():
                    continue
                labels = dict(m.labels)
                if op in ARITHMETIC or return_bool:
                    labels.pop(NAME, None)
                if card == pp.VectorMatchCardinality.OneToOne:
                    if on:
                        labels = {k: v for k, v in labels.items() if k in matched_names}
                    else:
                        labels = {k: v for k, v in labels.items() if k not in matched_names}
                for name in include:
                    if o.labels.get(name, ""):
                        labels[name] = o.labels[name]
                    else:
                        labels.pop(name, None)
                out.append(Series(labels, values, present))
    return dedupe(out, "multiple matches for labels: grouping labels must ensure unique matches")


def set_operation(
    op: str, lhs: list[Series], rhs: list[Series], modifier: pp.BinModifier | None
) -> list[Series]:
    signature = signature_of(modifier)
    if op == "or":
        taken: dict[tuple[tuple[str, str], ...], Bools] = {}
        for s in lhs:
            sig = signature(s.labels)
            taken[sig] = taken[sig] | s.present if sig in taken else s.present.copy()
        out = list(lhs)
        for s in rhs:
            blocked = taken.get(signature(s.labels))
            present = s.present if blocked is None else s.present & ~blocked
            if present.any():
                out.append(Series(s.labels, s.values, present, s.times))
        return dedupe(out)
    other: dict[tuple[tuple[str, str], ...], Bools] = {}
    for s in rhs:
        sig = signature(s.labels)
        other[sig] = other[sig] | s.present if sig in other else s.present.copy()
    out = []
    for s in lhs:
        matched = other.get(signature(s.labels))
        if op == "and":
            if matched is None:
                continue
            present = s.present & matched
        else:
            present = s.present & ~matched if matched is not None else s.present
        if present.any():
            out.append(Series(s.labels, s.values, present, s.times))
    return out
