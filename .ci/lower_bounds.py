"""Print `name==lower` for every `name>=lower` in setup.cfg's install_requires and extras (for `make test-lowest`).

A package floored in several places (numpy: the base package and the train extra) gets its highest floor, the
one an install with those extras must meet."""
import configparser
import re
import sys

cfg = configparser.ConfigParser()
cfg.read(sys.argv[1])
lines = cfg["options"]["install_requires"].splitlines()
for extra in cfg["options.extras_require"].values():
    lines += extra.splitlines()
floors: dict[str, tuple[tuple[int, ...], str]] = {}
for line in lines:
    match = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(?:>=|==)\s*([0-9][^,;\s]*)", line)
    if match and match[1] != "torch":  # torch stays the CPU wheel on disk (the lower bound is the GPU box's 2.11)
        key = tuple(int(part) for part in re.findall(r"\d+", match[2]))
        name = match[1].lower()
        if name not in floors or key > floors[name][0]:
            floors[name] = (key, f"{match[1]}=={match[2]}")
for _, pin in floors.values():
    print(pin)
