"""Analysis report of an output folder: ``python -m fms_dgt.report output/<task_name>``.

Reads ``final_data.jsonl`` (and ``task.json`` and ``run_summary.json`` beside it) and writes
``report.json``, a readable ``report.md`` and, when matplotlib is installed, ``report.png``:

- each sampled attribute's distribution against the configured weights;
- requested against achieved exchanges (exact-match rate) and the exchanges' distribution;
- flow-controller pattern frequencies against the patterns' weights (openings and forced
  closings apart), and how often the LM allowed each pattern when it was offered (a warning
  when a weighted pattern never was);
- persona coverage; judge score histograms; tokens per conversation; drops by reason, and the
  conversations the quality gate rejected (near-duplicates among them);
- lexical diversity: distinct-1/2 over user and over assistant messages, and the share of
  messages that exactly duplicate another;
- the quality gate: the verifier's pass rate per role and verdict, rejected drafts by reason,
  assistant replies cut by max_tokens (rewritten or trimmed).

The runner writes it at the end of every run.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fms_dgt.chart import draw
from fms_dgt.conversation import Conversation
from fms_dgt.output import FINAL, REPORTS, SUMMARY, TASK_SNAPSHOT
from fms_dgt.stages.flow_controller import FlowControllerOptions
from fms_dgt.stages.persona import PersonaOptions
from fms_dgt.stages.similarity import words
from fms_dgt.task import TaskConfig

logger = logging.getLogger(__name__)

REPORT_JSON, REPORT_MD, REPORT_PNG = REPORTS


def _shares(counts: Counter[Any]) -> dict[str, float]:
    total = sum(counts.values())
    return {str(k): round(v / total, 4) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])} if total else {}


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {
        "count": len(values),
        "mean": round(statistics.fmean(values), 3),
        "stdev": round(statistics.pstdev(values), 3),
        "min": ordered[0],
        "median": statistics.median(ordered),
        "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
        "max": ordered[-1],
    }


def _max_gap(observed: dict[str, float], expected: dict[str, float]) -> float:
    keys = set(observed) | set(expected)
    return round(max((abs(observed.get(k, 0.0) - expected.get(k, 0.0)) for k in keys), default=0.0), 4)


def expected_distributions(task: TaskConfig) -> dict[str, dict[str, Any]]:
    """What the task asks of each sampled attribute: expected shares or numeric settings, as each
    stage's options state them."""
    configured: dict[str, dict[str, Any]] = {}
    shares: dict[str, dict[str, float]] = {}
    for options in [*task.initialization_stages, *task.iteration_stages]:
        for attribute in options.writes():
            if options.numeric():
                settings = options.model_dump(mode="json", exclude={"name", "attribute"})
                configured[attribute] = {"sampler": options.name, "settings": settings}
                continue
            expected = options.shares(shares)
            if expected is not None:
                shares[attribute] = expected
            if expected is not None or options.possible_values() is not None:
                configured[attribute] = {
                    "sampler": options.name,
                    "expected": {k: round(v, 4) for k, v in expected.items()} if expected is not None else None,
                }
    return configured


def _pattern_weights(task: TaskConfig) -> dict[str, float]:
    for options in task.iteration_stages:
        if isinstance(options, FlowControllerOptions):
            return {name: round(share, 4) for name, share in options.weight_shares().items()}
    return {}


def _persona_file_size(task: TaskConfig) -> int | None:
    for options in task.initialization_stages:
        if isinstance(options, PersonaOptions):
            path = Path(options.persona_store.data_path)
            try:
                return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
            except OSError:
                return None
    return None


def _task(folder: Path) -> TaskConfig | None:
    """The task this folder's run read (``task.json``), or None if it is missing or unreadable."""
    data = _read_json(folder / TASK_SNAPSHOT)
    if data is None:
        return None
    try:
        return TaskConfig.model_validate(data)
    except ValidationError as exc:
        logger.warning("%s: not a task this version reads (%d problems); reporting without the task's expectations",
                       folder / TASK_SNAPSHOT, exc.error_count())
        return None


class Diversity:
    """distinct-n = distinct n-grams / all n-grams over the messages; duplicates are exact
    repeats (case and spacing ignored) of an earlier message. Streams: it keeps hashes, not text."""

    def __init__(self) -> None:
        self.messages = 0
        self.totals = {1: 0, 2: 0}
        self.distinct: dict[int, set[int]] = {1: set(), 2: set()}
        self.seen: set[int] = set()
        self.duplicates = 0

    def add(self, text: str) -> None:
        self.messages += 1
        tokens = words(text)
        # Hashes of the words and of adjacent pairs (zip, not slices: this loop is most of the
        # report's time, which the user waits for at the end of every run).
        self.totals[1] += len(tokens)
        self.distinct[1].update(map(hash, tokens))
        self.totals[2] += max(len(tokens) - 1, 0)
        self.distinct[2].update(map(hash, zip(tokens, tokens[1:])))
        normalised = hash(" ".join(text.lower().split()))
        if normalised in self.seen:
            self.duplicates += 1
        self.seen.add(normalised)

    def result(self) -> dict[str, Any]:
        result: dict[str, Any] = {"messages": self.messages}
        for n, total in self.totals.items():
            result[f"distinct_{n}"] = round(len(self.distinct[n]) / total, 4) if total else None
        result["exact_duplicate_share"] = round(self.duplicates / self.messages, 4) if self.messages else None
        return result


def diversity(messages: list[str]) -> dict[str, Any]:
    counter = Diversity()
    for text in messages:
        counter.add(text)
    return counter.result()


@dataclass(frozen=True)
class _Text:
    """A long attribute value (a generated system prompt) stands in the report as its hash and length."""

    digest: int
    length: int


def _conversations(path: Path) -> Iterator[Conversation]:
    """One record at a time: the report's memory does not grow with the number of records."""
    if not path.exists():
        return
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield Conversation.model_validate_json(line)


def build_report(folder: Path) -> dict[str, Any]:
    """Compute the report of one output folder (nothing is written)."""
    task = _task(folder)
    summary = _read_json(folder / SUMMARY) or {}

    configured = expected_distributions(task) if task is not None else {}
    values: dict[str, list[Any]] = defaultdict(list)
    judged: dict[str, Counter[int]] = defaultdict(Counter)
    patterns: Counter[str] = Counter()
    free_patterns: Counter[str] = Counter()  # drawn by weight, not fixed as opening or closing
    offered: Counter[str] = Counter()  # times the LM was asked whether the pattern fits
    allowed: Counter[str] = Counter()  # times it said yes
    personas: Counter[str] = Counter()
    turns: Counter[int] = Counter()
    by_target: dict[int, Counter[int]] = defaultdict(Counter)
    tokens: list[float] = []
    texts = {"user": Diversity(), "assistant": Diversity()}
    judge_rubrics: set[str] = set()
    count = 0
    for conv in _conversations(folder / FINAL):
        count += 1
        turns[conv.num_turns] += 1
        if conv.target_turns is not None:
            by_target[conv.target_turns][conv.num_turns] += 1
        spent = 0
        for step in conv.steps:
            spent += int(step.metadata.get("prompt_tokens", 0)) + int(step.metadata.get("completion_tokens", 0))
            if step.role == "flow_controller":
                patterns[step.pattern] += 1
                if not step.metadata.get("fixed_by"):
                    free_patterns[step.pattern] += 1
                if step.metadata.get("offered") and step.fallback != "invalid_eligibility_json":
                    offered.update(step.metadata["offered"])
                    allowed.update(set(step.eligible_patterns))
            elif step.role == "persona":
                personas[step.persona.model_dump_json()] += 1
            elif step.role == "judge":
                for name, score in step.scores.items():
                    judged[name][score.score] += 1
                    judge_rubrics.add(name)
            elif step.role in texts:
                texts[step.role].add(step.content)
        tokens.append(spent)
        for name, value in conv.attributes.items():
            if name not in judge_rubrics:
                long_text = isinstance(value, str) and len(value) > 60
                values[name].append(_Text(hash(value), len(value)) if long_text else value)

    attributes: dict[str, Any] = {}
    for name, seen in sorted(values.items()):
        config = configured.get(name, {})
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in seen)
        if "settings" in config or (numeric and not config):  # a numeric sampler's (``options.numeric()``)
            attributes[name] = {"kind": "numeric", **(_stats([float(v) for v in seen]) or {}), **config}
        elif config or not any(isinstance(v, _Text) for v in seen):
            observed = _shares(Counter(str(v) for v in seen))
            entry: dict[str, Any] = {
                "kind": "categorical",
                "counts": dict(Counter(str(v) for v in seen).most_common()),
                "observed": observed,
            }
            if config.get("expected"):
                entry["expected"] = config["expected"]
                entry["max_abs_gap"] = _max_gap(observed, config["expected"])
            attributes[name] = entry
        else:
            texts_seen = [v if isinstance(v, _Text) else _Text(hash(str(v)), len(str(v))) for v in seen]
            attributes[name] = {
                "kind": "text",
                "count": len(seen),
                "distinct": len({t.digest for t in texts_seen}),
                "mean_chars": round(statistics.fmean(t.length for t in texts_seen), 1),
            }

    requested = sum(sum(c.values()) for c in by_target.values())
    exact = sum(c[t] for t, c in by_target.items())
    pattern_weights = _pattern_weights(task) if task is not None else {}
    persona_total = _persona_file_size(task) if task is not None else None
    observed_patterns = _shares(free_patterns)
    allowed_rate = {name: round(allowed[name] / n, 4) for name, n in offered.items()}
    never_allowed = [n for n, w in pattern_weights.items() if w > 0 and offered[n] and not allowed[n]]
    for name in never_allowed:
        logger.warning("pattern %s has weight %s but the LM never allowed it (offered %d times)",
                       name, pattern_weights[name], offered[name])
    dropped = summary.get("dropped", {})
    report: dict[str, Any] = {
        "folder": str(folder),
        "conversations": count,
        "attributes": attributes,
        "turns": {
            "distribution": {str(k): v for k, v in sorted(turns.items())},
            "with_requested_length": requested,
            "exact_match": exact,
            "exact_match_rate": round(exact / requested, 4) if requested else None,
            "by_requested": {
                str(t): {
                    "count": sum(c.values()),
                    "exact": c[t],
                    "achieved": {str(k): v for k, v in sorted(c.items())},
                }
                for t, c in sorted(by_target.items())
            },
        },
        "patterns": {
            "counts": dict(patterns.most_common()),
            "drawn_by_weight": dict(free_patterns.most_common()),
            "observed": observed_patterns,
            "weight_share": pattern_weights,
            "max_abs_gap": _max_gap(observed_patterns, pattern_weights) if pattern_weights and free_patterns else None,
            "offered": dict(offered.most_common()),
            "allowed": {name: allowed[name] for name in offered},
            "allowed_rate": allowed_rate,
            "never_allowed": never_allowed,
        },
        "personas": {
            "distinct_used": len(personas),
            "in_file": persona_total,
            "coverage": round(len(personas) / persona_total, 4) if persona_total else None,
        },
        "judges": {
            name: {
                "histogram": {str(k): v for k, v in sorted(counter.items())},
                "mean": round(statistics.fmean(counter.elements()), 3),
            }
            for name, counter in sorted(judged.items())
        },
        "tokens_per_conversation": _stats(tokens),
        "drops": {
            "note": f"from {SUMMARY}: the last run only",
            "dropped": dropped,
            "rescued": summary.get("rescued", {}),
        },
        "quality_gate": {
            "note": f"conversations rejected before being kept, from {SUMMARY}: the last run only",
            "rejected": {k.removeprefix("gate:"): v for k, v in dropped.items() if k.startswith("gate:")},
            "near_duplicates": dropped.get("gate:near_duplicate", 0),
        },
        "diversity": {role: counter.result() for role, counter in texts.items()},
        "cost": summary.get("cost"),  # None unless an engine has a price
        "pacing": _pacing(summary),
        "quality": quality(summary),
    }
    return report


def _pacing(summary: dict[str, Any]) -> dict[str, Any]:
    """From run_summary.json: each endpoint's concurrency limit over time, first kept, spares."""
    return {
        "time_to_first_kept_seconds": summary.get("time_to_first_kept_seconds"),
        "spare": summary.get("spare"),
        "limits": {name: info["concurrency"] for name, info in (summary.get("engines") or {}).items()
                   if info.get("concurrency")},
    }


def quality(summary: dict[str, Any]) -> dict[str, Any]:
    """The per-turn quality gate, from run_summary.json: the verifier's pass rate per role and
    its verdicts, drafts rejected by reason, and assistant replies cut by max_tokens."""
    verifier: dict[str, Any] = {}
    for key, count in sorted((summary.get("verifier_verdicts") or {}).items()):
        role, verdict = key.split(":", 1)
        entry = verifier.setdefault(role, {"verdicts": 0, "passed": 0, "by_verdict": {}})
        entry["verdicts"] += count
        entry["passed"] += count if verdict in ("ok", "invalid") else 0
        entry["by_verdict"][verdict] = count
    for entry in verifier.values():
        entry["pass_rate"] = round(entry["passed"] / entry["verdicts"], 4) if entry["verdicts"] else None
    rejected = summary.get("rejected_drafts") or {}
    return {
        "note": f"from {SUMMARY}: the last run only",
        "verifier": verifier,
        "rejected_drafts": dict(sorted(rejected.items(), key=lambda kv: -kv[1])),
        "length": {
            "rewritten": rejected.get("assistant:cut_by_length", 0),
            "trimmed": (summary.get("repaired_drafts") or {}).get("assistant:trimmed_for_length", 0),
        },
    }


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _table(rows: list[list[Any]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f} %"


def to_markdown(report: dict[str, Any]) -> str:
    out = [f"# Report: {report['folder']}", "", f"{report['conversations']} conversations.", ""]
    turns = report["turns"]
    out += ["## Exchanges per conversation", ""]
    if turns["with_requested_length"]:
        out += [
            f"Requested length met exactly: {turns['exact_match']}/{turns['with_requested_length']}"
            f" ({_pct(turns['exact_match_rate'])}).",
            "",
            _table(
                [[t, v["count"], v["exact"], ", ".join(f"{k}: {n}" for k, n in v["achieved"].items())]
                 for t, v in turns["by_requested"].items()],
                ["requested", "conversations", "exact", "achieved (exchanges: count)"],
            ),
            "",
        ]
    out += [_table([[k, v] for k, v in turns["distribution"].items()], ["exchanges", "conversations"]), ""]
    for name, entry in report["attributes"].items():
        out += [f"## Attribute `{name}` ({entry['kind']})", ""]
        if entry["kind"] == "categorical":
            expected = entry.get("expected", {})
            keys = list(dict.fromkeys([*expected, *entry["observed"]]))
            out.append(_table(
                [[k, entry["counts"].get(k, 0), _pct(entry["observed"].get(k, 0.0)),
                  _pct(expected.get(k)) if expected else ""] for k in keys],
                ["value", "count", "observed", "expected"],
            ))
            if "max_abs_gap" in entry:
                out += ["", f"Largest gap between observed and expected share: {_pct(entry['max_abs_gap'])}."]
        elif entry["kind"] == "numeric":
            keys = ("count", "mean", "stdev", "min", "median", "max")
            out.append(_table([[entry.get(k, "") for k in keys]], list(keys)))
            if entry.get("settings"):
                out += ["", f"Configured ({entry['sampler']}): " + ", ".join(f"{k}={v}" for k, v in entry["settings"].items())]
        else:
            out.append(f"{entry['count']} values, {entry['distinct']} distinct, {entry['mean_chars']} characters on average.")
        out.append("")
    patterns = report["patterns"]
    if patterns["counts"]:
        out += ["## Flow-controller patterns", "",
                "*Drawn* counts exclude moves fixed as the opening or the closing one; they are drawn among the"
                " patterns the LM judged to fit, by weight corrected for each pattern's deficit so far.", ""]
        keys = list(dict.fromkeys([*patterns["weight_share"], *patterns["counts"]]))
        offered, rate = patterns.get("offered", {}), patterns.get("allowed_rate", {})
        out += [_table(
            [[k, patterns["counts"].get(k, 0), patterns["drawn_by_weight"].get(k, 0),
              _pct(patterns["observed"].get(k, 0.0)), _pct(patterns["weight_share"].get(k)),
              f"{patterns['allowed'][k]}/{offered[k]}" if k in offered else "", _pct(rate.get(k))] for k in keys],
            ["pattern", "all", "drawn", "drawn share", "weight share", "allowed/offered", "allowed rate"],
        ), ""]
        if patterns.get("max_abs_gap") is not None:
            out += [f"Largest gap between drawn and weight share: {_pct(patterns['max_abs_gap'])}."
                    " *Allowed rate*: how often the LM judged the pattern to fit when it was offered.", ""]
        out += [f"**Warning**: `{k}` has a weight but the LM never allowed it ({offered[k]} times offered)."
                for k in patterns.get("never_allowed", [])]
        if patterns.get("never_allowed"):
            out.append("")
    personas = report["personas"]
    if personas["distinct_used"]:
        out += ["## Personas", "", f"{personas['distinct_used']} distinct personas used"
                + (f" of {personas['in_file']} in the file ({_pct(personas['coverage'])})." if personas["in_file"] else "."), ""]
    for name, judge in report["judges"].items():
        out += [f"## Judge `{name}`", "", _table([[k, v] for k, v in judge["histogram"].items()], ["score", "conversations"]),
                "", f"Mean score: {judge['mean']}.", ""]
    tokens = report["tokens_per_conversation"]
    if tokens:
        out += ["## Tokens per conversation (prompt + completion, calls whose output was kept)", "",
                _table([[tokens[k] for k in ("mean", "median", "p90", "max")]], ["mean", "median", "p90", "max"]), ""]
    drops = report["drops"]
    if drops["dropped"] or drops["rescued"]:
        out += ["## Drops and rescues (last run)", "", _table(
            [[k, v, "dropped"] for k, v in drops["dropped"].items()] + [[k, v, "rescued"] for k, v in drops["rescued"].items()],
            ["reason", "count", "outcome"],
        ), ""]
    gate = report["quality_gate"]
    if gate["rejected"]:
        out += ["## Quality gate: whole conversations (last run)", "",
                f"{sum(gate['rejected'].values())} conversations rejected before being kept,"
                f" {gate['near_duplicates']} of them as near-duplicates.", "",
                _table([[k, v] for k, v in gate["rejected"].items()], ["reason", "conversations"]), ""]
    cost = report.get("cost")
    if cost:
        per_kept = cost["per_kept_conversation"]
        out += ["## Cost (last run, every call counted)", "",
                f"Total {cost['total']:.6g}" + (f", {per_kept:.6g} per kept conversation." if per_kept is not None else "."),
                "", _table([[f"engine {k}", f"{v:.6g}"] for k, v in cost["per_engine"].items()]
                           + [[f"stage {k}", f"{v:.6g}"] for k, v in cost["per_stage"].items()], ["by", "cost"]), ""]
    pacing = report.get("pacing") or {}
    if pacing.get("limits"):
        out += ["## Concurrency (last run)", "",
                f"First conversation kept after {pacing['time_to_first_kept_seconds']} s; spare conversations"
                f" (started for the tail, not kept): {(pacing.get('spare') or {}).get('conversations')}.", "",
                _table([[engine, url, c["mode"], c["final"], c["peak"],
                         " → ".join(f"{t:g} s: {n}" for t, n in c.get("series", [])[-12:])]
                        for engine, endpoints in pacing["limits"].items() for url, c in endpoints.items()],
                       ["engine", "endpoint", "limit", "final", "peak", "limit over time (latest changes)"]), ""]
    gate = report["quality"]
    if gate["verifier"] or gate["rejected_drafts"]:
        out += ["## Quality gate: each turn's drafts (last run)", ""]
        if gate["verifier"]:
            out += [_table(
                [[role, v["verdicts"], _pct(v["pass_rate"]), ", ".join(f"{k}: {n}" for k, n in v["by_verdict"].items())]
                 for role, v in gate["verifier"].items()],
                ["role", "verdicts", "pass rate", "by verdict"],
            ), ""]
        if gate["rejected_drafts"]:
            out += [_table([[k, v] for k, v in gate["rejected_drafts"].items()], ["rejected draft (role:reason)", "count"]), ""]
        length = gate["length"]
        out += [f"Assistant replies cut by max_tokens: {length['rewritten']} rewritten, {length['trimmed']} trimmed"
                " to whole sentences.", ""]
    out += ["## Lexical diversity", "", _table(
        [[role, d["messages"], d["distinct_1"], d["distinct_2"], _pct(d["exact_duplicate_share"])]
         for role, d in report["diversity"].items()],
        ["role", "messages", "distinct-1", "distinct-2", "exact duplicates"],
    ), ""]
    return "\n".join(out)


def write_report(folder: Path, chart: Callable[[dict[str, Any], Path], bool] = draw) -> dict[str, Any]:
    """Compute the report and write report.json, report.md and (with matplotlib) report.png;
    ``chart`` draws it (a run hands in its ``ChartProcess``)."""
    report = build_report(folder)
    (folder / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (folder / REPORT_MD).write_text(to_markdown(report) + "\n", encoding="utf-8")
    chart(report, folder / REPORT_PNG)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fms_dgt.report",
        description=f"Write {REPORT_JSON}, {REPORT_MD} (and {REPORT_PNG} with matplotlib) for an output folder.",
    )
    parser.add_argument("folder", type=Path, help="an output folder, e.g. output/public/examples/chit_chat")
    args = parser.parse_args(argv)
    if not (args.folder / FINAL).is_file():
        print(f"error: {args.folder}: no {FINAL} here", file=sys.stderr)
        return 2
    try:
        report = write_report(args.folder)
    except (OSError, ValueError) as exc:
        print(f"error: {args.folder}: {exc}", file=sys.stderr)
        return 1
    print(to_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
