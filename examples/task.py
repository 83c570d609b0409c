#!/usr/bin/env python3
"""A batch-manager task command (`serve --task2-command "python3 examples/task.py"`).

The chunk's item IDs arrive on stdin, one per line; the batch, chunk, attempt and task are in
BATCH_MANAGER_* environment variables. Print one JSON line {"item_id", "error"} on stdout for each
item that failed; every other item succeeds. Exit non-zero to fail the whole attempt (it is retried,
and after the last attempt the items fail with the last line written on stderr).
"""
import json, os, sys

chunk = os.environ["BATCH_MANAGER_CHUNK"]
for line in sys.stdin:                      # the chunk's item IDs, one per line
    item_id = line.rstrip("\n")
    if item_id.endswith("0"):               # your processing goes here
        error = f"rejected by my_task.py in chunk {chunk}"
        print(json.dumps({"item_id": item_id, "error": error}))  # one JSON line per failure
sys.exit(0)                                 # non-zero: the attempt failed, retried
