"""Files and run artifacts, in one place.

- `storage`: local paths and `s3://` URIs behind one set of functions (a backend changes here only);
- `files`: the atomic-write helpers every writer uses;
- `run_dir`: a run directory's layout (config, train log, metrics, predictions, geometry, plots);
- `model_dir`: model directories (save, load, verify, initialise).
"""
