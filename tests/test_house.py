"""The house rules a newcomer relies on, checked on the source: each package reaches another only through its
public names, and functions stay short enough to read whole."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("search", "trainables", "studies", "tracking")
LONGEST = 80  # lines of a function, decorators and docstring included
EXPLAINED_FROM = 61  # from this many lines on, a function says why it reads better whole: a "# whole:" comment
LONGEST_FILE = 460


def _modules():
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            yield package, path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _imported(node: ast.AST, path: Path) -> list[str]:
    """The dotted names an import statement reaches (`from a import b` reaches `a.b`, which may be a module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [f"{node.module}.{alias.name}" for alias in node.names]
    return []


def _private_reach(name: str, own: str) -> bool:
    """Whether `name` goes into a private module of a package other than `own`."""
    parts = name.split(".")
    if parts[0] not in PACKAGES or parts[0] == own:
        return False
    return any(part.startswith("_") and not part.startswith("__") for part in parts[1:-1]) or (
        len(parts) > 1 and parts[-1].startswith("_") and (REPO / Path(*parts)).with_suffix(".py").exists()
    )


def test_no_package_imports_another_packages_private_module():
    found = [
        f"{path.relative_to(REPO)}:{node.lineno}: {name}"
        for package, path, tree in _modules()
        for node in ast.walk(tree)
        for name in _imported(node, path)
        if _private_reach(name, package)
    ]
    assert not found, "import the other package's public names instead:\n" + "\n".join(found)


def test_the_rule_sees_a_private_import():
    """The check above would catch the imports it forbids (and lets a package's own private modules be)."""
    assert _private_reach("studies._spec.StudySpec", "search")
    assert _private_reach("trainables._reporter", "search")  # `from trainables import _reporter`
    assert not _private_reach("studies._spec.StudySpec", "studies")
    assert not _private_reach("studies.words.better", "trainables")
    assert not _private_reach("tracking.tags", "search")


def _functions():
    for _, path, tree in _modules():
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = node.decorator_list[0].lineno if node.decorator_list else node.lineno
                yield path, node, lines[start - 1 : node.end_lineno], lines[max(0, start - 4) : start - 1]


@pytest.mark.parametrize("limit", [LONGEST])
def test_no_function_is_longer_than_80_lines(limit):
    long = [
        f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {len(body)} lines"
        for path, node, body, _ in _functions()
        if len(body) > limit
    ]
    assert not long, f"split these into named parts of at most {limit} lines:\n" + "\n".join(long)


def test_a_function_over_60_lines_says_why_it_reads_better_whole():
    unexplained = [
        f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {len(body)} lines"
        for path, node, body, above in _functions()
        if len(body) >= EXPLAINED_FROM and not any("# whole:" in line for line in above + body[:8])
    ]
    assert not unexplained, "split these, or say why they read better whole (`# whole: ...`):\n" + "\n".join(
        unexplained
    )


def test_no_module_is_longer_than_about_450_lines():
    long = [
        f"{path.relative_to(REPO)}: {n} lines"
        for _, path, _ in _modules()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > LONGEST_FILE
    ]
    assert not long, "split these by concept:\n" + "\n".join(long)


def _options():
    from search.cli import build_parser

    (commands,) = [a for a in build_parser()._actions if getattr(a, "choices", None)]
    for name, sub in commands.choices.items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                yield name, action


def test_every_flag_has_help_naming_the_default_the_code_applies():
    """`--help` says what each flag does, and where a flag has a default value, the help names that value."""
    wrong = [
        f"hpsearch {name} {action.option_strings[0]}: default {action.default!r}, help {action.help!r}"
        for name, action in _options()
        if not action.help or (action.default not in (None, False) and f"default {action.default}" not in action.help)
    ]
    assert not wrong, "\n".join(wrong)


def test_no_file_holds_a_merge_conflicts_markers():
    import subprocess

    found = subprocess.run(
        ["git", "grep", "-n", "-E", "^(<<<<<<<|>>>>>>>) "], cwd=REPO, capture_output=True, text=True
    ).stdout
    assert not found, found
