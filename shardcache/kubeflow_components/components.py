"""shardcache's KFP v2 components, built from the functions in ``ops.py``.

Each component comes in two flavours:

* **lightweight** (``prefetch_op``, ``plan_op``, ``commit_op``, ``cache_status_op``, ``verify_op``,
  ``evict_op``):
  runs on :data:`BASE_IMAGE` and pip-installs :data:`PACKAGES_TO_INSTALL` (this very
  version of shardcache) and kfp when the step starts. Needs PyPI from the cluster.
* **prebuilt image** (:func:`components_for_image`): the same functions as KFP
  *containerized* components (``target_image``), for clusters without PyPI. The image
  is the repository's ``Dockerfile``: shardcache preinstalled, and a ``kfp_config.ini``
  in its working directory telling ``python3 -m kfp.dsl.executor_main`` where the
  functions live (``python -m shardcache.kubeflow_components.components kfp-config``
  writes it). Nothing is installed when the step starts.

The compiled YAML of the lightweight components ships in this package, so pipelines
in any language can use them::

    from kfp import components
    prefetch = components.load_component_from_file(component_file("prefetch_op"))

Regenerate the YAML after changing ``ops.py``::

    python -m shardcache.kubeflow_components.components compile
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kfp import compiler, dsl

from .. import __version__
from ..errors import ConfigError
from . import ops

__all__ = [
    "BASE_IMAGE",
    "PACKAGES_TO_INSTALL",
    "Components",
    "cache_status_op",
    "commit_op",
    "component_file",
    "components_for_image",
    "evict_op",
    "kfp_config",
    "plan_op",
    "prefetch_op",
    "verify_op",
    "write_component_files",
]

#: The image of the lightweight components: the Python the package is tested on, without extras.
BASE_IMAGE = "python:3.11-slim"
#: Installed when a lightweight step starts: this exact version, with the Kubernetes client for discovery.
PACKAGES_TO_INSTALL = (f"shardcache[k8s]=={__version__}",)

_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "prefetch_op": ops.prefetch_op,
    "plan_op": ops.plan_op,
    "commit_op": ops.commit_op,
    "cache_status_op": ops.cache_status_op,
    "verify_op": ops.verify_op,
    "evict_op": ops.evict_op,
}
_HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Components:
    """One flavour of the components; use them in a ``@dsl.pipeline`` like functions."""

    prefetch_op: Any
    plan_op: Any
    commit_op: Any
    cache_status_op: Any
    verify_op: Any
    evict_op: Any

    def items(self) -> list[tuple[str, Any]]:
        return [(name, getattr(self, name)) for name in _FUNCTIONS]


def _components(**options: Any) -> Components:
    """Every function of ``ops.py`` as a component, built with ``dsl.component(**options)``."""
    return Components(**{name: dsl.component(**options)(func) for name, func in _FUNCTIONS.items()})


def components_for_image(image: str) -> Components:
    """The components as containerized steps of ``image``, an image built from the repository's Dockerfile.

    >>> ops = components_for_image("registry.example.com/ml/shardcache:0.1.0")   # doctest: +SKIP
    >>> ops.prefetch_op(source="s3://bucket/train/", dataset="train", k8s_service="shardcache-redis")  # doctest: +SKIP
    """
    if not isinstance(image, str) or not image.strip() or any(c.isspace() for c in image):
        raise ConfigError(
            f"image={image!r} is invalid: pass the image built from shardcache's Dockerfile, "
            "e.g. 'registry.example.com/ml/shardcache:0.1.0'"
        )
    # install_kfp_package=False: the image has kfp already, and the cluster may have no PyPI.
    return _components(base_image=image, target_image=image, install_kfp_package=False)


def kfp_config() -> str:
    """The ``kfp_config.ini`` that lets a prebuilt image run the components (see the Dockerfile)."""
    module = Path(ops.__file__).resolve()
    lines = ["[Components]", *(f"{name} = {module}" for name in sorted(_FUNCTIONS)), ""]
    return "\n".join(lines)


def component_file(name: str) -> Path:
    """The packaged, compiled YAML of the lightweight component ``name`` (e.g. ``"prefetch_op"``)."""
    if name not in _FUNCTIONS:
        raise ConfigError(f"component {name!r} is not one of shardcache's: {', '.join(_FUNCTIONS)}")
    return _HERE / f"{name}.yaml"


def write_component_files(directory: str | Path = _HERE) -> list[Path]:
    """Compile every lightweight component to ``DIRECTORY/NAME.yaml``; return the paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, component in _DEFAULT.items():
        path = out / f"{name}.yaml"
        compiler.Compiler().compile(component, str(path))
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shardcache.kubeflow_components.components")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("compile", help="write the components' YAML (default: into the installed package)")
    build.add_argument("--out", default=str(_HERE), help="the folder to write NAME.yaml into")
    sub.add_parser("kfp-config", help="print the kfp_config.ini of an image with shardcache installed")
    args = parser.parse_args(argv)
    if args.command == "compile":
        for path in write_component_files(args.out):
            sys.stdout.write(f"{path}\n")
    else:
        sys.stdout.write(kfp_config())
    return 0


_DEFAULT = _components(base_image=BASE_IMAGE, packages_to_install=list(PACKAGES_TO_INSTALL))
prefetch_op = _DEFAULT.prefetch_op
plan_op = _DEFAULT.plan_op
commit_op = _DEFAULT.commit_op
cache_status_op = _DEFAULT.cache_status_op
verify_op = _DEFAULT.verify_op
evict_op = _DEFAULT.evict_op

if __name__ == "__main__":
    raise SystemExit(main())
