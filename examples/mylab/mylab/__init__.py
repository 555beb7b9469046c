"""mylab: a user's own prior, data source and logger for vaelab, found without forking it."""
