"""Reading a study back, whichever backend wrote it: `tables` (status, best trials, one trial's
details), `report` (Optuna's plots, importances), `export` (a trial's reproducible files) and
`dashboard` (optuna-dashboard on the storage)."""
