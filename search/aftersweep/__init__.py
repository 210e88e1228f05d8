"""After the sweep: work on trained models, not on studies.

`train` fits an exported winner and saves its adapter; `trained` reads such a run back; `select`
ranks unlabeled rows by a trained adapter's uncertainty (active learning); `gate` promotes a
candidate only when it beats the champion on the same held-out test set (CI/CD).
"""
