"""README.md's commands are the ones CI and users run."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = 'pip install -e ".[dev]" && python -m pytest -n auto'
    assert f"\n{command}\n" in readme
    assert re.search(rf"^{re.escape(command)}$", ci, re.MULTILINE)


def test_readme_quick_start_trains_the_default_model():
    readme = (ROOT / "README.md").read_text()
    assert "pip install -e . && python train.py model=conv latent_dim=16" in readme


# `group=option` in a command or a sentence, e.g. `hydra/launcher=joblib`, `model=mlp,conv`,
# `experiment=models/vamp` (an option in a subfolder of the group).
OPTION = re.compile(
    r"(?<![\w.+~/-])([a-z_]+(?:/[a-z_]+)*)=((?:\w+/)*\w+(?:,(?:\w+/)*\w+)*)(?![\w/])"
)  # not followed by a slash: `experiment=models/<variant>` names no option
SHOWN_REFUSED = {("model", "resnet")}  # README's Errors section shows the error it gives


def test_every_config_option_the_docs_and_conf_comments_name_exists(monkeypatch):
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from vaelab.config import config_dir

    # README's section on a user's own parts names the options of examples/mylab
    monkeypatch.setenv("VAELAB_CONFIG_PATH", str(ROOT / "examples" / "mylab" / "mylab" / "conf"))
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()

        def groups(parent: str = ""):
            for name in loader.list_groups(parent):
                group = f"{parent}/{name}" if parent else name
                yield group
                yield from groups(group)

        options = {group: loader.get_group_options(group) for group in groups()}  # with plugins'
    files = [
        ROOT / "README.md",
        *ROOT.glob("experiments/*/README.md"),
        *ROOT.glob("conf/**/*.yaml"),
        *ROOT.glob("examples/*/*/conf/**/*.yaml"),
    ]
    named = {
        (path.relative_to(ROOT).as_posix(), group, option)
        for path in files
        for group, choices in OPTION.findall(path.read_text())
        if group in options
        for option in choices.split(",")
        if (group, option) not in SHOWN_REFUSED
    }
    assert {group for _, group, _ in named} >= {"model", "trainer", "hydra/launcher"}

    def exists(group: str, option: str) -> bool:
        folder, _, leaf = option.rpartition("/")
        return leaf in options.get(f"{group}/{folder}" if folder else group, [])

    missing = sorted(
        (path, f"{group}={option}") for path, group, option in named if not exists(group, option)
    )
    assert missing == []
