#!/usr/bin/env python3
"""Execute the evcxr notebooks headless on every study result folder and check what they show.

`diffusion_vs_ar.ipynb` runs on every study that trains both objectives (baseline, smoke),
`study.ipynb` on every other study; each on the folder named by `results/<study>/latest`. The
executed copies go to `notebooks/executed/<notebook>-<study>.ipynb`, also when a cell fails (so
the failing output can be read). A notebook passes when no cell fails and its outputs hold at
least one `<svg` (plotters' figures arrive as text/html) and one table (`<table` in HTML, or a
comfy-table in text), and no error output.

Uses nbclient (installed with nbconvert) rather than `jupyter nbconvert --execute`, which on a
compile error prints only the cell source and writes no notebook. Panics fail the run only with
`:preserve_vars_on_panic 0` in `$EVCXR_CONFIG_DIR/init.evcxr`: this script writes that file and
points EVCXR_CONFIG_DIR at it.

Usage: run.py [--results DIR] [--timeout S] [--kernel NAME] [STUDY_OR_FOLDER ...]
  With no arguments, every `results/*/latest`. An argument is a study name (`smoke`) or a
  result folder; a folder outside results/ is named after the study in its manifest.
"""

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parent
ROOT = NOTEBOOKS.parent
TABLE_MARKS = ("<table", "┌", "╭", "+---")


def trains_both_objectives(manifest: dict) -> bool:
    kinds = {p.get("config", {}).get("objective", {}).get("kind") for p in manifest.get("points", []) if not p.get("zero_shot")}
    return {"diffusion", "autoregressive"} <= kinds


def folder_of(arg: str, results: Path) -> Path:
    """A study name or a folder → the study result folder (following `latest`)."""
    p = Path(arg)
    if not p.exists():
        p = results / arg
    if (p / "latest").is_file():
        p = p / (p / "latest").read_text().strip()
    if not (p / "manifest.json").is_file():
        raise SystemExit(f"run.py: {arg}: no finished study result folder there (no manifest.json; no `latest`)")
    return p


def output_texts(nb) -> list:
    """Every output of every code cell as text (stream text, display data of any MIME type)."""
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream":
                out.append(o.get("text", ""))
            elif o.get("output_type") in ("display_data", "execute_result"):
                for v in o.get("data", {}).values():
                    out.append(v if isinstance(v, str) else "".join(v) if isinstance(v, list) else json.dumps(v))
    return out


def errors_of(nb) -> list:
    """The failing cells: their error output and their stderr (a panic's message), without
    backtrace lines."""
    errs = []
    for i, cell in enumerate(nb.cells):
        outs = cell.get("outputs", [])
        stderr = "".join(o.get("text", "") for o in outs if o.get("output_type") == "stream" and o.get("name") == "stderr")
        error = [o for o in outs if o.get("output_type") == "error"]
        if not error and "panicked" not in stderr:
            continue
        lines = [
            l for l in stderr.splitlines()
            if l.strip() and not re.match(r"\s*(\d+:|at |stack backtrace|note: )", l)
        ][:12]
        for o in error:
            lines += [f"{o.get('ename', '')}: {o.get('evalue', '')}"] + [t for t in o.get("traceback", []) if t != o.get("evalue")][:30]
        errs.append(re.sub(r"\x1b\[[0-9;]*m", "", f"cell {i}:\n  " + "\n  ".join(lines)))
    return errs


def shown(p: Path) -> str:
    """`p` relative to the repository root when it lies inside, else absolute."""
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return str(p.resolve())


def run_one(notebook: Path, folder: Path, study: str, out_dir: Path, kernel: str, timeout: int) -> bool:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    out = out_dir / f"{notebook.stem}-{study}.ipynb"
    nb = nbformat.read(notebook, as_version=4)
    # Relative to the repository root when possible, so the executed copies hold no absolute paths.
    spec = shown(folder)
    os.environ["DDM_STUDY_DIR"] = spec
    os.environ.pop("DDM_STUDY", None)
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel, resources={"metadata": {"path": str(NOTEBOOKS)}})
    start = time.time()
    failure = None
    try:
        client.execute()
    except CellExecutionError as e:
        failure = str(e)
    except Exception as e:  # kernel died, timeout, ...
        failure = f"{type(e).__name__}: {e}"
    secs = time.time() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out)
    problems = errors_of(nb)
    if failure and not problems:
        problems.append(failure)
    texts = output_texts(nb)
    if not problems:
        if not any("<svg" in t for t in texts):
            problems.append("no plot (no `<svg` in any output)")
        if not any(m in t for t in texts for m in TABLE_MARKS):
            problems.append("no table in any output")
    status = "ok" if not problems else "FAILED"
    print(f"{status}: {notebook.name} on {spec} → {shown(out)} ({secs:.0f} s)", flush=True)
    for p in problems:
        print("  " + p.replace("\n", "\n  "), flush=True)
    return not problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("targets", nargs="*", help="study names or result folders (default: every results/*/latest)")
    ap.add_argument("--results", default=str(ROOT / "results"))
    ap.add_argument("--out", default=str(NOTEBOOKS / "executed"))
    ap.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    ap.add_argument("--kernel", default="rust")
    args = ap.parse_args()
    results = Path(args.results)

    config = ROOT / ".cache" / "notebooks" / "evcxr-config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "init.evcxr").write_text(":preserve_vars_on_panic 0\n")
    os.environ["EVCXR_CONFIG_DIR"] = str(config)
    # A failing cell shows its message, not a backtrace.
    os.environ["RUST_BACKTRACE"] = "0"

    if args.targets:
        folders = [folder_of(t, results) for t in args.targets]
    else:
        folders = [folder_of(str(l.parent), results) for l in sorted(results.glob("*/latest"))]
    if not folders:
        print(f"run.py: no finished studies in {results} (no */latest): nothing to execute")
        return 0
    ok = True
    for f in folders:
        manifest = json.loads((f / "manifest.json").read_text())
        nb = "diffusion_vs_ar.ipynb" if trains_both_objectives(manifest) else "study.ipynb"
        ok &= run_one(NOTEBOOKS / nb, f, manifest["study"], Path(args.out), args.kernel, args.timeout)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
