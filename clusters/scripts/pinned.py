"""Print pyproject.toml's requirement for each named package, one a line: ``python pinned.py PYPROJECT NAME...``.

``ray`` is printed with the ``default`` extra added (dashboard and job server, which a cluster head needs), so
nodes and images install exactly the bounds the project declares. Used by node-setup.sh and the KubeRay Dockerfile.
"""

from __future__ import annotations

import re
import sys
import tomllib


def requirement(dependencies: list[str], name: str) -> str:
    for dep in dependencies:
        match = re.match(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?(.*)$", dep)
        if match and match.group(1).lower() == name.lower():
            if name.lower() == "ray":
                extras = [e.strip() for e in (match.group(2) or "[]")[1:-1].split(",") if e.strip()]
                return f"ray[{','.join(['default', *[e for e in extras if e != 'default']])}]{match.group(3)}"
            return dep
    raise SystemExit(f"pinned.py: {name} is not a dependency in pyproject.toml")


def main(argv: list[str]) -> int:
    with open(argv[0], "rb") as f:
        dependencies = tomllib.load(f)["project"]["dependencies"]
    for name in argv[1:]:
        print(requirement(dependencies, name))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
