"""Print `name==lower` for every `name>=lower` in setup.cfg's install_requires and extras (for `make test-lowest`)."""
import configparser
import re
import sys

cfg = configparser.ConfigParser()
cfg.read(sys.argv[1])
lines = cfg["options"]["install_requires"].splitlines()
for extra in cfg["options.extras_require"].values():
    lines += extra.splitlines()
for line in lines:
    match = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(?:>=|==)\s*([0-9][^,;\s]*)", line)
    if match and match[1] != "torch":  # torch stays the CPU wheel on disk (the lower bound is the GPU box's 2.11)
        print(f"{match[1]}=={match[2]}")
