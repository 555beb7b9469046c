"""mylab: a user's own model, prior, data source and logger for vaelab, found without forking it."""
