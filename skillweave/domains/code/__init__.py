"""The code domain: function-writing tasks with unit tests (tasks.jsonl, read by tasks.py, written by build_tasks.py)."""
