"""The README's example runs as written."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"


def test_readme_example_runs(capsys):
    text = README.read_text()
    blocks = re.findall(r"<!-- example -->\s*```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README lost its example block"
    exec(compile(blocks[0], "README example", "exec"), {})
    printed = capsys.readouterr().out
    assert "ce_loss" in printed and "order_loss" in printed and "flow_loss" in printed


def _tree_paths() -> set[Path]:
    """Every path the README's file tree names, relative to the repository."""
    text = README.read_text()
    tree = re.search(r"<!-- tree -->\s*```\n(.*?)```", text, flags=re.S).group(1)
    paths, folder = set(), []
    for line in tree.splitlines():
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip())) // 2
        folder = folder[:depth]
        entry = re.split(r"\s{2,}", line.strip())[0]  # names, then two or more spaces, then notes
        for part in entry.split():
            path = Path(*folder, part.rstrip("/"))
            paths.update({path, *path.parents[:-1]})  # ".ci/run" names .ci as well
        if entry.endswith("/"):
            folder.append(entry.rstrip("/"))
    return paths


def test_readme_file_tree_lists_existing_paths():
    for path in _tree_paths():
        assert (ROOT / path).exists(), f"README tree names {path}, which does not exist"


def test_readme_file_tree_names_every_module_and_top_level_entry():
    listed = _tree_paths()
    package = ROOT / "timematters"
    modules = {p.relative_to(ROOT) for p in package.rglob("*.py") if p.name != "__init__.py"}
    folders = {p.parent for p in modules if p.parent != Path("timematters")}
    top = {
        Path(line.split("/")[0])
        for line in subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.splitlines()
        if not line.startswith(".") or line.startswith(".ci/")
    } - {Path("README.md")}
    missing = sorted(map(str, (modules | folders | top) - listed))
    assert not missing, f"the README's file tree does not name: {missing}"
