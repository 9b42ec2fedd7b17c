"""The container's HEALTHCHECK: healthy when the running emulator answers `select 1` over /sql as the
owner, which takes the HTTP server, the proxy's pool and Postgres. Exit 0 healthy, 1 not."""

import json
import subprocess
import sys
import urllib.request
from urllib.parse import urlsplit, urlunsplit


def main() -> int:
    status = subprocess.run(["neon-local", "status", "--json"], capture_output=True, text=True)
    state = json.loads(status.stdout or "{}")
    if not state.get("running"):
        print("neon-local is not running", file=sys.stderr)
        return 1
    owner = urlsplit(state["urls"]["owner"])
    request = urllib.request.Request(
        state["urls"]["sql"], data=json.dumps({"query": "select 1 as ok", "params": []}).encode(),
        headers={"Content-Type": "application/json",
                 "Neon-Connection-String": urlunsplit(owner._replace(query=""))})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            rows = json.load(response)["rows"]
    except OSError as error:
        print(f"/sql did not answer: {error}", file=sys.stderr)
        return 1
    return 0 if rows == [{"ok": 1}] else 1


if __name__ == "__main__":
    sys.exit(main())
