"""Lines of user code for one model on the same features (issue 16): the README's "Bringing your own model"
example (`trainables.from_model`) against the plain-function route written by hand (own_by_hand.py).

Both are run, so the count is of working code: each trains 3 epochs in process, resumes from a checkpoint,
tests once and exports a model that predicts raw inputs. Lines are counted without blanks, comments and
docstrings; statements wrapped over several lines count as the lines they take.

    .venv/bin/python benchmarks/own_lines.py
"""

import ast
import io
import re
import sys
import tokenize
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def readme_module() -> str:
    block = re.search(r"<!-- own-model -->\s*```sh\n(.+?)\n```", (HERE.parent / "README.md").read_text(), re.S)
    return re.search(r"<<'EOF'\n(.+?)\nEOF", block.group(1), re.S).group(1) + "\n"


def code_lines(source: str) -> int:
    """Lines holding code: not blank, not only a comment, not a docstring."""
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            docstrings.update(range(body[0].lineno, body[0].end_lineno + 1))
    lines = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in (
            tokenize.COMMENT,
            tokenize.NL,
            tokenize.NEWLINE,
            tokenize.INDENT,
            tokenize.DEDENT,
            tokenize.ENDMARKER,
        ):
            lines.update(range(tok.start[0], tok.end[0] + 1))
    return len(lines - docstrings)


def exercise(trainable) -> dict:
    from trainables import MemoryReporter

    config = {**trainable.defaults, "epochs": 3, "lr": 0.01}
    first = MemoryReporter(seed=0)
    trainable.train({**config, "epochs": 2}, first)
    resumed = MemoryReporter(seed=0, checkpoint=first.checkpoints[-1])
    trainable.train(config, resumed)
    best = (resumed.checkpoints or first.checkpoints)[-1]
    tested = trainable.evaluate(config, best["model"], "test")
    served, example = trainable.export(config, best["model"])
    out = served(torch.as_tensor(example))
    return {
        "epochs after resume": [r["epoch"] for r in resumed.results],
        "test_accuracy": round(tested["test_accuracy"], 3),
        "served": tuple(out.shape),
        "check hook": trainable.setup is not None,
    }


def main() -> None:
    namespace: dict = {}
    factory_source = readme_module()
    exec(compile(factory_source, "README own-model", "exec"), namespace)
    by_hand_source = (HERE / "own_by_hand.py").read_text()
    import own_by_hand

    rows = [
        ("README example (from_model)", code_lines(factory_source), exercise(namespace["trainable"])),
        ("plain train() by hand", code_lines(by_hand_source), exercise(own_by_hand.trainable)),
    ]
    for name, n, seen in rows:
        print(f"{name:30s} {n:4d} lines  {seen}")
    print(f"by hand / factory: {rows[1][1] / rows[0][1]:.1f}x the lines")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
