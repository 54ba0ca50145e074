"""Evaluation reports: a JSON file, a Markdown table and a PNG plot of every metric against embedding dimension."""

import json
from pathlib import Path

from .metrics import HEADLINE_METRICS as HEADLINE


def markdown_table(results: dict, task: str) -> str:
    """Rows are Matryoshka dims (largest first); columns the task's headline metrics, in percent."""
    dims = sorted(results, key=int, reverse=True)
    names = [n for n in HEADLINE[task] if n in results[dims[0]]]
    lines = ["| dim | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    for dim in dims:
        lines.append(f"| {dim} | " + " | ".join(f"{results[dim][n]:.2f}" for n in names) + " |")
    return "\n".join(lines)


def plot_metrics(results: dict, task: str, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = sorted(results, key=int)
    names = [n for n in HEADLINE[task] if n in results[dims[0]]]
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name in names:
        axis.plot(dims, [results[d][name] for d in dims], marker="o", label=name)
    axis.set_xscale("log", base=2)
    axis.set_xticks(dims, [str(d) for d in dims])
    axis.set_xlabel("embedding dimension (Matryoshka prefix)")
    axis.set_ylabel("percent")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_report(
    results: dict, task: str, out_dir, dataset_name: str, model_name: str, extra: dict | None = None
) -> dict:
    """Write `<task>-<dataset>.json`, `.md` and `.png` under `out_dir`; returns their paths and the table."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{task}-{dataset_name}"
    record = {
        "task": task,
        "dataset": dataset_name,
        "model": model_name,
        "results": {str(d): m for d, m in sorted(results.items(), key=lambda kv: -int(kv[0]))},
        **(extra or {}),
    }
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(record, indent=2))
    table = markdown_table(results, task)
    md_path = out_dir / f"{stem}.md"
    md_path.write_text(f"### {task}: {dataset_name}\n\nModel: `{model_name}`\n\n{table}\n")
    png_path = plot_metrics(results, task, out_dir / f"{stem}.png", f"{model_name}: {task} on {dataset_name}")
    return {"json": json_path, "markdown": md_path, "plot": png_path, "table": table}
