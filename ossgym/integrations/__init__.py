"""Adapters that plug ossgym environments into other people's trainers and servers (optional extras).

Each module imports its framework only when used: ``sb3`` (``pip install 'ossgym[sb3]'``), ``trl``
(``ossgym[train]``), ``openenv`` (``ossgym[openenv]``), ``verifiers`` (``ossgym[verifiers]``).
"""
