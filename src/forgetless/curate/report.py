"""The curate report in Markdown, rendered from the JSON report (one source of truth for numbers)."""

from __future__ import annotations

from typing import Any


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in rows]
    return out + [""]


def render_markdown(rep: dict[str, Any]) -> str:
    """Human-readable report: warnings first, then counts, cleaning, dedup, flags, diversity, replay."""
    c = rep["counts"]
    lines = ["# Curate report", ""]
    if rep["warnings"]:
        lines += ["## Warnings", ""] + [f"- **{w}**" for w in rep["warnings"]] + [""]
    lines += [
        "## Counts",
        "",
        f"{c['records_in']} records in = {c['kept']} kept + {c['rejected']} rejected"
        f" ({'adds up' if c['add_up'] else 'DOES NOT ADD UP'}); {c['replay_added']} replay records mixed in,"
        f" {c['written']} records written.",
        "",
    ]
    lines += _table(["reason", "records"], [[r, n] for r, n in c["rejected_by_reason"].items() if n] or [["(none)", 0]])
    lines += _table(["input", "records", "kept"], [[f["file"], f["records"], f["kept"]] for f in rep["inputs"]])
    if rep["empty_files"]:
        lines += ["Empty input files: " + ", ".join(rep["empty_files"]), ""]
    cl = rep["cleaning"]
    lines += ["## Cleaning", "", f"{cl['records_changed']} records changed by cleaning (Unicode NFC, controls, HTML, spacing, boilerplate).", ""]
    if cl["boilerplate_lines"]:
        lines += [f"Boilerplate lines removed (found in >= {cl['boilerplate_threshold_records']} records):", ""]
        lines += _table(["line", "records"], [[b["line"][:100], b["records"]] for b in cl["boilerplate_lines"][:20]])
    d = rep["dedup"]
    cls = d["clusters"]
    lines += [
        "## Deduplication",
        "",
        f"MinHash LSH: {d['shingle_size']}-word shingles, Jaccard >= {d['threshold']}, {d['num_perm']} permutations"
        f" ({d['bands']} bands x {d['rows_per_band']} rows); {d['candidate_pairs']} candidate pairs, {d['confirmed_pairs']} confirmed.",
        "",
        f"Largest near-duplicate cluster: {cls['largest_size']} records ({cls['largest_share']:.1%} of the records that passed"
        f" the quality filters); {cls['records_in_clusters']} records were in clusters of 2 or more.",
        "",
    ]
    f = rep["flags"]
    lines += [
        "## Flagged (kept)",
        "",
        f"Median length {f['median_words']:g} words. short: {f['short']}, long: {f['long']}, rare_term: {f['rare_term']}.",
        "",
    ]
    for k, ex in f["examples"].items():
        if ex:
            lines.append(f"- {k}: " + "; ".join(ex))
    lines.append("")
    dv = rep["diversity"]
    lines += [
        "## Diversity",
        "",
        f"On {dv['sample_records']} kept records: distinct-1 {dv['distinct_1']}, distinct-2 {dv['distinct_2']}, distinct-3 {dv['distinct_3']}.",
        "",
    ]
    if dv["templates"]:
        lines += _table(
            ["template", "kind", "records", "share", "example"],
            [[t["pattern"][:60], t["kind"], t["records"], f"{t['share']:.1%}", t["example"][:80]] for t in dv["templates"]],
        )
    if dv["top_3grams"]:
        lines += ["Most repeated 3-grams:", ""]
        lines += _table(["3-gram", "records", "share"], [[g["ngram"], g["records"], f"{g['share']:.1%}"] for g in dv["top_3grams"]])
    ls = dv["lengths"]
    if ls.get("records"):
        lines += ["Length in words:", ""]
        lines += _table(list(ls["percentiles"]), [list(ls["percentiles"].values())])
        lines += _table(["words", "records"], [[k, v] for k, v in ls["histogram"].items()])
    r = rep["replay"]
    lines += ["## Replay", ""]
    if r["source"] == "none":
        lines += ["No replay mixing (curate.replay: none).", ""]
    else:
        short = f" (only {r['available']} available)" if r.get("short_by") else ""
        lines += [f"Source: {r['source']}; ratio {r['ratio']}: {r['requested']} requested{short}, {r['written']} written.", ""]
    return "\n".join(lines)
