"""Run a command and write its resource usage as JSON: the small parent that makes ru_maxrss honest.

A process started by ``fork`` from a big Python keeps that Python's resident size as the starting
high-water mark of its ``ru_maxrss`` (Linux carries it across ``exec``), so the rehearsal's own memory
would show up in every measurement. This launcher, started with ``python -S -I`` (standard library
only, a few MB), forks the command instead and reports what ``wait4`` says about it and the children
it waited for.

    python -S -I launch.py USAGE.json COMMAND [ARG...]
"""

import json
import os
import sys


def main() -> int:
    usage_file, command = sys.argv[1], sys.argv[2:]
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(command[0], command)
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    with open(usage_file, "w", encoding="utf-8") as out:
        json.dump({"maxrss_kb": usage.ru_maxrss, "utime": usage.ru_utime, "stime": usage.ru_stime}, out)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
