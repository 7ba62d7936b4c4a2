"""The README's example runs as written."""

import re
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def test_readme_example_runs(capsys):
    text = README.read_text()
    blocks = re.findall(r"<!-- example -->\s*```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README lost its example block"
    exec(compile(blocks[0], "README example", "exec"), {})
    printed = capsys.readouterr().out
    assert "ce_loss" in printed and "order_loss" in printed and "flow_loss" in printed


def test_readme_file_tree_lists_existing_paths():
    text = README.read_text()
    tree = re.search(r"<!-- tree -->\s*```\n(.*?)```", text, flags=re.S).group(1)
    root = README.parent
    folder = []
    for line in tree.splitlines():
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip())) // 2
        folder = folder[:depth]
        entry = re.split(r"\s{2,}", line.strip())[0]  # names, then two or more spaces, then notes
        for part in entry.split():
            path = root.joinpath(*folder, part.rstrip("/"))
            assert path.exists(), (
                f"README tree names {path.relative_to(root)}, which does not exist"
            )
        if entry.endswith("/"):
            folder.append(entry.rstrip("/"))
