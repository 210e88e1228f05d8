"""How a trial is scored beyond its loss: `metrics.py` (classification and generation metrics,
perplexity, uncertainty), `answers.py` (causal_lm answer metrics), `scores.py` (per-example scores for
paired comparisons between trials) and `harness.py` (lm-evaluation-harness tasks on the live model).
"""
