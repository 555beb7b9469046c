"""`VAELAB_CONFIG_PATH`: the config folders of a user's own parts, searched after vaelab's conf/.

A user's package adds options to any config group (conf/prior/, conf/data/, conf/logger/,
...) with its own YAML files, without touching vaelab: `VAELAB_CONFIG_PATH=pkg://mylab.conf`
(an importable package holding the group folders) or a folder, `file:///home/me/conf` or a
plain path; several entries separated by os.pathsep (":" on Linux; the "://" of a scheme
does not separate). Hydra's own search path, extended by a SearchPathPlugin, which Hydra
applies to every composition: `vaelab train`, `eval`, `sample`, sweeps, and the tests'
compose. Appended after vaelab's conf/, so an option of vaelab's own name stays vaelab's.
Hydra takes plugins only from the `hydra_plugins` namespace, hence this package beside
`vaelab`.
"""

import os
import re
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

ENV = "VAELAB_CONFIG_PATH"


def entries(value: str) -> list[str]:
    """The search-path entries of a `VAELAB_CONFIG_PATH` value, as Hydra's `pkg://` and
    `file://` addresses (a plain path made an absolute `file://` one)."""
    found = []
    for entry in re.split(rf"{re.escape(os.pathsep)}(?!//)", value):
        entry = entry.strip()
        if entry:
            found.append(entry if "://" in entry else f"file://{Path(entry).resolve()}")
    return found


class VaelabConfigPath(SearchPathPlugin):
    """Appends the entries of `VAELAB_CONFIG_PATH` to Hydra's config search path."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        for entry in entries(os.environ.get(ENV, "")):
            search_path.append(provider="vaelab-user", path=entry)
