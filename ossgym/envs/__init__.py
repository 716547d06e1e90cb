"""Environments: the 2048 game (game2048/) and code-as-action tasks (code/)."""
