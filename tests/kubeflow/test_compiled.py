"""The committed component and pipeline YAML are exactly what the code compiles to, and say what they should."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("kfp")
pytest.importorskip("kfp.kubernetes")

from kfp import compiler
from kfp import components as kfp_components

import shardcache
from shardcache.kubeflow_components import components, ops

from .conftest import EXAMPLES as EXAMPLE
from .conftest import load_example

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("prefetch_op", "plan_op", "commit_op", "cache_status_op", "verify_op", "evict_op")
PIN = f"shardcache[k8s]=={shardcache.__version__}"




def executor(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return doc["deploymentSpec"]["executors"][f"exec-{name.replace('_', '-')}"]["container"]


def test_committed_component_yaml_is_current(tmp_path: Path) -> None:
    written = components.write_component_files(tmp_path)
    assert sorted(p.name for p in written) == sorted(f"{n}.yaml" for n in NAMES)
    for path in written:
        committed = components.component_file(path.stem)
        assert committed.read_text() == path.read_text(), (
            f"{committed} is stale: run `python -m shardcache.kubeflow_components.components compile`"
        )


def test_committed_component_yaml_loads_with_the_functions_interface() -> None:
    for name in NAMES:
        loaded = kfp_components.load_component_from_file(str(components.component_file(name))).component_spec
        built = getattr(components, name).component_spec
        assert (loaded.inputs, loaded.outputs) == (built.inputs, built.outputs), name


def test_committed_pipeline_yaml_is_current(tmp_path: Path) -> None:
    fresh = tmp_path / "pipeline.yaml"
    compiler.Compiler().compile(load_example().pipeline, str(fresh))
    assert (EXAMPLE / "pipeline.yaml").read_text() == fresh.read_text(), (
        "examples/kubeflow/pipeline.yaml is stale: run `python examples/kubeflow/pipeline.py`"
    )


def test_committed_parallel_pipeline_yaml_is_current(tmp_path: Path) -> None:
    fresh = tmp_path / "parallel_pipeline.yaml"
    compiler.Compiler().compile(load_example("parallel_pipeline").pipeline, str(fresh))
    assert (EXAMPLE / "parallel_pipeline.yaml").read_text() == fresh.read_text(), (
        "examples/kubeflow/parallel_pipeline.yaml is stale: run `python examples/kubeflow/parallel_pipeline.py`"
    )


def test_parallel_pipeline_shape() -> None:
    doc, platform = yaml.safe_load_all((EXAMPLE / "parallel_pipeline.yaml").read_text())
    tasks = doc["root"]["dag"]["tasks"]
    assert set(tasks) == {"plan-op", "for-loop-1", "commit-op"}
    loop = tasks["for-loop-1"]
    assert loop["dependentTasks"] == ["plan-op"]
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--plan-op-Output"
    # The commit waits for every part: it collects their outputs.
    assert tasks["commit-op"]["dependentTasks"] == ["for-loop-1"]
    (inner,) = doc["components"]["comp-for-loop-1"]["dag"]["tasks"].values()
    params = inner["inputs"]["parameters"]
    for name in ("part", "parts", "version"):
        assert params[name]["parameterExpressionSelector"] == f'parseJson(string_value)["{name}"]'
    assert inner["retryPolicy"]["maxRetryCount"] == 2  # a lost part is run again alone
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in ("exec-plan-op", "exec-prefetch-op", "exec-commit-op"):
        (secret,) = k8s[name]["secretAsEnv"]
        assert secret["secretName"] == "shardcache-redis-auth"


def test_parallel_pipeline_compiles_for_a_prebuilt_image(tmp_path: Path) -> None:
    image = "registry.example.com/ml/shardcache:0.1.0"
    path = tmp_path / "offline.yaml"
    compiler.Compiler().compile(load_example("parallel_pipeline").build_pipeline(image), str(path))
    executors = next(yaml.safe_load_all(path.read_text()))["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {image}


def test_prefetch_op_signature() -> None:
    params = list(inspect.signature(ops.prefetch_op).parameters.values())
    head = [(p.name, p.annotation, p.default) for p in params[:8]]
    assert head == [
        ("source", str, inspect.Parameter.empty),
        ("dataset", str, inspect.Parameter.empty),
        ("redis_url", str, ""),
        ("k8s_service", str, ""),
        ("k8s_secret", str, ""),
        ("shard_size", str, "4MiB"),
        ("compression", str, ""),
        ("allow_partial", bool, False),
    ]


@pytest.mark.parametrize("name", NAMES)
def test_lightweight_components_pin_this_version_on_the_base_image(name: str) -> None:
    doc = yaml.safe_load(components.component_file(name).read_text())
    container = executor(doc, name)
    assert container["image"] == components.BASE_IMAGE == "python:3.11-slim"
    install = container["command"][2]
    assert f"'{PIN}'" in install
    # Lightweight: the function's source travels in the YAML, importing shardcache inside its body.
    source = container["command"][-1]
    assert f"def {name}(" in source
    assert "from shardcache.kubeflow_components import" in source


@pytest.mark.parametrize("name", NAMES)
def test_image_variant_runs_the_installed_module_without_pip(name: str, tmp_path: Path) -> None:
    image = "registry.example.com/ml/shardcache:0.1.0"
    path = tmp_path / f"{name}.yaml"
    compiler.Compiler().compile(getattr(components.components_for_image(image), name), str(path))
    container = executor(yaml.safe_load(path.read_text()), name)
    assert container["image"] == image
    assert container["command"] == ["python3", "-m", "kfp.dsl.executor_main"]
    assert "pip install" not in path.read_text()
    assert container["args"][-2:] == ["--function_to_execute", name]


def test_kfp_config_points_every_component_at_the_ops_module() -> None:
    text = components.kfp_config()
    lines = text.splitlines()
    assert lines[0] == "[Components]"
    entries = dict(line.split(" = ") for line in lines[1:] if line)
    assert sorted(entries) == sorted(NAMES)
    assert {Path(p) for p in entries.values()} == {Path(ops.__file__).resolve()}


def test_image_name_is_checked() -> None:
    with pytest.raises(shardcache.ConfigError, match="image="):
        components.components_for_image("has space:1")


def test_component_file_names_the_known_components() -> None:
    with pytest.raises(shardcache.ConfigError, match="prefetch_op"):
        components.component_file("nope")


def test_committed_mix_pipeline_yaml_is_current(tmp_path: Path) -> None:
    fresh = tmp_path / "mix_pipeline.yaml"
    compiler.Compiler().compile(load_example().mix_pipeline, str(fresh))
    assert (EXAMPLE / "mix_pipeline.yaml").read_text() == fresh.read_text(), (
        "examples/kubeflow/mix_pipeline.yaml is stale: run `python examples/kubeflow/pipeline.py --mix`"
    )


def test_example_mix_pipeline_shape() -> None:
    doc, platform = yaml.safe_load_all((EXAMPLE / "mix_pipeline.yaml").read_text())
    tasks = doc["root"]["dag"]["tasks"]
    assert set(tasks) == {"prefetch-op", "prefetch-op-2", "train-op"}
    assert "dependentTasks" not in tasks["prefetch-op"]
    assert "dependentTasks" not in tasks["prefetch-op-2"]
    assert sorted(tasks["train-op"]["dependentTasks"]) == ["prefetch-op", "prefetch-op-2"]
    parameters = tasks["train-op"]["inputs"]["parameters"]
    assert parameters["version"]["taskOutputParameter"]["producerTask"] == "prefetch-op"
    assert parameters["mix_version"]["taskOutputParameter"]["producerTask"] == "prefetch-op-2"
    assert parameters["mix_weight"]["componentInputParameter"] == "mix_weight"
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in ("exec-prefetch-op", "exec-prefetch-op-2", "exec-train-op"):
        (secret,) = k8s[name]["secretAsEnv"]
        assert secret["secretName"] == "shardcache-redis-auth"


def test_example_pipeline_shape() -> None:
    doc, platform = yaml.safe_load_all((EXAMPLE / "pipeline.yaml").read_text())
    tasks = doc["root"]["dag"]["tasks"]
    assert set(tasks) == {"prefetch-op", "validate-op", "train-op"}
    # prefetch and validation run in parallel; training waits for both.
    assert "dependentTasks" not in tasks["prefetch-op"]
    assert "dependentTasks" not in tasks["validate-op"]
    assert sorted(tasks["train-op"]["dependentTasks"]) == ["prefetch-op", "validate-op"]
    version = tasks["train-op"]["inputs"]["parameters"]["version"]["taskOutputParameter"]
    assert version == {"outputParameterKey": "Output", "producerTask": "prefetch-op"}

    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in ("exec-prefetch-op", "exec-train-op"):
        (secret,) = k8s[name]["secretAsEnv"]
        assert secret["secretName"] == "shardcache-redis-auth"
        assert secret["keyToEnv"] == [{"envVar": "SHARDCACHE_REDIS_PASSWORD", "secretKey": "password"}]
        assert k8s[name]["nodeSelector"]["labels"]
    assert k8s["exec-train-op"]["tolerations"] == [
        {"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}
    ]
    # The password is not an input of anything.
    inputs = doc["root"]["inputDefinitions"]["parameters"]
    assert not [name for name in inputs if "password" in name or "secret" in name]


def test_example_pipeline_compiles_for_a_prebuilt_image(tmp_path: Path) -> None:
    image = "registry.example.com/ml/shardcache:0.1.0"
    path = tmp_path / "offline.yaml"
    compiler.Compiler().compile(load_example().build_pipeline(image), str(path))
    text = path.read_text()
    assert "pip install" not in text
    executors = next(yaml.safe_load_all(text))["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {image}


def test_facade_exports_and_discovery_needs_no_kfp() -> None:
    import shardcache.kubeflow_components as facade

    assert sorted(facade.__all__) == sorted([
        "prefetch_op", "plan_op", "commit_op", "cache_status_op", "verify_op", "evict_op",
        "components_for_image", "Components",
        "component_file", "BASE_IMAGE", "PACKAGES_TO_INSTALL", "cache_url_from_k8s", "discover_cache",
        "load_kube_config", "CacheEndpoint", "open_cache", "resolve_cache_address",
    ])
    for name in facade.__all__:
        assert getattr(facade, name) is not None
    # The CLI's --k8s-service works with the k8s extra alone: kfp is made unimportable here.
    code = ("import sys; sys.modules['kfp'] = None; "
            "from shardcache.kubeflow_components import cache_url_from_k8s, open_cache")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
