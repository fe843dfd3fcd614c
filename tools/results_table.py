#!/usr/bin/env python3
"""Builds the markdown tables of docs/results.md from `ptqd evaluate` reports (stdlib only).

Usage: tools/results_table.py out/results
Rows: the fp32 report written beside the first quantized evaluation, then every evaluation folder
in a fixed order. Each row names the folder; the command that produced it is in tools/run_results.sh.
"""
import json, os, sys

ORDER = [
    ("ablation-A/row0", "W4A8 RTN baseline"), ("ablation-A/row1", "W4A8 RTN +CNC"),
    ("ablation-A/row2", "W4A8 RTN +CNC+BC"), ("ablation-A/row3", "W4A8 RTN +CNC+BC+VSC (PTQD)"),
    ("ablation-A/row4", "W4A8 RTN D2 (+VSC)"),
    ("A-w8a8-rtn-base", "W8A8 RTN baseline"), ("A-w8a8-rtn-ptqd", "W8A8 RTN +PTQD"),
    ("A-w4a8-gptq-base", "W4A8 GPTQ baseline"), ("A-w4a8-gptq-ptqd", "W4A8 GPTQ +PTQD"),
    ("A-w4a8-adaround-base", "W4A8 AdaRound baseline"), ("A-w4a8-adaround-ptqd", "W4A8 AdaRound +PTQD"),
    ("A-w4a4-rtn-base", "W4A4 RTN baseline"), ("A-w4a4-rtn-ptqd", "W4A4 RTN +PTQD"),
    ("A-mixed-w4a4-w4a8-ptqd", "mixed W4A4:W4A8 +PTQD"),
    ("ablation-B/row0", "W4A8 RTN baseline"), ("ablation-B/row1", "W4A8 RTN +CNC"),
    ("ablation-B/row2", "W4A8 RTN +CNC+BC"), ("ablation-B/row3", "W4A8 RTN +CNC+BC+VSC (PTQD)"),
    ("ablation-B/row4", "W4A8 RTN D2 (+VSC)"),
]

def fmt(v, f="%.3f"):
    return "–" if v is None else f % v

def row(name, r):
    m, c = r["metrics"], r["cost"]
    ps = m.get("psnr"); ss = m.get("ssim")
    return "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
        name, fmt(m.get("fid")), fmt(m.get("inception_score_mean")), fmt(m.get("precision")), fmt(m.get("recall")),
        "–" if not ps else "%.2f / %.2f" % (ps["mean"], ps["p5"]),
        "–" if not ss else "%.3f / %.3f" % (ss["mean"], ss["p5"]),
        fmt(c.get("bops_per_forward") and c["bops_per_forward"] / 1e9, "%.2f"),
        fmt(c.get("model_file_bytes") and c["model_file_bytes"] / 1e6, "%.2f"), fmt(c.get("images_per_second"), "%.2f"))

def main(base):
    head = ("| Model | FID ↓ | IS ↑ | Precision ↑ | Recall ↑ | PSNR vs FP dB (mean / p5) | SSIM vs FP (mean / p5) "
            "| GBOPs / forward | File MB | images/s |\n|---|---|---|---|---|---|---|---|---|---|")
    for setting in ("A", "B"):
        rows = [(d, n) for d, n in ORDER if (d.startswith("ablation-" + setting) or d.startswith(setting + "-"))
                and os.path.exists(os.path.join(base, d, "report.json"))]
        if not rows:
            continue
        r0 = json.load(open(os.path.join(base, rows[0][0], "report.json")))
        s = r0["setting"]
        print("\n### Setting %s (%s %d steps, eta %g, guidance %g), n = %d\n" % (
            setting, s["sampler"], s["steps"], s["eta"], s["guidance_scale"], r0["n"]))
        print(head)
        fp = os.path.join(base, rows[0][0], "report-fp32.json")
        if os.path.exists(fp):
            print(row("FP32", json.load(open(fp))))
        for d, n in rows:
            print(row(n, json.load(open(os.path.join(base, d, "report.json")))))

if __name__ == "__main__" and "--costs" not in sys.argv:
    main(sys.argv[1] if len(sys.argv) > 1 else "out/results")


def quantize_costs(base):
    """Time per stage of every quantized file under `base` (from its metadata)."""
    import glob, struct
    files = sorted(glob.glob(os.path.join(base, "**", "*.safetensors"), recursive=True))
    print("\n| File | Variants (rounding) | FP trajectories s | Quantize s | Statistics s (trajectories) | MB |\n|---|---|---|---|---|---|")
    for f in files:
        with open(f, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            meta = json.loads(fh.read(n)).get("__metadata__", {})
        if "ptqd" not in meta:
            continue
        info = json.loads(meta["ptqd"])
        corr = json.loads(info["attachments"]["correction"]) if "correction" in info.get("attachments", {}) else None
        print("| %s | %s | %.0f | %s | %s | %.2f |" % (
            os.path.relpath(f, base), ", ".join("%s (%s)" % (v["name"], v["recipe"]["weightMethod"]) for v in info["variants"]),
            info["calibration"].get("trajectorySeconds") or 0, " + ".join("%.0f" % (v.get("seconds") or 0) for v in info["variants"]),
            "–" if not corr else "%.0f (%d)" % (corr.get("seconds") or 0, corr["statistics"]["trajectories"]),
            os.path.getsize(f) / 1e6))


if __name__ == "__main__" and len(sys.argv) > 2 and sys.argv[2] == "--costs":
    quantize_costs(sys.argv[1])
