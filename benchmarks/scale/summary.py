"""The rehearsal's results as ``benchmarks/results/scale.json`` and ``scale.png``, with the targets judged.

Growth is judged from the measured points, not fitted curves: the marginal cost per unit (image,
annotation, detection, file) between consecutive scales, and the growth exponent of the largest step,
log(t2 / t1) / log(n2 / n1): 1 is linear, below 1 means a fixed start-up cost still shows, clearly above
1 means something grows faster than the data.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import math
from pathlib import Path
from typing import Any

PER_IMAGE = ("anonymize", "ssim", "export_org", "export_blur", "relabel")
UNIT = {
    "prepare": "annotations",
    "pycocotools_load": "annotations",
    **dict.fromkeys(PER_IMAGE, "images"),
    "score_faster_coco_eval": "detections",
    "score_pycocotools": "detections",
    "bootstrap": "detections",
    "report": "evaluations",
}
# Measurements of a stage before a fix (``ssim_before_fix``, ``anonymize_before_index``), kept for the comparison.
BEFORE = "_before_"


def base_of(name: str) -> str:
    """The stage a measurement name belongs to (``anonymize_before_index`` -> ``anonymize``)."""
    return name.split(BEFORE, 1)[0]


def unit_of(name: str) -> str:
    """What a measurement's cost grows with."""
    base = base_of(name)
    return UNIT.get(base, "files" if base.startswith("dvc_") else "scale")


def series(records: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Records grouped by measurement name (the key before the slash), ordered by size."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for key, record in sorted(records.items()):
        name = key.split("/", 1)[0]
        grouped.setdefault(name, []).append({"key": key, **record})
    for name, points in grouped.items():
        unit = unit_of(name)
        points.sort(key=lambda p: (p.get("bootstrapped", False), p.get(unit, p.get("scale", 0)) or 0))
    return grouped


def growth(points: list[dict[str, Any]], unit: str) -> dict[str, Any]:
    """Marginal seconds and MB per unit between consecutive points, and the exponent of the largest step."""
    sized = [p for p in points if p.get(unit)]
    steps = []
    for a, b in itertools.pairwise(sized):
        dn = b[unit] - a[unit]
        if dn <= 0:
            continue
        steps.append(
            {
                "from": a[unit],
                "to": b[unit],
                "seconds_per_unit": (b["seconds"] - a["seconds"]) / dn,
                "mb_per_1000_units": 1000 * (b["peak_rss_mb"] - a["peak_rss_mb"]) / dn,
            }
        )
    result: dict[str, Any] = {"unit": unit, "steps": steps}
    if len(sized) >= 2 and sized[-1][unit] > sized[-2][unit] and sized[-2]["seconds"] > 0:
        a, b = sized[-2], sized[-1]
        result["time_exponent_largest_step"] = round(
            math.log(b["seconds"] / a["seconds"]) / math.log(b[unit] / a[unit]), 3
        )
        result["memory_exponent_largest_step"] = round(
            math.log(b["peak_rss_mb"] / a["peak_rss_mb"]) / math.log(b[unit] / a[unit]), 3
        )
    return result


def _at(grouped: dict[str, list[dict[str, Any]]], name: str, scale: float) -> dict[str, Any] | None:
    return next((p for p in grouped.get(name, []) if p.get("scale") == scale), None)


def targets(grouped: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The issue's targets, each with the numbers it is judged on (measured side by side)."""
    judged: dict[str, Any] = {}
    largest = max((p["scale"] for p in grouped.get("prepare", [])), default=None)
    if largest is not None:
        ours, ref = _at(grouped, "prepare", largest), _at(grouped, "pycocotools_load", largest)
        if ours and ref:
            judged["prepare_peak_below_pycocotools"] = {
                "scale": largest,
                "prepare_peak_mb": ours["peak_rss_mb"],
                "pycocotools_peak_mb": ref["peak_rss_mb"],
                "ratio": round(ours["peak_rss_mb"] / ref["peak_rss_mb"], 3),
                "met": ours["peak_rss_mb"] < ref["peak_rss_mb"],
            }
        judged["prepare_time_growth"] = growth(grouped["prepare"], "annotations")
    per_image = {}
    for name in PER_IMAGE:
        # The growth is judged on the synthetic scales; the `real` step's points (COCO-sized images) are listed apart.
        points = [p for p in grouped.get(name, []) if p.get("step") == "images"]
        if points:
            per_image[name] = {
                "images_per_s": [round(p["images"] / p["seconds"], 1) for p in points],
                "peak_rss_mb": [p["peak_rss_mb"] for p in points],
                "images": [p["images"] for p in points],
                **growth(points, "images"),
            }
    if per_image:
        judged["per_image_stages"] = per_image
    real = {
        name: {
            p["key"].split("/", 1)[1]: {
                "images": p["images"],
                "images_per_s": round(p["images"] / p["seconds"], 1),
                "cpu_seconds_per_image": round(p["cpu_seconds"] / p["images"], 4),
                "peak_rss_mb": p["peak_rss_mb"],
            }
            for p in grouped[name]
            if p.get("step") == "real"
        }
        for name in PER_IMAGE
        if any(p.get("step") == "real" for p in grouped.get(name, []))
    }
    if real:
        judged["per_image_stages_real_sizes"] = real
    boot = grouped.get("bootstrap", [])
    if boot:
        big = boot[-1]
        ref = _at(grouped, "score_pycocotools", big["scale"])
        fast = _at(grouped, "score_faster_coco_eval", big["scale"])
        judged["bootstrap"] = {
            "images": big["images"],
            "detections": big["detections"],
            "resamples": big["samples"],
            "bootstrap_seconds": big["seconds"],
            "bootstrap_peak_mb": big["peak_rss_mb"],
            "pycocotools_one_evaluation_seconds": ref and ref["seconds"],
            "pycocotools_one_evaluation_peak_mb": ref and ref["peak_rss_mb"],
            "faster_coco_eval_one_evaluation_seconds": fast and fast["seconds"],
            "ratio_bootstrap_to_pycocotools_evaluation": ref and round(big["seconds"] / ref["seconds"], 2),
            "file_opens": big.get("result", {}).get("file_opens"),
            "no_resample_rereads_files": all(v == 1 for v in big.get("result", {}).get("file_opens", {"": 0}).values()),
        }
    fixes = {}
    for name in (n for n in grouped if BEFORE in n):
        after = {p["key"].split("/", 1)[1]: p for p in grouped.get(base_of(name), [])}
        fixes[name] = [
            {
                "at": p["key"].split("/", 1)[1],
                "before": {k: p[k] for k in ("seconds", "cpu_seconds", "peak_rss_mb")},
                "after": {k: after[p["key"].split("/", 1)[1]][k] for k in ("seconds", "cpu_seconds", "peak_rss_mb")},
                "cpu_speedup": round(p["cpu_seconds"] / after[p["key"].split("/", 1)[1]]["cpu_seconds"], 2),
                "code_before": p.get("code"),
            }
            for p in grouped[name]
            if p["key"].split("/", 1)[1] in after
        ]
    if fixes:
        judged["fixes"] = fixes
    reports = grouped.get("report", [])
    if reports:
        judged["report"] = {
            p["key"].split("/", 1)[1]: {k: p.get(k) for k in ("evaluations", "bootstrapped", "images", "seconds")}
            for p in reports
        }
    dvc = {name.removeprefix("dvc_"): points for name, points in grouped.items() if name.startswith("dvc_")}
    if dvc:
        judged["dvc"] = {
            name: [{k: p.get(k) for k in ("files", "seconds", "peak_rss_mb", "cache_bytes")} for p in points]
            for name, points in dvc.items()
        }
    return judged


def plot(grouped: dict[str, list[dict[str, Any]]]) -> bytes:
    """Seconds and peak memory against the unit each stage grows with (log-log), one column per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = [
        ("annotation-bound", ["prepare", "pycocotools_load"], "annotations"),
        ("per-image stages", list(PER_IMAGE), "images"),
        ("evaluation", ["score_faster_coco_eval", "score_pycocotools", "bootstrap"], "detections"),
        ("report", ["report"], "evaluations"),
        ("DVC", [n for n in grouped if n.startswith("dvc_")], "files"),
    ]
    fig, axes = plt.subplots(2, len(families), figsize=(4.2 * len(families), 7.5), squeeze=False)
    for col, (title, names, unit) in enumerate(families):
        for row, (metric, label) in enumerate((("seconds", "wall seconds"), ("peak_rss_mb", "peak memory (MB)"))):
            ax = axes[row][col]
            ends, starts = [], []
            for name in [n for base in names for n in grouped if base_of(n) == base]:
                points = [
                    p
                    for p in grouped.get(name, [])
                    if p.get(unit) and not p.get("bootstrapped") and p.get("step") != "real"
                ]
                if not points:
                    continue
                style = {"linestyle": "--", "marker": "x"} if BEFORE in name else {"marker": "o"}
                ax.plot([p[unit] for p in points], [p[metric] for p in points], label=name, **style)
                ends.append((points[-1][unit], points[-1][metric]))
                starts.append(points[0][unit])
            if ends and min(starts) < max(ends)[0]:  # slope 1 through the largest point: linear growth runs parallel
                (x1, y1), x0 = max(ends), min(starts)
                ax.plot([x0, x1], [y1 * x0 / x1, y1], color="grey", linestyle=":", label="linear (slope 1)")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(unit)
            ax.set_ylabel(label)
            ax.grid(True, which="both", alpha=0.3)
            if row == 0:
                ax.set_title(title)
                ax.legend(fontsize=7)
    fig.suptitle("anonbench stages on COCO-2017-shaped data (benchmarks/scale): cost against size")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def write(
    records: dict[str, dict[str, Any]], args: argparse.Namespace, seconds: float, machine: dict[str, Any], out: Path
) -> dict[str, Any]:
    """Write ``out/scale.json`` and ``out/scale.png``; return the JSON document."""
    grouped = series(records)
    doc = {
        "benchmark": "scale",
        "command": "python -m benchmarks.scale.rehearse",
        "what": "the real stages on COCO-2017-shaped synthetic data (benchmarks/scale/generate.py) at scale s; "
        "s = 1 is COCO 2017's size. Each measurement is one process tree: wall and CPU seconds, peak memory.",
        # Records come from several invocations; each keeps its own code version and command.
        "arguments_last_run": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "results"
        },
        "rehearsal_seconds_this_run": round(seconds, 1),
        "machine": machine,
        "targets": targets(grouped),
        "measurements": grouped,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "scale.png").write_bytes(plot(grouped))
    print(f"wrote {out / 'scale.json'} and {out / 'scale.png'}")
    return doc


def _count(value: int | None) -> str:
    return f"{value:,}" if value else ""


def markdown(doc: dict[str, Any]) -> str:
    """Every measurement of a scale.json as a Markdown table (docs/scale.md shows it)."""
    lines = [
        "| measurement | at | images | annotations | other | wall s | CPU s | peak MB | load |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for name, points in doc["measurements"].items():
        if name == "generate":
            continue
        for p in points:
            other = ", ".join(
                f"{key} {p[key]:,}" for key in ("detections", "files", "evaluations", "samples") if p.get(key)
            )
            at, images, annotations = p["key"].split("/", 1)[1], _count(p.get("images")), _count(p.get("annotations"))
            lines.append(
                f"| {name} | {at} | {images} | {annotations} | "
                f"{other} | {p['seconds']:.1f} | {p['cpu_seconds']:.1f} | {p['peak_rss_mb']:,.0f} | "
                f"{p['load_before']['loadavg_1min']:.1f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print a scale.json's measurements as a Markdown table.")
    parser.add_argument("--results", type=Path, default=Path(__file__).parents[1] / "results" / "scale.json")
    args = parser.parse_args(argv)
    print(markdown(json.loads(args.results.read_text())))


if __name__ == "__main__":
    main()
