"""A local Stigg: the subset of Stigg's GraphQL API the sidecar uses, seeded from a catalog.

Used by ``stigg-sidecar --local``, by the tests and by the benchmarks, always on loopback.
"""

from sidecar.emulator.catalog import Catalog, CatalogError, load_catalog
from sidecar.emulator.periods import Clock
from sidecar.emulator.server import Emulator, EmulatorServer, create_emulator_app
from sidecar.emulator.state import EmulatorError, EmulatorState

__all__ = [
    "Catalog",
    "CatalogError",
    "Clock",
    "Emulator",
    "EmulatorError",
    "EmulatorServer",
    "EmulatorState",
    "create_emulator_app",
    "load_catalog",
]
