"""KFP components of a container method (``anonymize.containers``): its job written, run in its image, read.

A container method is three tasks: :func:`prepare_job` (CPU image) writes the job folder in the
workspace and returns its path; :func:`container_task` is the method's own image running its command
on that folder (anonbench.anonymizers.container has the contract); the anonymize component then reads
the finished job into the variant as for any method. The image and command are compiled in, one
task per container method, from the parameters the pipeline is compiled with.
"""

from typing import Any

import yaml
from kfp import components

from anonbench.config import ContainerMethod
from components.images import cpu_component


@cpu_component
def prepare_job(workspace: str, method: str) -> str:
    """Write the container method's job folder for the images still to do; its absolute path."""
    from pathlib import Path

    from anonbench.workspace import run_task

    return str(Path(workspace) / run_task(workspace, "anonymize", "--method", method, "--prepare-job"))


def container_task(method: str, definition: ContainerMethod) -> Any:
    """The component that runs ``definition``'s command in its image with the job folder as last argument."""
    spec = {
        "name": f"anonymize-{method}-container",
        "description": f"Container method {method}: {definition.summary or definition.image}",
        "inputs": [{"name": "job", "type": "String"}],
        "implementation": {
            "container": {"image": definition.image, "command": definition.command, "args": [{"inputValue": "job"}]}
        },
    }
    return components.load_component_from_text(yaml.safe_dump(spec, sort_keys=False))
