"""The study store: the single source of truth every command reads, whichever backend wrote it.

`storage` opens storage URLs, `record` owns every key a trial carries and writes them, `retries`
decides what happens to a failed trial, `recovery` finds trials whose process died, and `queue`
caps a sweep at exactly n_trials across any number of workers.
"""
