"""Connect the panel to its parameter node once, and disconnect it completely, on every Slicer version. Qt-free.

`connectGui` of Slicer's parameter node wrapper returns a tag for `disconnectGui` in newer Slicer, but None in 5.6
and 5.8, where `disconnectGui(None)` does nothing: reconnecting on every `enter()` then piles up GUI connections.
So the panel connects once per parameter (MRML) node, and a disconnect without a tag removes every GUI connection
the wrapper holds.
"""
from __future__ import annotations

from typing import Callable, Optional


class ParameterNodeBinding:
    """`bind(wrapper, gui)` connects once per parameter node; `unbind()` undoes it; `on_modified` is observed on
    the MRML node itself (one stable object, so the observation is added and removed exactly once)."""

    def __init__(self, on_modified: Optional[Callable] = None):
        self.on_modified = on_modified
        self.wrapper = None
        self._tag = None
        self._observer = None

    @staticmethod
    def mrml_node(wrapper):
        return getattr(wrapper, "parameterNode", wrapper)

    def is_bound_to(self, wrapper) -> bool:
        return self.wrapper is not None and self.mrml_node(self.wrapper) is self.mrml_node(wrapper)

    def bind(self, wrapper, gui) -> bool:
        """Connect `wrapper` to `gui` unless it is already; returns True when it connected now."""
        if wrapper is None or self.is_bound_to(wrapper):
            return False
        self.unbind()
        self._tag = wrapper.connectGui(gui)
        self.wrapper = wrapper
        if self.on_modified is not None:
            import vtk
            self._observer = self.mrml_node(wrapper).AddObserver(vtk.vtkCommand.ModifiedEvent, self.on_modified)
        return True

    def unbind(self) -> None:
        if self.wrapper is None:
            return
        tags = [self._tag] if self._tag is not None else list(getattr(self.wrapper, "_parameterGUIs", {}))
        for tag in tags:
            self.wrapper.disconnectGui(tag)
        if self._observer is not None:
            self.mrml_node(self.wrapper).RemoveObserver(self._observer)
        self.wrapper, self._tag, self._observer = None, None, None
