"""How many Argo nodes and pods a compiled study pipeline makes for a profile (docs/orchestration.md, "Shape").

The compiled KFP spec says what runs once per fan-out item; the profile's grids say how many
items each fan-out has (``anonbench.workspace.grid``, as the run's ``grid`` tasks compute them).
This walks the spec's DAGs, multiplies each loop's body by its item count, and turns the run-time
instances into Argo nodes the way KFP's Argo compiler lays them out
(``backend/src/v2/compiler/argocompiler/dag.go`` as read at kubeflow/pipelines commit 008dcd6; not
checked against the 2.17.0 tag or a live Argo):

- the entry point: its DAG node, the root DAG's driver pod and the root DAG node (3 nodes, 1 pod);
- a container task: its driver pod and its executor pod (2 nodes, 2 pods), and a retry node
  above the executor when the task has a retry strategy (every task here);
- a DAG task (an inner pipeline, a ``dsl.If``): its driver pod and its DAG node (2 nodes, 1 pod);
- a ``ParallelFor``: the loop's DAG node, its driver pod and the node grouping the iterations
  (3 nodes, 1 pod), then per item the iteration's DAG node, its driver pod and the item's DAG
  node (3 nodes, 1 pod).

Usage: ``python -m benchmarks.scale.argo_nodes COMPILED.yaml [--profile paper] [--set k=v]``.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from anonbench.config import load_config
from anonbench.workspace import grid
from pipelines.settings import DEFAULT_SETTINGS, load_settings

REPO = Path(__file__).resolve().parents[2]
# (Argo nodes, pods) per run-time instance; "entry" once per run.
COST = {"entry": (3, 1), "container": (2, 2), "retry": (1, 0), "dag": (2, 1), "loop": (3, 1), "item": (3, 1)}


def instances(spec: dict[str, Any], items: Callable[[str], int]) -> Counter[str]:
    """Run-time instances of the compiled pipeline: containers (also by component), DAGs, loops, items.

    Args:
        spec: The compiled pipeline spec (the first YAML document).
        items: Items of a grid axis (``anonymize_classic``, ``train``, ...).

    Returns:
        Counts by kind (``container``, ``retry``, ``dag``, ``loop``, ``item``) and ``container:<component>``.
    """
    components = spec["components"]
    found: Counter[str] = Counter({"entry": 1})

    def walk(tasks: dict[str, Any], times: int) -> None:
        for task in tasks.values():
            component = components[task["componentRef"]["name"]]
            if "parameterIterator" in task:
                channel = task["parameterIterator"]["items"]["inputParameter"]  # pipelinechannel--grid-N-Output
                source = tasks[channel.removeprefix("pipelinechannel--").removesuffix("-Output")]
                count = items(source["inputs"]["parameters"]["axis"]["runtimeValue"]["constant"])
                found.update({"loop": times, "item": times * count})
                walk(component["dag"]["tasks"], times * count)
            elif "dag" in component:
                found["dag"] += times
                walk(component["dag"]["tasks"], times)
            else:
                name = task["componentRef"]["name"].removeprefix("comp-").rstrip("-0123456789")
                found.update({"container": times, f"container:{name}": times})
                found["retry"] += times if "retryPolicy" in task else 0

    walk(spec["root"]["dag"]["tasks"], 1)
    return found


def totals(found: Counter[str]) -> tuple[int, int]:
    """Argo nodes and pods of the instances (:data:`COST`)."""
    nodes = sum(found[kind] * cost[0] for kind, cost in COST.items())
    pods = sum(found[kind] * cost[1] for kind, cost in COST.items())
    return nodes, pods


def main() -> None:
    """Command line: print the instances, nodes and pods of a compiled pipeline for a profile."""
    parser = argparse.ArgumentParser(description="Argo nodes and pods of a compiled study pipeline.")
    parser.add_argument("compiled", type=Path)
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--settings", type=Path, default=DEFAULT_SETTINGS)
    args = parser.parse_args()
    cfg = load_config(REPO / "params.yaml", args.profile, args.overrides)
    shards = load_settings(args.settings).dp2_shards
    spec = next(yaml.safe_load_all(args.compiled.read_text(encoding="utf-8")))
    found = instances(spec, lambda axis: len(grid(cfg, axis, shards)))
    nodes, pods = totals(found)
    for kind, count in sorted(found.items()):
        print(f"{kind}: {count}")
    print(f"argo nodes: {nodes} (of them {found['retry']} retry nodes), pods: {pods}")


if __name__ == "__main__":
    main()
