"""Exports for training stacks: ``python -m fms_dgt.export OUTPUT_DIR --format hf|sharegpt|openai --out DIR``.

- ``openai``: the OpenAI fine-tuning chat format, ``{"messages": [{"role", "content"}, ...]}`` a line;
- ``sharegpt``: ``{"id", "conversations": [{"from": "system"|"human"|"gpt", "value"}, ...]}`` a line;
- ``hf``: a Hugging Face ``datasets`` dataset as parquet (``data/<split>-00000-of-00001.parquet``)
  with a dataset card (``README.md``: its YAML header names the splits, so ``load_dataset(DIR)``
  reads it), and ``--push-to-hub REPO`` to upload the folder. Needs the ``[hf]`` extra.

The chat of every format is the task's formatter output, i.e. exactly the ``messages`` of
``formatted_output.jsonl`` (with the system prompt when the task shows it). ``--validation-fraction``
splits off a seeded random share of the conversations as a validation split in every format.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fms_dgt import __version__
from fms_dgt.conversation import Conversation
from fms_dgt.formatters import FORMATTERS
from fms_dgt.output import FINAL, SUMMARY, TASK_SNAPSHOT
from fms_dgt.report import REPORT_JSON, build_report

SHAREGPT_ROLES = {"system": "system", "user": "human", "assistant": "gpt"}
HF_HINT = "pip install 'fms_dgt[hf]'"


class ExportError(Exception):
    """Bad input (exit 2) or a failure on the way out (exit 1); the message is one line."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def load(folder: Path) -> tuple[list[Conversation], list[dict[str, Any]], dict[str, Any]]:
    """The folder's records, their training examples (the task's formatter) and its task snapshot."""
    if not folder.is_dir():
        raise ExportError(f"{folder}: no such folder")
    final = folder / FINAL
    if not final.is_file():
        raise ExportError(f"{folder}: no {FINAL} here")
    task = _read_json(folder / TASK_SNAPSHOT) or {}
    formatter = FORMATTERS.get((task.get("formatter") or {}).get("type", "conversation/messages"))
    records, examples = [], []
    for number, line in enumerate(final.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            conv = Conversation.model_validate_json(line)
        except ValidationError as exc:
            raise ExportError(f"{final}:{number}: not a conversation record ({exc.errors()[0]['msg']})") from None
        records.append(conv)
        examples.append(formatter(conv))
    if not records:
        raise ExportError(f"{final}: no conversations to export")
    return records, examples, task


def split(count: int, fraction: float, seed: int) -> dict[str, list[int]]:
    """Indices of the train and (if ``fraction`` > 0) validation split; each keeps the file's order."""
    if fraction <= 0:
        return {"train": list(range(count))}
    size = max(1, round(count * fraction)) if count > 1 else 0
    chosen = set(random.Random(seed).sample(range(count), size))
    return {
        "train": [i for i in range(count) if i not in chosen],
        "validation": sorted(chosen),
    }


def openai_line(example: dict[str, Any]) -> dict[str, Any]:
    # The fine-tuning API accepts only its own keys on a line, so no id.
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in example["messages"]]}


def sharegpt_line(example: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": example["conversation_id"],
        "conversations": [{"from": SHAREGPT_ROLES[m["role"]], "value": m["content"]} for m in example["messages"]],
    }


def hf_row(conv: Conversation, example: dict[str, Any]) -> dict[str, Any]:
    persona = conv.persona
    judge = conv.last("judge")
    return {
        "conversation_id": conv.conversation_id,
        "messages": [{"role": m["role"], "content": m["content"]} for m in example["messages"]],
        "num_turns": conv.num_turns,
        "target_turns": conv.target_turns,
        "stop_reason": conv.stop_reason,
        "persona": persona.persona.role if persona else None,
        "scenario": conv.scenario,
        # Attributes and scores differ in type from task to task: JSON text keeps one column type.
        "attributes": json.dumps(conv.attributes, ensure_ascii=False),
        "judge_scores": json.dumps({k: v.score for k, v in judge.scores.items()}) if judge else None,
    }


def _write_jsonl(path: Path, lines: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as out:
        for line in lines:
            out.write(json.dumps(line, ensure_ascii=False) + "\n")


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def dataset_card(
    folder: Path, task: dict[str, Any], records: list[Conversation], splits: dict[str, list[int]], license_id: str
) -> str:
    """README.md of the hf export: YAML header (licence, splits) and what a reader needs to trust it."""
    summary = _read_json(folder / SUMMARY) or {}
    report = _read_json(folder / REPORT_JSON) or build_report(folder)
    name = task.get("task_name") or folder.name
    header = [
        "---",
        f"license: {license_id}",
        "task_categories:", "- text-generation",
        "tags:", "- synthetic", "- multi-turn", "- conversational", "- fms_dgt",
        "size_categories:", f"- {_size_category(len(records))}",
        "configs:", "- config_name: default", "  data_files:",
        *[f"  - split: {s}\n    path: data/{s}-*.parquet" for s in splits],
        "---",
    ]
    engines = (summary.get("engines") or {}).values()
    models = sorted({f"{info.get('model')} ({info.get('type')} engine)" for info in engines}
                    or {str(s.metadata["model"]) for c in records for s in c.steps if s.metadata.get("model")})
    stages = [s.get("name") for key in ("initialization_stages", "iteration_stages", "termination_stages")
              for s in task.get(key, [])]
    turns = Counter(c.num_turns for c in records)
    stops = Counter(c.stop_reason or "unknown" for c in records)
    turns_report = report.get("turns", {})
    tokens = report.get("tokens_per_conversation") or {}
    personas = report.get("personas", {})
    drops = report.get("drops", {})
    figures = [
        ("requested length met exactly",
         f"{turns_report['exact_match']}/{turns_report['with_requested_length']}"
         if turns_report.get("with_requested_length") else "no requested lengths"),
        ("personas used / in the persona file", f"{personas.get('distinct_used')} / {personas.get('in_file')}"),
        ("tokens per conversation (mean, median, p90)",
         f"{tokens.get('mean')}, {tokens.get('median')}, {tokens.get('p90')}" if tokens else "n/a"),
    ]
    for role, div in (report.get("diversity") or {}).items():
        figures.append((f"{role} messages: distinct-1, distinct-2, exact duplicates",
                        f"{div.get('distinct_1')}, {div.get('distinct_2')}, {div.get('exact_duplicate_share')}"))
    figures.append(("dropped in the last run, by reason", ", ".join(f"{k} {v}" for k, v in drops.get("dropped", {}).items()) or "none"))
    figures.append(("rescued in the last run, by reason", ", ".join(f"{k} {v}" for k, v in drops.get("rescued", {}).items()) or "none"))
    body = [
        f"# {name}",
        "",
        (task.get("task_description") or "").strip() or "Synthetic multi-turn conversations.",
        "",
        "## How it was made",
        "",
        f"Generated with fms_dgt {summary.get('fms_dgt_version', __version__)} (export by fms_dgt {__version__}):"
        " a simulated user with a sampled persona and scenario talks to an assistant; a flow controller"
        " picks each next move from weighted patterns. Everything here is synthetic, written by the models below.",
        "",
        f"- models: {', '.join(models) or 'unknown'}",
        f"- stages, in order: {', '.join(str(s) for s in stages) or 'unknown'}",
        f"- exchanges per conversation allowed: {task.get('min_turns', '?')} to {task.get('max_turns', '?')}",
        f"- seed of the last run: {summary.get('seed', 'unknown')}; task file sha256 {summary.get('task_sha256', 'unknown')}",
        "",
        "## Contents",
        "",
        "| split | conversations |", "|---|---|",
        *[f"| {s} | {len(idx)} |" for s, idx in splits.items()],
        "",
        "Columns: `messages` (the chat in OpenAI format, the system prompt first when the task shows it),"
        " `conversation_id`, `num_turns`, `target_turns`, `stop_reason`, `persona` (its role), `scenario`,"
        " `attributes` and `judge_scores` (JSON text).",
        "",
        "| exchanges | conversations |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in sorted(turns.items())],
        "",
        "| stop reason | conversations |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in stops.most_common()],
        "",
        "## Key figures (from the analysis report)",
        "",
        "| figure | value |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in figures],
        "",
        "## License",
        "",
        f"`{license_id}`. Synthetic text is subject to the terms of the models that wrote it; set the"
        " licence with `--license` when exporting.",
        "",
    ]
    return "\n".join(header + body)


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise ExportError(f"--format hf needs the datasets library: {HF_HINT}") from None
    datasets.disable_progress_bars()  # a bar per split file is noise for a few-second export
    return datasets


def export(
    folder: Path, fmt: str, out: Path, *, validation_fraction: float = 0.0, seed: int = 0, license_id: str = "unknown"
) -> dict[str, int]:
    """Write the export into ``out``; returns the conversations per split."""
    records, examples, task = load(folder)
    splits = split(len(records), validation_fraction, seed)
    datasets = _import_datasets() if fmt == "hf" else None
    try:
        out.mkdir(parents=True, exist_ok=True)
        if fmt in ("openai", "sharegpt"):
            shape = openai_line if fmt == "openai" else sharegpt_line
            for name, idx in splits.items():
                _write_jsonl(out / f"{name}.jsonl", [shape(examples[i]) for i in idx])
        else:
            (out / "data").mkdir(exist_ok=True)
            for name, idx in splits.items():
                rows = [hf_row(records[i], examples[i]) for i in idx]
                datasets.Dataset.from_list(rows).to_parquet(str(out / "data" / f"{name}-00000-of-00001.parquet"))
            (out / "README.md").write_text(dataset_card(folder, task, records, splits, license_id), encoding="utf-8")
    except OSError as exc:
        raise ExportError(f"{out}: cannot write the export: {exc.strerror or exc}", exit_code=1) from None
    return {name: len(idx) for name, idx in splits.items()}


def push_to_hub(out: Path, repo: str, *, private: bool) -> str:
    """Upload the hf export folder to a dataset repository (token from ``HF_TOKEN`` or the login)."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise ExportError(f"--push-to-hub needs huggingface_hub: {HF_HINT}") from None
    api = HfApi()
    try:
        api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
        info = api.upload_folder(
            folder_path=str(out), repo_id=repo, repo_type="dataset",
            commit_message=f"Upload synthetic conversations (fms_dgt {__version__})",
        )
    except Exception as exc:  # noqa: BLE001 - network, auth, offline mode: one line, the export stays on disk
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"push to {repo} failed: {first} (the export is in {out})", exit_code=1) from None
    return str(getattr(info, "commit_url", "") or repo)


def _fraction(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0 <= number < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {number}")
    return number


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.print_usage(sys.stderr)
        self.exit(2, f"error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(
        prog="python -m fms_dgt.export",
        description="Export an output folder for training: Hugging Face datasets (parquet), ShareGPT or OpenAI JSONL.",
    )
    parser.add_argument("folder", type=Path, help="an output folder, e.g. output/public/examples/chit_chat")
    parser.add_argument("--format", required=True, choices=["hf", "sharegpt", "openai"])
    parser.add_argument("--out", type=Path, required=True, help="folder to write the export into")
    parser.add_argument("--validation-fraction", type=_fraction, default=0.0, metavar="F",
                        help="share of conversations put in a validation split (default 0: train only)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation split (default 0)")
    parser.add_argument("--license", default="unknown", help="licence id for the dataset card (hf; default unknown)")
    parser.add_argument("--push-to-hub", metavar="REPO", help="hf: upload the export to this dataset repository")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    args = parser.parse_args(argv)
    if args.push_to_hub and args.format != "hf":
        parser.error("--push-to-hub needs --format hf")
    try:
        counts = export(args.folder, args.format, args.out, validation_fraction=args.validation_fraction,
                        seed=args.seed, license_id=args.license)
        print(f"wrote {args.format} export to {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        if args.push_to_hub:
            print(f"pushed to {push_to_hub(args.out, args.push_to_hub, private=args.private)}")
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
