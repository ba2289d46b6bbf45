"""Ray workarounds that run inside the Ray workers of a local launch (checked against Ray 2.60.0).

Ray Train V2 starts a detached ``PlacementGroupCleaner`` actor per Train run; it removes the run's placement group
if the Train controller dies without releasing it. It asks whether the controller is alive through Ray's State API
(``ray.train.v2._internal.state.util.is_actor_alive`` -> ``ray.util.state.get_actor(address=None)``), which does not
use the worker's own connection: it resolves the cluster from ``RAY_ADDRESS``, ``/tmp/ray/ray_current_cluster`` or
every ``gcs_server`` process on the host (``ray._private.services.canonicalize_bootstrap_address_or_die``), then
queries the dashboard's HTTP API. So:

- with two local Ray instances on one machine (two launches at once), it finds two GCS processes and raises
  ``ConnectionError: Found multiple active Ray instances``; that is not the ``RayStateApiException`` its monitor
  loop catches, so the cleaner's thread dies with a traceback and no placement group is ever cleaned;
- with one instance but no dashboard (local launches start none: the dashboard extras are not installed), every
  query fails and the cleaner logs "Failed to query Ray Train Controller actor state" each second.

:func:`setup_worker` (Ray's ``worker_process_setup_hook``) makes the cleaner ask the GCS of the worker's own
connection instead (``ray._private.state.actors``), which needs neither an address lookup nor a dashboard. The patch
is applied when the cleaner's module is imported, so other workers do not pay for importing Ray Train.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

CLEANER_MODULE = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
HOOK = f"{__name__}.setup_worker"


def actor_alive_in_gcs(actor_id: str, timeout: int = 10) -> bool:
    """Whether actor ``actor_id`` (hex) is not DEAD, from the GCS this worker is connected to; an unknown actor is
    dead, as in Ray's State-API version. Errors surface as ``RayStateApiException`` (the cleaner retries on it)."""
    import ray._private.state
    from ray.util.state.exception import RayStateApiException

    try:
        info = ray._private.state.actors(actor_id=actor_id)
    except Exception as exc:  # the GCS briefly unavailable: the cleaner's loop retries on this exception
        raise RayStateApiException(f"GCS query of actor {actor_id} failed: {exc}") from exc
    return bool(info) and info.get("State") != "DEAD"


def _patch(module) -> None:
    module.is_actor_alive = actor_alive_in_gcs


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; when the cleaner's module is imported, wraps its loader to patch it once loaded."""

    def find_spec(self, name, path=None, target=None):
        if name != CLEANER_MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


def setup_worker() -> None:
    """Ray ``worker_process_setup_hook`` of local launches; never raises (a failing hook would stop the worker)."""
    try:
        if CLEANER_MODULE in sys.modules:
            _patch(sys.modules[CLEANER_MODULE])
        elif not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
            sys.meta_path.insert(0, _PatchOnImport())
    except Exception as exc:  # pragma: no cover - defensive: keep the worker alive, say why
        print(f"diml: could not patch Ray Train's PlacementGroupCleaner: {exc}", file=sys.stderr)
