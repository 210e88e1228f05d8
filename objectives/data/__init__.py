"""The data side of a trial: where models and data come from, what is checked before a sweep, how rows
become text.

`sources.py` finds and loads models and data (local files and folders, `datasets` save_to_disk folders,
hub ids, the bundled assets); `files.py` is the one reader of a user's data file row by row (the data
checks, `ftsweep select`'s pool); `checks.py` validates the data before a launch; `conversations.py`
detects and renders chat and instruction formats; `augmentation.py` adds EDA and back-translated rows to
a trial's training split; `fairness.py` holds group metrics and balancing by group.
"""
