"""Checks that the running environment holds exactly the locked versions.

    python scripts/check_lock.py scripts/constraints.txt

pip's `-c` only caps what is installed; a dependency that is missing from the lock installs at
whatever version the index serves that day. Exits 1, naming each package, if an installed
distribution is absent from the lock or differs from its pinned version.
"""
import importlib.metadata
import re
import sys

# Installed by venv itself, or this project (installed editable from the checkout).
IGNORED = {"pip", "setuptools", "wheel", "asc-jax"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: str) -> dict[str, str]:
    pins = {}
    for line in open(path):
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            if not sep:
                raise SystemExit(f"{path}: {line!r} is not a name==version pin")
            pins[canonical(name)] = version.strip()
    return pins


def main(path: str) -> int:
    pins = read_lock(path)
    problems = []
    for dist in importlib.metadata.distributions():
        name = canonical(dist.metadata["Name"])
        if name in IGNORED:
            continue
        version = dist.version.split("+")[0]  # torch 2.13.0+cpu satisfies the pin 2.13.0
        if name not in pins:
            problems.append(f"{name}=={version} is installed but not in {path}")
        elif pins[name] != version:
            problems.append(f"{name}=={version} is installed but {path} pins {pins[name]}")
    for problem in sorted(problems):
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
