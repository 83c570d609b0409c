#!/usr/bin/env python3
"""A batch-manager task command: the chunk's item IDs arrive on stdin, one per line; each failed
item is one JSON line on stdout; a non-zero exit fails (and retries) the whole attempt."""
import json, os, sys, uuid

print(f"chunk {os.environ['BATCH_MANAGER_CHUNK']} of {os.environ['BATCH_MANAGER_BATCH_ID']}", file=sys.stderr)
for line in sys.stdin:
    item_id = line.rstrip("\n")
    try:
        uuid.UUID(item_id)  # your processing goes here
    except ValueError:
        print(json.dumps({"item_id": item_id, "error": "item id is not a UUID"}), flush=True)
