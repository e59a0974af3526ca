"""Hypothesis strategies drawn from the interface table: values of every argument type,
argument sets of every function, and whole messages.  Used by the tests and by the fuzzer."""

from __future__ import annotations

from hypothesis import strategies as st

from . import types as T
from .interface import INTERFACE, Function, Interface


def _f32_values():
    # Only values that survive a round trip through 32 bits (NaN never compares equal).
    return st.floats(width=32, allow_nan=False)


def values(t: T.Type) -> st.SearchStrategy:
    if t is T.Bool:
        return st.booleans()
    if t.py is int:
        edges = st.sampled_from(sorted(x for x in {t.lo, t.lo + 1, 0, 1, t.hi - 1, t.hi} if t.lo <= x <= t.hi))
        return st.one_of(edges, st.integers(t.lo, t.hi))
    if t is T.Float32:
        return _f32_values()
    # Empty and long are the boundaries that handlers most often get wrong: each is drawn
    # on purpose (Hypothesis on its own prefers short values, and rarely draws a long one).
    if t is T.String:
        chars = st.characters(exclude_characters="\x00", exclude_categories=("Cs",))
        return st.one_of(st.just(""), st.text(chars, max_size=40), st.text(chars, min_size=41, max_size=300))
    if t is T.Binary:
        return st.one_of(st.just(b""), st.binary(min_size=1, max_size=64), st.binary(min_size=65, max_size=1000))
    raise ValueError(f"no strategy for {t}")


def args_for(fn: Function) -> st.SearchStrategy:
    return st.fixed_dictionaries({p.name: values(p.type) for p in fn.args})


def results_for(fn: Function) -> st.SearchStrategy:
    return st.fixed_dictionaries({p.name: values(p.type) for p in fn.results})


def functions(interface: Interface = INTERFACE, side: str | None = None) -> st.SearchStrategy:
    fns = [f for f in interface if side is None or f.server == side]
    return st.sampled_from(fns)


