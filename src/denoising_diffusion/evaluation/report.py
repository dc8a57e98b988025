"""An evaluation result (what `python -m denoising_diffusion.evaluate` writes) as a markdown table."""


def markdown_table(result: dict) -> str:
    """One row per step count (network evaluations per image, KID ± std, FID, time, images/s, and the
    recognised fraction with the digits features), then the real-vs-real floor."""
    recognised = "recognised" in result["results"][0] if result["results"] else False
    extra = (" recognised (p >= 0.9) |", " ---: |") if recognised else ("", "")
    lines = [f"| steps | network evaluations | KID | FID | time (s) | images/s |{extra[0]}",
             f"| ---: | ---: | :--- | ---: | ---: | ---: |{extra[1]}"]
    for row in result["results"]:
        cell = f" {row['recognised']:.1%} |" if recognised else ""
        lines.append(f"| {row['steps']} | {row.get('network_evaluations', row['steps'])} | {row['kid']:.4f} ± "
                     f"{row['kid_std']:.4f} | {row['fid']:.3f} | {row['seconds']:.1f} | {row['images_per_second']:.1f} |{cell}")
    if "real_vs_real" in result:
        floor = result["real_vs_real"]
        cell = f" {floor['recognised']:.1%} (held-out real digits) |" if recognised else ""
        lines.append(f"| real vs real | | {floor['kid']:.4f} ± {floor['kid_std']:.4f} | {floor['fid']:.3f} | | |{cell}")
    return "\n".join(lines)
