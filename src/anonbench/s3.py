"""anonbench's own S3 credentials, kept apart from the KFP launcher's.

On the cluster the ``anonbench-s3`` Secret becomes ``ANONBENCH_S3_ACCESS_KEY_ID``,
``ANONBENCH_S3_SECRET_ACCESS_KEY`` and ``ANONBENCH_S3_ENDPOINT_URL`` in the tasks that use
S3. The ``AWS_*`` names would share the container with the KFP launcher, whose S3 client reads
them where the cluster takes its artifact store's credentials from the environment, and would
write the pipeline's artifacts with anonbench's keys (or fail on its bucket). The process that
talks to S3 (a stage started by the component, never the launcher around it) maps them to
the names boto3 and DVC read. On a laptop ``AWS_*`` work as they are.
"""

from __future__ import annotations

import os

PREFIX = "ANONBENCH_S3_"
KEYS = ("ACCESS_KEY_ID", "SECRET_ACCESS_KEY", "ENDPOINT_URL")


def s3_environment() -> dict[str, str]:
    """The ``AWS_*`` variables anonbench's S3 clients use: each ``ANONBENCH_S3_<KEY>``, else ``AWS_<KEY>``.

    Returns:
        Only the variables that are set (on AWS itself the endpoint is left out).
    """
    found = {key: os.environ.get(PREFIX + key) or os.environ.get(f"AWS_{key}") for key in KEYS}
    return {f"AWS_{key}": value for key, value in found.items() if value}


def use_s3_environment() -> None:
    """Put :func:`s3_environment` into this process's environment, for DVC's S3 file system.

    Called by the stage's own process; its children inherit it, the launcher around it never sees it.
    """
    os.environ.update(s3_environment())
