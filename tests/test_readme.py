"""The README's promises: its Python example runs, and .ci/run runs its test command."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_python_quickstart_runs():
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(blocks) >= 2
    namespace = {}  # later blocks continue the first one, as a reader would
    for code in blocks:
        exec(compile(code, "README.md", "exec"), namespace)


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    test_cmd = next(c for c in commands if "pytest" in c)
    assert test_cmd in (ROOT / ".ci" / "run").read_text().splitlines()


def test_scale_out_doc_example_runs():
    """docs/scale-out.md's Python example, on the 8 simulated devices (FSDP over all 8)."""
    (code,) = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "scale-out.md").read_text(), re.S)
    namespace = {}
    exec(compile(code, "docs/scale-out.md", "exec"), namespace)
    assert dict(namespace["mesh"].shape)["fsdp"] == 8
    assert namespace["out"].tokens.shape == (2, 8)
