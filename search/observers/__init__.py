"""What watches a sweep without steering it: `tracking` mirrors every trial to W&B (offline-first),
`progress` draws the live progress bar. Both are fed by backend events and never end a sweep."""
