"""The 2048 game: the engine (single source of the rules), the classic env, the vector env and rendering."""
