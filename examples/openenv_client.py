"""Score a completion through an OpenEnv server of GptOss2048-v0 with OpenEnv's own client.

    pip install 'ossgym[openenv]'
    python -m ossgym.integrations.openenv GptOss2048-v0 --port 8000 &      # the server (localhost)
    python examples/openenv_client.py --url http://127.0.0.1:8000

Without ``--url`` the example starts a server in this process on a free localhost port.
"""

from __future__ import annotations

import argparse
import socket
import threading
import time

from openenv.core.generic_client import GenericEnvClient

COMPLETION = """<|channel|>final<|message|>```python
def strategy(board):
    return "S" if any(board[r][c] == board[r + 1][c] for r in range(len(board) - 1) for c in range(len(board))) else "A"
```<|return|>"""


def _local_server(env_id: str, **env_kwargs):
    import uvicorn

    from ossgym.integrations.openenv import make_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(make_app(env_id, **env_kwargs), host="127.0.0.1", port=port,
                                           log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=None, help="a running server; none: start one here")
    ap.add_argument("--eval-seed", type=int, default=0)
    ap.add_argument("--num-games", type=int, default=8, help="games per evaluation (local server only)")
    args = ap.parse_args(argv)
    server = None
    url = args.url
    if url is None:
        server, url = _local_server("GptOss2048-v0", num_games=args.num_games)
    try:
        with GenericEnvClient(base_url=url).sync() as env:
            first = env.reset(eval_seed=args.eval_seed)
            print(first.observation["prompt"][:200], "...")
            result = env.step({"completion": COMPLETION})
            info = result.observation["info"]
            print(f"reward {result.reward:.3f} ({info['outcome']}); components {info['reward_components']}")
            print(info["feedback"])
    finally:
        if server is not None:
            server.should_exit = True
    return {"reward": result.reward, "info": info}


if __name__ == "__main__":
    main()
