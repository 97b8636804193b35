"""C++ symbol names as people read them, through the `cxxfilt` package (libstdc++'s demangler).

Every place that shows a native frame or a kernel name goes through `demangle`:
stored frames keep whatever the producer wrote (Ingero databases hold mangled
names), so display-time demangling covers old and imported databases too.
"""

from __future__ import annotations

from functools import lru_cache

import cxxfilt

# Itanium ABI prefixes: `_Z` (and `__Z`, the Mach-O spelling some tools keep).
_MANGLED = ("_Z", "__Z")


@lru_cache(maxsize=65536)
def demangle(name: str) -> str:
    """The demangled form of an Itanium-mangled C++ name; any other name (or one that does not parse) as given."""
    if not name.startswith(_MANGLED):
        return name
    # A symbol+offset label (`_ZN3foo3barEv+0x1c`) demangles without its suffix.
    base, plus, rest = name.partition("+")
    try:
        return cxxfilt.demangle(base) + plus + rest
    except cxxfilt.InvalidName:
        return name


__all__ = ["demangle"]
