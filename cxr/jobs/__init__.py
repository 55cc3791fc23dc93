"""Jobs: each one module that composes the domain (data, models, evaluation) into one thing a user runs; the entry
points (cxr.cli) parse the command line and call one of them."""
