"""What a backend kind provides to the engine cache: a key, a build, and a load.

:func:`engines.prepare.prepare_engines` drives a toolchain through the cache:
compute the :class:`~engines.cache.EngineKey`, load the cached artifact if it is
intact, otherwise build it into a temporary file that the cache commits
atomically, then load it.
"""

import abc
from pathlib import Path
from typing import Dict, List

from engines.backend import Backend, ModelSpec
from engines.cache import EngineKey, TensorShape


class Toolchain(abc.ABC):
    kind: str = ""
    artifact_suffix: str = ""

    @abc.abstractmethod
    def key(self, spec: ModelSpec) -> EngineKey:
        """Everything that makes this model's artifact invalid on this device."""

    @abc.abstractmethod
    def build(self, spec: ModelSpec, temp: Path) -> None:
        """Build the artifact into ``temp`` (raises BuildError)."""

    @abc.abstractmethod
    def load(self, spec: ModelSpec, data: bytes) -> Backend:
        """A runnable backend from an artifact's verified bytes (raises EngineError)."""

    @abc.abstractmethod
    def versions(self) -> Dict[str, str]:
        """Versions recorded in the sidecar of what this toolchain builds."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release what the toolchain holds (a CUDA context, for TensorRT)."""


def max_shapes(spec: ModelSpec) -> List[TensorShape]:
    """The inputs at their largest batch, as the key records them."""
    return [
        TensorShape(name=t.name, shape=list(t.shape(spec.max_batch)), dtype=t.dtype.name)
        for t in spec.inputs
    ]
