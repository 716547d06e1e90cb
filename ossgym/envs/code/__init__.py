"""Code-as-action tasks: prompt -> completion -> sandboxed worker answering calls -> caller-verified reward.

``base`` holds the contract every task shares (``TaskConfig``, ``CodeTask``, ``CodeEnv``, ``score_batch``);
each task is one folder (``strategy2048/``, ``matmul/``) with its env, its caller-side judge (the driver
that holds every secret and clock), its worker-side handler and its references. docs/custom_tasks.md
shows how to add one.
"""
