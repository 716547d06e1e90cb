"""examples/ on the import path, so the custom task of docs/custom_tasks.md (examples/custom_sorting) is importable
by its tests, and by the sandbox templates and Ray actors they start (they inherit this process's path)."""

import sys
from pathlib import Path

EXAMPLES = str(Path(__file__).resolve().parent.parent / "examples")
if EXAMPLES not in sys.path:
    sys.path.insert(0, EXAMPLES)
