"""The tasks behind `vaelab train|eval|sample|compare`: they return values and raise VaelabError."""
