"""The subprocess alternative: a python3 child that answers JSON lines.

Each request is {"m": method, "a": [args]}; bytes travel as base64 under
"b". Each answer is {"r": result} or {"b": base64 result}. It calls the
same plugin functions the other harnesses call.
"""

import base64
import importlib
import json
import sys

sys.path.insert(0, sys.argv[1])
plugin = importlib.import_module(sys.argv[2])
read, write, flush = sys.stdin.readline, sys.stdout.write, sys.stdout.flush

while True:
    line = read()
    if not line:
        break
    req = json.loads(line)
    fn = getattr(plugin, req["m"])
    if "b" in req:
        out = {"b": base64.b64encode(fn(base64.b64decode(req["b"]))).decode()}
    else:
        out = {"r": fn(*req.get("a", []))}
    write(json.dumps(out) + "\n")
    flush()
