"""The docs cannot go stale: every documented command composes against conf/, every config key
named in a table exists, and the README stays a front door."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from omegaconf import OmegaConf

from charrnn.cli import ENTRY_POINTS, prepare_overrides
from charrnn.training.run_folder import register_resolvers
from tests.conftest import CONF, GENERATE_CONF, ROOT, run_script

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SCRIPTS = {"train.py": (CONF, "train"), "generate.py": (GENERATE_CONF, "generate")}
FENCED = re.compile(r"^\s*python (train|generate)\.py\b")
INLINE = re.compile(r"`(python (?:train|generate)\.py\b[^`]*)`")
KEY = re.compile(r"`((?:hydra\.)?[a-z_]+(?:\.[a-z_]+)+)(?:=[^`]*)?`")


def documented_commands() -> list[tuple[str, str]]:
    """(file:line, command) for every train.py/generate.py command: in fenced code blocks
    (continuation lines joined, comments dropped) and in inline code."""
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        lines, fenced, i = text.splitlines(), False, 0
        while i < len(lines):
            line = lines[i]
            if line.lstrip().startswith("```"):
                fenced = not fenced
            elif fenced and FENCED.match(line):
                where, command = f"{doc.name}:{i + 1}", line
                while command.rstrip().endswith("\\") and i + 1 < len(lines):
                    i += 1
                    command = command.rstrip()[:-1] + " " + lines[i].strip()
                found.append((where, command))
            i += 1
        for match in INLINE.finditer(text):
            line = text[: match.start()].count("\n") + 1
            found.append((f"{doc.name}:{line}", " ".join(match[1].split())))
    return found


def _one_value(override: str) -> str:
    """A sweep (`a,b`, `choice(...)`, `interval(...)`, `range(...)`) as its first value."""
    parsed = OverridesParser.create().parse_override(override)
    if not parsed.is_sweep_override():
        return override
    key = override.split("=", 1)[0]
    value = parsed.value()
    if isinstance(value, IntervalSweep):
        return f"{key}={value.start}"
    if isinstance(value, RangeSweep):
        return f"{key}={value.start}"
    if isinstance(value, ChoiceSweep):
        return f"{key}={next(iter(parsed.sweep_string_iterator()))}"
    return f"{key}={next(iter(parsed.sweep_string_iterator()))}"


def compose_command(command: str):
    """The config a documented command composes to (sweeps: their first job)."""
    tokens = shlex.split(re.sub(r"<[^>]*>", "x", command), comments=True)
    assert tokens[:1] == ["python"] and tokens[1] in SCRIPTS, command
    config_dir, name = SCRIPTS[tokens[1]]
    args = [t for t in tokens[2:] if not t.startswith(("-", "[")) and t != "..."]
    overrides = [_one_value(o) for o in prepare_overrides(args, **ENTRY_POINTS[tokens[1]])]
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        cfg = compose(name, overrides=overrides, return_hydra_config=True)
    for section in ("data", "model", "module", "trainer", "dynamic"):
        if section in cfg:  # interpolations resolve (a study's nested ones too)
            OmegaConf.to_container(cfg[section], resolve=True)
    return cfg


COMMANDS = documented_commands()


def test_the_docs_document_commands():
    scripts = {c.split()[1] for _, c in COMMANDS}
    assert scripts == {"train.py", "generate.py"} and len(COMMANDS) > 40


@pytest.mark.parametrize(("where", "command"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_documented_command_composes_against_conf(where, command):
    try:
        compose_command(command)
    except Exception as err:  # the file and line, the command and Hydra's reason
        pytest.fail(f"{where}: `{command}` does not compose against conf/: {err}")


def _configs() -> list[dict]:
    """train.yaml with a search, each launcher and every tracker, and generate.yaml, as plain
    nested dicts (interpolations left as written)."""
    return [_compose(config_dir, name, extra, hydra=True)
            for config_dir, name, extra in ((CONF, "train", ["hparams_search=lstm",
                                                             "logger=[csv,mlflow,wandb]"]),
                                            (CONF, "train", ["launcher=slurm"]),
                                            (CONF, "train", ["launcher=parallel"]),
                                            (GENERATE_CONF, "generate", []))]


def _compose(config_dir, name: str, overrides: list[str], hydra: bool = False) -> dict:
    """One config composed as a plain nested dict, interpolations left as written; `hydra`:
    with Hydra's own `hydra.*` keys."""
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose(name, overrides=overrides, return_hydra_config=hydra)
    return OmegaConf.to_container(cfg, resolve=False)


def _key_exists(key: str, configs: list[dict]) -> bool:
    for node in configs:
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            return True
    return False


def test_config_keys_named_in_tables_exist():
    """Backticked keys in the docs' tables (`module.lr`, `hydra.sweeper.n_trials`), and the
    first column of every `| key |` table, name keys that exist in conf/."""
    configs = _configs()
    roots = {k for cfg in configs for k in cfg} | {"hydra"}
    stale = []
    for doc in DOCS:
        key_table = False
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            if not line.startswith("|"):
                key_table = False
                continue
            cells = [c.strip() for c in line.strip("|").split("|")]
            if cells[0] == "key":
                key_table = True
                continue
            names = {m[1] for m in KEY.finditer(line) if m[1].split(".")[0] in roots}
            if key_table and re.fullmatch(r"`[a-z_.]+`", cells[0]):
                names.add(cells[0].strip("`"))
            stale += [f"{doc.name}:{number}: {name}" for name in sorted(names)
                      if not _key_exists(name, configs)]
    assert not stale, "keys in the docs that conf/ does not have:\n" + "\n".join(stale)


def test_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode()) <= 12_000
    for heading in ("## Set up", "## Train", "## Watch", "## Generate", "## Test",
                    "## Reference"):
        assert heading in readme
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert links and all((ROOT / link).is_file() for link in links)


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_links_between_pages_resolve(doc):
    for target in re.findall(r"\]\(([^)#:]+\.(?:md|png))", doc.read_text(encoding="utf-8")):
        assert (doc.parent / target).is_file(), f"{doc.name}: broken link {target}"


def _leaf_keys(node: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        name = f"{prefix}{key}"
        keys += _leaf_keys(value, f"{name}.") if isinstance(value, dict) and value else [name]
    return keys


@pytest.mark.parametrize("name", ["train", "generate"])
def test_configuration_page_documents_every_key(name):
    """docs/configuration.md names every key of the default train.py and generate.py configs
    (Hydra's own `hydra.*` keys aside), every tracker's among them: a key added to conf/
    without its line there fails."""
    every_tracker = ["logger=[tensorboard,csv,mlflow,wandb]"] if name == "train" else []
    cfg = _compose(CONF if name == "train" else GENERATE_CONF, name, every_tracker)
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    missing = [key for key in _leaf_keys(cfg) if f"`{key}`" not in page]
    assert not missing, "docs/configuration.md does not document: " + ", ".join(missing)


def test_documented_benchmark_groups_and_checks_exist():
    """`python -m charrnn.bench --only X` and `python -m charrnn.gpu_checks --only X`, and the
    groups listed as `--only a|b|c`, name groups and checks that exist."""
    from charrnn.bench import GROUPS
    from charrnn.gpu_checks import NAMES

    known = {"bench": set(GROUPS), "gpu_checks": set(NAMES)}
    named = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for tool, names in re.findall(r"charrnn\.(bench|gpu_checks)((?:\s+--only\s+[a-z0-9_|]+)+)",
                                      text):
            named += [(doc.name, tool, n) for n in re.findall(r"[a-z0-9_]+", names) if n != "only"]
        for group in re.findall(r"`--only ([a-z0-9_]+(?:\|[a-z0-9_]+)+)`", text):
            named += [(doc.name, "bench", n) for n in group.split("|")]
    assert any(tool == "gpu_checks" for _, tool, _ in named)
    assert [(d, t, n) for d, t, n in named if n not in known[t]] == []


@pytest.mark.slow
@pytest.mark.parametrize("script", ["train.py", "generate.py"])
def test_help_names_the_docs_and_its_examples_compose(script):
    result = run_script(script, "--help", cwd=Path.cwd())
    assert result.returncode == 0 and "docs/configuration.md" in result.stdout
    examples = [re.sub(r"\s+\(.*\)$", "", line.strip()) for line in result.stdout.splitlines()
                if line.strip().startswith(f"python {script} ") and "[" not in line]
    assert len(examples) >= 3, result.stdout
    for command in examples:
        compose_command(command)


PATH = r"(?<![\w.>/-])((?:[a-z_][\w-]*/)+(?:[a-z_][\w-]*\.py)?|[a-z_][\w-]*\.py)"  # a/b/, a/b.py


def test_layout_names_paths_that_exist():
    """Every file and folder README's Layout block names exists (a name after the first on a
    line may be inside the line's folder: `registry.py` in charrnn/models/)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"### Layout\n.*?```\n(.*?)```", readme, re.S)[1]
    missing, named = [], 0
    for line in block.splitlines():
        paths = re.findall(PATH, line)
        folder = ROOT / paths[0] if paths and paths[0].endswith("/") else ROOT
        named += len(paths)
        missing += [p for p in paths if not (ROOT / p).exists() and not (folder / p).exists()]
    assert named >= 15 and missing == []


def test_modules_named_in_the_docs_exist():
    """`python -m charrnn.x` and every dotted `charrnn.x.y` in the docs and conf/'s comments
    name a module, or an object in one, that exists (`window.charrnn.*` is the exported page's
    JavaScript, not a module)."""
    import importlib

    texts = [*DOCS, *sorted((ROOT / "conf").rglob("*.yaml"))]
    stale, seen = [], set()
    for doc in texts:
        text = doc.read_text(encoding="utf-8")
        for name in re.findall(r"(?<!window\.)\bcharrnn(?:\.[A-Za-z_]\w*)+", text):
            seen.add(name)
            parts = name.split(".")
            for i in range(len(parts), 0, -1):  # the longest prefix that is a module
                try:
                    obj = importlib.import_module(".".join(parts[:i]))
                    break
                except ModuleNotFoundError:
                    continue
            for attr in parts[i:]:
                obj = getattr(obj, attr, None)
            if obj is None:
                stale.append(f"{doc.relative_to(ROOT)}: {name}")
    assert len(seen) > 10 and stale == []


def test_source_paths_named_in_the_docs_exist():
    """`charrnn/...` and `tests/...` paths in the docs name files and folders that exist."""
    named = {p for doc in DOCS
             for p in re.findall(r"\b(?:charrnn|tests)/[\w/]*\w(?:\.py)?/?",
                                 doc.read_text(encoding="utf-8"))}
    assert len(named) > 5
    assert sorted(p for p in named if not (ROOT / p).exists()) == []
